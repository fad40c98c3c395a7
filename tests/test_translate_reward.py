"""The translate-to-English reward R_t as the authors make it: prompt, priming, cut, English skipped."""

from __future__ import annotations

import pytest

from xlpref.models import build_tiny_model, build_tiny_tokenizer
from xlpref.pairs import build_pairs
from xlpref.reward import (
    TranslateToEnglishReward,
    prompt_token_ids,
    response_token_ids,
    score_records,
    span_rewards,
    translate_to_english,
    translation_prompt,
)

AUTHORS_USER_TURN = (
    "Please translate the following sentences into English. The input sentences are wrapped by <sentence> and "
    "</sentence>:\n\n<sentence>\n{text}\n</sentence>\n\nThe translated result should be wrapped by <translated> and "
    "</translated>.\n")


class FakeGenerator:
    """Records what it is asked to continue and answers with scripted continuations."""

    def __init__(self, answers: list[str]) -> None:
        self.answers, self.calls = list(answers), []

    def __call__(self, prompts: list[str], **kw) -> list[str]:
        self.calls.append((list(prompts), kw))
        return [self.answers.pop(0) for _ in prompts]


def test_the_rendered_prompt_is_the_authors_user_turn_then_the_primed_assistant_turn():
    tokenizer = build_tiny_tokenizer()
    text = "El mar está tranquilo.\nHoy."
    expected = ("<s><start_of_turn>user\n" + AUTHORS_USER_TURN.format(text=text) + "<end_of_turn>\n"
                "<start_of_turn>assistant\n<translated>\n")
    assert translation_prompt(tokenizer, text) == expected


def test_translations_are_cut_at_the_closing_tag_greedy_with_8192_tokens_by_default():
    tokenizer = build_tiny_tokenizer()
    fake = FakeGenerator(["The sea is calm.\n</translated>\nand more chatter", "Never closed\n", "</translated>"])
    out = translate_to_english(None, tokenizer, ["El mar está tranquilo.", "Nunca cerrado", "   ", "Vacío"],
                               generate=fake, progress=False)
    assert out == ["The sea is calm.", "Never closed", "", ""]  # a blank response is not sent
    (prompts, options), = fake.calls
    assert prompts == [translation_prompt(tokenizer, t) for t in ("El mar está tranquilo.", "Nunca cerrado", "Vacío")]
    assert options["max_new_tokens"] == 8192 and TranslateToEnglishReward().max_new_tokens == 8192


def test_english_samples_are_not_translated_and_make_no_pair():
    tokenizer = build_tiny_tokenizer()
    fake = FakeGenerator(["The sea.</translated>"])
    records = [{"lang": "en", "id": 1, "sample_index": 0, "prompt": "Hi", "prompt_en": "Hi", "response": "Hello"},
               {"lang": "es", "id": 1, "sample_index": 0, "prompt": "Hola", "prompt_en": "Hi", "response": "El mar."}]
    prepared = TranslateToEnglishReward().prepare(records, None, tokenizer, progress=False, generate=fake)
    assert [r["translation"] for r in prepared] == ["Hello", "The sea."]
    assert len(fake.calls[0][0]) == 1  # only the Spanish response went to the model
    scored = [{**r, "response": text, "sample_index": k, "reward": reward, "reward_type": reward_type}
              for lang in ("en", "es") for reward_type in ["translate-to-english"]
              for k, (text, reward) in enumerate([("a", 1.0), ("bb", 0.0)])
              for r in [{"lang": lang, "id": 1, "prompt": "p"}]]
    result = build_pairs(scored)
    assert [p["lang"] for p in result.pairs] == ["es"]
    assert result.summary["en"]["skipped_english_translate"] == 1 and result.summary["en"]["pairs"] == 0
    cross = build_pairs([{**r, "reward_type": "cross-lingual"} for r in scored])
    assert [p["lang"] for p in cross.pairs] == ["en", "es"]  # other rewards keep English pairs


def test_score_records_translates_with_the_policy_greedily_and_scores_the_translation():
    policy, tokenizer = build_tiny_model("tiny-random-gemma3", seed=1)
    reference, _ = build_tiny_model("tiny-random-gemma3", seed=2)
    records = [{"lang": "es", "id": 1, "sample_index": 0, "prompt": "Escribe.", "prompt_en": "Write a short poem.",
                "response": "Hola"}]
    scored = score_records(records, policy, reference, tokenizer, TranslateToEnglishReward(max_new_tokens=6),
                           progress=False, token_span="response")
    inputs = tokenizer(translation_prompt(tokenizer, "Hola"), add_special_tokens=False, return_tensors="pt")
    greedy = policy.generate(**inputs, do_sample=False, max_new_tokens=6)[0, inputs["input_ids"].shape[1]:]
    expected = tokenizer.decode(greedy, skip_special_tokens=True).split("</translated>")[0].strip()
    assert scored[0]["translation"] == expected
    pair = (prompt_token_ids(tokenizer, "Write a short poem."), response_token_ids(tokenizer, expected))
    assert scored[0]["reward"] == pytest.approx(span_rewards(policy, reference, [pair], "response")[0].reward, abs=1e-5)
