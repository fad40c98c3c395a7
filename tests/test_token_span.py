"""Which tokens the implicit reward sums: each span against a plain loop, and the authors' masking.

The authors' ``compute_reward_score.py`` scores prompt + response + end-of-turn as one right-padded
row, zeroes the mask on the prompt and multiplies the shifted label log-probabilities by the
*unshifted* mask; :func:`authors_masked_sum` writes that out on full logits.
"""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import run_cli

from xlpref.errors import InputError
from xlpref.models import build_tiny_model, build_tiny_tokenizer
from xlpref.reward import (
    CrossLingualReward,
    end_of_turn_token_id,
    prompt_token_ids,
    response_token_ids,
    score_records,
    span_rewards,
)

RESPONSES = ["El mar está tranquilo hoy.", "Hola", "写一首关于大海的短诗。", "x", ""]


@pytest.fixture(scope="module", params=["tiny-random-llama", "tiny-random-gemma3"])
def models(request):
    policy, tokenizer = build_tiny_model(request.param, seed=1)
    reference, _ = build_tiny_model(request.param, seed=2)
    return policy, reference, tokenizer


def token_logprobs(model, ids: list[int]) -> torch.Tensor:
    """log p(ids[i + 1] | ids[: i + 1]) for every i (full logits, no cache)."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits[:-1], dim=-1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]


def plain_sum(model, prompt: list[int], counted: list[int], before: list[int] = ()) -> float:
    """Sum of log p over the tokens ``counted``, which follow prompt + ``before``."""
    context = [*prompt, *before]
    logps = token_logprobs(model, context + counted)
    return float(sum(logps[len(context) - 1 + j].item() for j in range(len(counted))))


def authors_masked_sum(model, prompt: list[int], response: list[int], eot: int, pad: int, width: int) -> float:
    """The authors' reward term: one right-padded row, prompt masked, shifted log-probs x unshifted mask."""
    row = [*prompt, *response, eot]
    row += [pad] * (width - len(row))
    mask = torch.tensor([0.0] * len(prompt) + [1.0] * len(response) + [0.0] * (width - len(prompt) - len(response)))
    attention = torch.tensor([[1] * (len(prompt) + len(response) + 1) + [0] * (width - len(prompt) - len(response) - 1)])
    with torch.no_grad():
        logits = model(torch.tensor([row]), attention_mask=attention).logits[0].float()
    logps = torch.log_softmax(logits[:-1], dim=-1).gather(1, torch.tensor(row[1:])[:, None])[:, 0]
    return float((logps.double() * mask[:-1].double()).sum())


def test_end_of_turn_is_what_the_template_closes_an_assistant_turn_with():
    tokenizer = build_tiny_tokenizer()
    assert end_of_turn_token_id(tokenizer) == tokenizer.convert_tokens_to_ids("<end_of_turn>")
    tokenizer.eos_token = "</s>"  # the template still closes turns with <end_of_turn>
    assert end_of_turn_token_id(tokenizer) == tokenizer.convert_tokens_to_ids("<end_of_turn>")
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"  # closes with nothing
    assert end_of_turn_token_id(tokenizer) == tokenizer.convert_tokens_to_ids("</s>")


def test_each_span_equals_a_plain_loop(models):
    policy, reference, tokenizer = models
    eot = end_of_turn_token_id(tokenizer)
    prompt = prompt_token_ids(tokenizer, "Write a short poem about the sea, please, in a few words.")
    pairs = [(prompt, response_token_ids(tokenizer, text)) for text in RESPONSES]
    spans = {span: span_rewards(policy, reference, pairs, span, end_of_turn=eot, max_batch_tokens=64)
             for span in ("authors", "response", "response+eot")}
    for index, (_, response) in enumerate(pairs):
        counted = {"authors": (response[:1], [*response[1:], eot]) if response else ([], []),
                   "response": ([], response), "response+eot": ([], [*response, eot])}
        for span, (before, tokens) in counted.items():
            expected = [plain_sum(model, prompt, tokens, before) for model in (policy, reference)]
            score = spans[span][index]
            assert score.logp_policy == pytest.approx(expected[0], abs=1e-4), (span, index)
            assert score.logp_reference == pytest.approx(expected[1], abs=1e-4), (span, index)
            assert score.reward == pytest.approx(expected[0] - expected[1], abs=1e-4), (span, index)
            assert score.n_response_tokens == len(tokens)


def test_authors_masking_on_a_right_padded_row_gives_the_authors_sum(models):
    policy, reference, tokenizer = models
    eot, pad = end_of_turn_token_id(tokenizer), tokenizer.pad_token_id
    prompt = prompt_token_ids(tokenizer, "Explica por qué el cielo es azul con palabras sencillas.")
    pairs = [(prompt, response_token_ids(tokenizer, text)) for text in RESPONSES]
    width = max(len(prompt) + len(response) + 1 for _, response in pairs) + 3  # every row padded
    scores = span_rewards(policy, reference, pairs, "authors", end_of_turn=eot)
    for (_, response), score in zip(pairs, scores):
        expected = [authors_masked_sum(m, prompt, response, eot, pad, width) for m in (policy, reference)]
        assert score.logp_policy == pytest.approx(expected[0], abs=1e-4)
        assert score.reward == pytest.approx(expected[0] - expected[1], abs=1e-4)


def test_spans_differ_and_authors_is_the_default(models):
    policy, reference, tokenizer = models
    records = [{"lang": "es", "id": 1, "sample_index": k, "prompt": "Escribe un poema.", "prompt_en": "Write a poem.",
                "response": text} for k, text in enumerate(RESPONSES[:3])]
    default = score_records(records, policy, reference, tokenizer, progress=False)
    by_span = {span: score_records(records, policy, reference, tokenizer, token_span=span, progress=False)
               for span in ("authors", "response", "response+eot")}
    assert [r["reward"] for r in default] == [r["reward"] for r in by_span["authors"]]
    assert {r["token_span"] for r in default} == {"authors"}
    assert {r["token_span"] for r in by_span["response+eot"]} == {"response+eot"}
    rewards = {span: [r["reward"] for r in out] for span, out in by_span.items()}
    assert rewards["authors"] != pytest.approx(rewards["response"], abs=1e-3)
    assert rewards["response+eot"] != pytest.approx(rewards["response"], abs=1e-3)
    prompt = prompt_token_ids(tokenizer, CrossLingualReward().conditioning(records[0]))
    response = response_token_ids(tokenizer, records[0]["response"])
    eot = end_of_turn_token_id(tokenizer)
    expected = (plain_sum(policy, prompt, [*response[1:], eot], response[:1])
                - plain_sum(reference, prompt, [*response[1:], eot], response[:1]))
    assert default[0]["reward"] == pytest.approx(expected, abs=1e-4)
    with pytest.raises(InputError, match="token span"):
        score_records(records, policy, reference, tokenizer, token_span="all", progress=False)


def test_a_scored_log_of_another_span_is_not_resumed(tmp_path, models):
    from xlpref.records import RecordLog
    from xlpref.reward import SCORE_KEY

    policy, reference, tokenizer = models
    records = [{"lang": "en", "id": 1, "sample_index": 0, "prompt": "Hi", "prompt_en": "Hi", "response": "Hola"}]
    score_records(records, policy, reference, tokenizer, token_span="response", progress=False,
                  log=RecordLog(tmp_path / "scored.jsonl", SCORE_KEY))
    with pytest.raises(InputError, match="token span 'response'"):
        score_records(records, policy, reference, tokenizer, progress=False,
                      log=RecordLog(tmp_path / "scored.jsonl", SCORE_KEY))


def test_run_config_default_and_ablations_name_the_span():
    from harness.config import AnnotatorConfig, load_config

    assert AnnotatorConfig().token_span == "authors"
    for name, span in (("demo-token-span-response", "response"), ("demo-token-span-response-eot", "response+eot")):
        config = load_config(f"configs/ablations/{name}.yaml")
        assert (config.name, config.annotator.token_span) == (name, span)


def test_score_command_takes_the_span_and_records_it(tmp_path, capsys):
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps({"lang": "es", "id": 1, "sample_index": k, "prompt": "Escribe.",
                                           "prompt_en": "Write.", "response": text}) + "\n"
                               for k, text in enumerate(RESPONSES[:2])), encoding="utf-8")
    out = {}
    for span in (None, "response"):
        output = tmp_path / f"scored-{span}.jsonl"
        args = ["score", samples, "--policy", "tiny-random-llama", "--reference", "tiny-random-llama-seed1",
                "-o", output] + (["--token-span", span] if span else [])
        code, _, err = run_cli(args, capsys)
        assert code == 0, err
        out[span] = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert {r["token_span"] for r in out[None]} == {"authors"}
    assert {r["token_span"] for r in out["response"]} == {"response"}
    assert out[None][0]["reward"] != out["response"][0]["reward"]
