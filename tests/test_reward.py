"""Implicit reward on tiny random models: against a hand computation, batch independence, conditioning, CLI."""

from __future__ import annotations

import json

import pytest
import torch

from xlpref.errors import InputError
from xlpref.languages import LANGUAGE_NAMES
from xlpref.models import build_tiny_model
from xlpref.reward import (
    CrossLingualReward,
    MultilingualReward,
    TranslateToEnglishReward,
    implicit_rewards,
    prompt_token_ids,
    response_logprobs,
    response_token_ids,
    score_records,
)

RESPONSES = [
    "El mar está tranquilo hoy.",
    "Hola",
    "เขียนบทกวีสั้น ๆ เกี่ยวกับทะเล ทะเลวันนี้สงบ",
    "写一首关于大海的短诗。",
    "সমুদ্র নিয়ে একটি ছোট কবিতা লেখো। আজ সমুদ্র শান্ত। " * 2,
]


@pytest.fixture(scope="module", params=["tiny-random-llama", "tiny-random-gemma3"])
def models(request):
    policy, tokenizer = build_tiny_model(request.param, seed=1)
    reference, _ = build_tiny_model(request.param, seed=2)
    return policy, reference, tokenizer


def hand_logprob(model, prompt_ids, response_ids):
    """Plain loop over log_softmax of the full logits of the concatenated sequence."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + response_ids])).logits[0]
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    total = 0.0
    for j, token in enumerate(response_ids):
        total += logprobs[len(prompt_ids) + j - 1, token].item()
    return total


def items_for(tokenizer, conditioning="Write a short poem about the sea."):
    prompt = prompt_token_ids(tokenizer, conditioning)
    return [(prompt, response_token_ids(tokenizer, text)) for text in RESPONSES]


def test_reward_equals_hand_computation(models):
    policy, reference, tokenizer = models
    items = items_for(tokenizer) + items_for(tokenizer, "Explica por qué el cielo es azul con palabras sencillas.")
    assert len(items[0][0]) > 16  # longer than tiny Gemma 3's sliding window: the cached path must handle it
    scores = implicit_rewards(policy, reference, items, max_batch_tokens=256)
    for (prompt, response), score in zip(items, scores):
        expected_policy = hand_logprob(policy, prompt, response)
        expected_reference = hand_logprob(reference, prompt, response)
        assert score.logp_policy == pytest.approx(expected_policy, abs=1e-5)
        assert score.logp_reference == pytest.approx(expected_reference, abs=1e-5)
        assert score.reward == pytest.approx(expected_policy - expected_reference, abs=1e-5)
        assert score.n_response_tokens == len(response)
    assert len({round(s.reward, 3) for s in scores}) > 1  # different seeds: rewards are not all zero


def test_batch_composition_and_padding_change_nothing(models):
    policy, _, tokenizer = models
    items = items_for(tokenizer)
    alone = [response_logprobs(policy, [item])[0] for item in items]
    batched = response_logprobs(policy, items, max_batch_tokens=100_000)  # one padded batch per prompt
    split = response_logprobs(policy, items, max_batch_tokens=1)  # one response per forward pass
    assert batched == pytest.approx(alone, abs=1e-4) and split == pytest.approx(alone, abs=1e-4)
    original_pad = policy.config.pad_token_id
    try:
        policy.config.pad_token_id = tokenizer.convert_tokens_to_ids("<s>")  # another token in the pad slots
        assert response_logprobs(policy, items, max_batch_tokens=100_000) == pytest.approx(alone, abs=1e-4)
    finally:
        policy.config.pad_token_id = original_pad


def test_only_response_tokens_count(models):
    policy, _, tokenizer = models
    prompt, response = items_for(tokenizer)[0]
    assert response_logprobs(policy, [(prompt, [])]) == [0.0]
    # Moving a token from the response into the prompt removes exactly its term from the sum.
    with_first = response_logprobs(policy, [(prompt, response)])[0]
    without_first = response_logprobs(policy, [(prompt + response[:1], response[1:])])[0]
    first_term = hand_logprob(policy, prompt, response[:1])
    assert with_first == pytest.approx(without_first + first_term, abs=1e-5)


def test_same_model_gives_zero_reward(models):
    policy, _, tokenizer = models
    scores = implicit_rewards(policy, policy, items_for(tokenizer))
    assert all(s.reward == 0.0 and s.logp_policy < 0 for s in scores)


def sample(lang="es", id_=1, index=0, response="El mar está tranquilo.", **extra):
    return {"lang": lang, "id": id_, "sample_index": index, "prompt": "Escribe un poema corto sobre el mar.",
            "prompt_en": "Write a short poem about the sea.", "response": response, **extra}


def test_conditioning_strings():
    prefix = ("Please answer the following instruction using only Spanish, unless explicitly instructed to respond "
              "in a different language.\n\n")
    assert CrossLingualReward().conditioning(sample()) == prefix + "Write a short poem about the sea."
    assert CrossLingualReward().conditioning(sample(lang="en")) == "Write a short poem about the sea."
    for code, name in LANGUAGE_NAMES.items():
        if code != "en":
            text = CrossLingualReward().conditioning(sample(lang=code))
            assert text == prefix.replace("Spanish", name) + "Write a short poem about the sea."
    assert MultilingualReward().conditioning(sample()) == "Escribe un poema corto sobre el mar."
    assert TranslateToEnglishReward().conditioning(sample(lang="th")) == "Write a short poem about the sea."


def test_score_records_over_the_response_span_matches_hand_computation(models):
    policy, reference, tokenizer = models
    records = [sample(index=k, response=text) for k, text in enumerate(RESPONSES[:3])] + [sample(lang="en", id_=2)]
    scored = score_records(records, policy, reference, tokenizer, "cross-lingual", progress=False,
                           token_span="response")
    for record, out in zip(records, scored):
        assert out == {**record, **{k: out[k] for k in ("reward", "logp_policy", "logp_reference",
                                                        "n_response_tokens", "reward_type", "token_span")}}
        conditioning = CrossLingualReward().conditioning(record)
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": conditioning}],
                                               add_generation_prompt=True, tokenize=True)["input_ids"]
        response = tokenizer(record["response"], add_special_tokens=False).input_ids
        assert tokenizer.eos_token_id not in response
        assert out["n_response_tokens"] == len(response)
        expected = hand_logprob(policy, prompt, response) - hand_logprob(reference, prompt, response)
        assert out["reward"] == pytest.approx(expected, abs=1e-5)
        assert out["reward_type"] == "cross-lingual"
    multilingual = score_records(records[:1], policy, reference, tokenizer, "multilingual", progress=False,
                                 token_span="response")
    prompt = prompt_token_ids(tokenizer, records[0]["prompt"])
    response = response_token_ids(tokenizer, records[0]["response"])
    expected = hand_logprob(policy, prompt, response) - hand_logprob(reference, prompt, response)
    assert multilingual[0]["reward"] == pytest.approx(expected, abs=1e-5)


def test_bad_input_is_an_input_error(models):
    policy, reference, tokenizer = models
    broken = sample()
    del broken["prompt_en"]
    with pytest.raises(InputError, match="field 'prompt_en'"):
        score_records([broken], policy, reference, tokenizer, progress=False)
    with pytest.raises(InputError, match="unknown reward"):
        score_records([sample()], policy, reference, tokenizer, "nope", progress=False)
    with pytest.raises(InputError, match="vocabulary"):
        response_logprobs(policy, [([1, 2], [len(tokenizer) + 5])])
    other, _ = build_tiny_model("tiny-random-llama", seed=3)
    other.resize_token_embeddings(len(tokenizer) + 8)
    with pytest.raises(InputError, match="sharing one tokenizer"):
        implicit_rewards(policy, other, items_for(tokenizer)[:1])


def test_resumed_scoring_equals_uninterrupted(tmp_path, monkeypatch):
    from xlpref.records import RecordLog
    from xlpref.reward import SCORE_KEY

    policy, tokenizer = build_tiny_model("tiny-random-llama", seed=1)
    reference, _ = build_tiny_model("tiny-random-llama", seed=2)
    records = [sample(lang=lang, id_=i, index=k, response=RESPONSES[(i + k) % 4])
               for lang in ("es", "th") for i in range(2) for k in range(2)]
    whole = score_records(records, policy, reference, tokenizer, progress=False)
    calls = []

    def crash_on_second_block(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed after the first block was appended
        return implicit_rewards(*args, **kwargs)

    monkeypatch.setattr("xlpref.reward.implicit_rewards", crash_on_second_block)
    with pytest.raises(KeyboardInterrupt):
        # a tiny budget makes each prompt group its own block
        score_records(records, policy, reference, tokenizer, log=RecordLog(tmp_path / "scored.jsonl", SCORE_KEY),
                      progress=False, max_batch_tokens=1)
    partial = (tmp_path / "scored.partial.jsonl").read_text().splitlines()
    assert 0 < len(partial) < len(records) and not (tmp_path / "scored.jsonl").exists()
    resumed = score_records(records, policy, reference, tokenizer,
                            log=RecordLog(tmp_path / "scored.jsonl", SCORE_KEY), progress=False)
    assert len(calls) > 2  # the resumed run scored only what was missing, in more blocks
    assert [r["reward"] for r in resumed] == pytest.approx([r["reward"] for r in whole], abs=1e-4)
    assert [json.loads(line)["id"] for line in (tmp_path / "scored.jsonl").read_text().splitlines()] == \
        [r["id"] for r in records]
    with pytest.raises(InputError, match="scored with reward 'cross-lingual'"):
        score_records(records, policy, reference, tokenizer, "multilingual",
                      log=RecordLog(tmp_path / "scored.jsonl", SCORE_KEY), progress=False)


def test_cli_score_then_pairs(tmp_path, monkeypatch, capsys):
    from cli_helpers import run_cli
    from xlpref.pairs import build_pairs

    monkeypatch.setenv("XLPREF_CACHE", str(tmp_path / "cache"))
    samples = tmp_path / "samples.jsonl"
    rows = [sample(lang=lang, id_=i, index=k, response=RESPONSES[(i + k) % 5])
            for lang in ("es", "zh") for i in range(2) for k in range(3)]
    samples.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")

    # The same spec twice is one model: every reward is 0 and every group is skipped.
    code, out, err = run_cli(["score", "--policy", "tiny-random-llama", "--reference", "tiny-random-llama",
                              samples, "-o", tmp_path / "zero.jsonl"], capsys)
    assert code == 0, out + err
    zero = [json.loads(line) for line in (tmp_path / "zero.jsonl").read_text().splitlines()]
    assert all(r["reward"] == 0.0 for r in zero)
    code, out, err = run_cli(["pairs", tmp_path / "zero.jsonl", "-o", tmp_path / "zero_pairs.jsonl"], capsys)
    assert code == 0, out + err
    assert (tmp_path / "zero_pairs.jsonl").read_text() == ""
    assert json.loads((tmp_path / "zero_pairs.summary.json").read_text())["es"]["skipped_equal_rewards"] == 2

    # Saved models of different seeds: real rewards, pairs for every group.
    for name, seed in (("policy", 1), ("reference", 2)):
        model, tokenizer = build_tiny_model("tiny-random-llama", seed=seed)
        model.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    code, out, err = run_cli(["score", "--policy", tmp_path / "policy", "--reference", tmp_path / "reference",
                              "--max-batch-tokens", "128", samples, "-o", tmp_path / "scored.jsonl"], capsys)
    assert code == 0, out + err
    scored = [json.loads(line) for line in (tmp_path / "scored.jsonl").read_text().splitlines()]
    assert [(r["lang"], r["id"], r["sample_index"]) for r in scored] == \
        [(r["lang"], r["id"], r["sample_index"]) for r in rows]
    assert not (tmp_path / "scored.partial.jsonl").exists()
    policy, tokenizer = build_tiny_model("tiny-random-llama", seed=1)
    reference, _ = build_tiny_model("tiny-random-llama", seed=2)
    direct = score_records(rows, policy, reference, tokenizer, progress=False)
    assert [r["reward"] for r in scored] == pytest.approx([r["reward"] for r in direct], abs=1e-4)
    code, out, err = run_cli(["pairs", tmp_path / "scored.jsonl", "-o", tmp_path / "pairs.jsonl",
                              "--alpha-step", "0.01"], capsys)
    assert code == 0, out + err
    written = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert written == build_pairs(scored, alpha_step=0.01).pairs and len(written) == 4
    assert all(p["chosen_reward"] > p["rejected_reward"] or p["alpha"] > 0 for p in written)


def test_annotator_scores_into_the_store_and_builds_pairs(tmp_path, record_store):
    from xlpref.pairs import PairsResult, build_pairs
    from xlpref.registry import resolve

    policy = build_tiny_model("tiny-random-llama", seed=1)
    reference = build_tiny_model("tiny-random-llama", seed=2)
    rows = [sample(lang=lang, id_=i, index=k, response=RESPONSES[(i + k) % 5])
            for lang in ("es", "th") for i in range(2) for k in range(2)]
    annotator = resolve("annotator", "implicit-reward")(seed=1, console=None, reward="multilingual", alpha_step=0.01)
    store = record_store
    result = annotator.annotate(samples=rows, policy="unused-when-reward_policy-is-given", reward_policy=policy,
                                reference=reference, prompts={}, languages=["es", "th"], store=store,
                                stage_dir="iter_0", progress=False)
    scored = [json.loads(line) for line in (tmp_path / "run" / "iter_0" / "scored.jsonl").read_text().splitlines()]
    assert len(scored) == len(rows) and all(r["reward_type"] == "multilingual" for r in scored)
    assert isinstance(result, PairsResult) and result == build_pairs(scored, alpha_step=0.01)
    assert set(result.summary) == {"es", "th"} and len(result.pairs) == 4
