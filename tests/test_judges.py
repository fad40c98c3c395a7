"""Judges: the API judge against a fake OpenAI-compatible server, the local judge on a tiny model.

Budget (with tests/test_evaluation.py): under 60 s on 2 cores.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
from fake_openai_server import FakeOpenAIServer

from benchmarks.x_alpacaeval import ANNOTATORS_DIR
from harness.judges.base import JudgeItem, parse_preference
from harness.judges.loading import load_judge, load_judge_config
from xlpref.data import default_data_dir
from xlpref.errors import InputError

SECRET = "sk-test-NEVER-WRITTEN-4f1c"
ADDED_SENTENCE = ("A good output should be in the same language as the instruction, except when the instruction "
                  "explicitly requests the output in a different language.")


def api_judge(server: FakeOpenAIServer, **overrides):
    return load_judge("weighted_gpt4_turbo_multilingual", base_url=server.base_url, retry_backoff_s=0, **overrides)


def test_template_is_alpaca_eval_prompt_plus_one_sentence():
    import alpaca_eval

    original = (Path(alpaca_eval.__file__).parent / "evaluators_configs" / "alpaca_eval_clf_gpt4_turbo"
                / "alpaca_eval_clf.txt").read_text()
    ours = load_judge_config("weighted_gpt4_turbo_multilingual").prompt_template
    assert ours.count(ADDED_SENTENCE) == 1
    assert ours.replace(ADDED_SENTENCE + " ", "") == original
    assert "## Task\n\n" + ADDED_SENTENCE + " Evaluate the models" in ours


def test_round_trip_known_logprobs(api_key):
    # m (output_1) at log-prob -1, M (output_2) at -2, plus an unrelated token the parser must ignore:
    # preference = 2 - e^-1 / (e^-1 + e^-2) = 2 - 1 / (1 + e^-1), computed by hand here.
    expected = 2 - 1 / (1 + math.exp(-1))
    with FakeOpenAIServer(logprobs={"The": -0.5, "m": -1.0, "M": -2.0}) as server:
        judge = api_judge(server)
        assert judge.preferences([JudgeItem("¿Capital de Francia?", "París.", "Paris is the capital.")]) == \
            pytest.approx([expected], abs=1e-12)
        request = server.requests[0]
    body = request["body"]
    assert request["path"] == "/v1/chat/completions"
    assert {k.lower(): v for k, v in request["headers"].items()}["authorization"] == f"Bearer {api_key}"
    assert (body["model"], body["max_tokens"], body["logprobs"], body["top_logprobs"]) == \
        ("gpt-4-1106-preview", 1, True, 5)
    system, user = body["messages"]
    assert system["role"] == "system" and user["role"] == "user"
    assert ADDED_SENTENCE in user["content"] and '"""París."""' in user["content"]
    assert judge.counters["calls"] == 1 and judge.counters["prompt_tokens"] == 100
    assert judge.counters["cost_usd"] == pytest.approx((100 * 10.0 + 1 * 30.0) / 1e6)
    assert judge.is_demo is False


def test_retries_then_answers(api_key):
    faults = ["500", "429", "invalid_json", "no_logprobs"]
    with FakeOpenAIServer(p_good=0.9, faults=faults) as server:
        judge = api_judge(server, max_retries=3)
        assert judge.preferences([JudgeItem("q", "BAD", "GOOD")]) == pytest.approx([1.9])
        assert server.hits == 5
    assert judge.counters["calls"] == 5 and judge.counters["failed_calls"] == 2


def test_missing_key_and_refused_key(monkeypatch):
    secret = "sk-test-refused-4f1c"
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeOpenAIServer() as server:
        with pytest.raises(InputError, match="OPENAI_API_KEY is not set"):
            api_judge(server).preferences([JudgeItem("q", "a", "b")])
        monkeypatch.setenv("OPENAI_API_KEY", secret)
        server.faults.append("401")  # the server's error message repeats the key; ours must not
        with pytest.raises(InputError) as caught:
            api_judge(server).preferences([JudgeItem("q", "a", "b")])
    assert "OPENAI_API_KEY" in str(caught.value) and secret not in str(caught.value)


def test_judge_config_errors(tmp_path):
    with pytest.raises(InputError, match="unknown judge 'nope'"):
        load_judge("nope")
    with pytest.raises(InputError, match="unknown judge option 'colour'"):
        load_judge_config("local_hf_logprob", colour="red")
    bad = tmp_path / "configs.yaml"
    bad.write_text((ANNOTATORS_DIR / "local_hf_logprob" / "configs.yaml").read_text().replace(
        '"logprob_parser"', '"regex_parser"'))
    with pytest.raises(InputError, match="fn_completion_parser"):
        load_judge_config(bad)


def test_model_override_renames_judge_and_changes_hash():
    default = load_judge_config("local_hf_logprob")
    other = load_judge_config("local_hf_logprob", model="tiny-random-llama", batch_size=7)
    assert default.name == "local_hf_logprob" and other.name == "local_hf_logprob.tiny-random-llama"
    assert other.hash != default.hash
    assert load_judge_config("local_hf_logprob", batch_size=7).hash == default.hash  # runtime-only setting


def test_parser_and_switch_reproduce_real_gpt4_annotations():
    """Independent check: AlpacaEval's own annotations = our parser on its raw completion + its switch rule."""
    path = default_data_dir() / "alpaca_eval_annotations" / "NullModel.json"
    if not path.is_file():
        pytest.skip(f"AlpacaEval annotations not found at {path}")
    records = json.loads(path.read_text())
    parser = load_judge_config("weighted_gpt4_turbo_multilingual").parser_kwargs
    for record in records:
        shown = parse_preference(record["raw_completion"], parser)
        is_switched = random.Random("is_switched_outputs" + record["instruction"] + "0").choices([False, True])[0]
        assert (3 - shown if is_switched else shown) == pytest.approx(record["preference"], abs=1e-9)


def test_local_judge_batched_equals_single_and_matches_hand_computation():
    import torch

    from harness.judges.local import LocalHFLogprobJudge
    from xlpref.models import build_tiny_model

    model, tokenizer = build_tiny_model("tiny-random-llama", seed=3)
    config = load_judge_config("local_hf_logprob", model="tiny-random-llama", batch_size=3)
    judge = LocalHFLogprobJudge(config=config, model=model, tokenizer=tokenizer)
    items = [JudgeItem("Say hi.", "Hi!", "Hello there, friend!"),
             JudgeItem("¿Capital de Australia?", "Canberra.", "Sídney, creo." * 3),
             JudgeItem("Напиши стих.", "Море спокойно.", "Sea."),
             JudgeItem("x", "a", "b")]
    batched = judge.preferences(items)
    single = [judge.preferences([item])[0] for item in items]
    assert all(1 <= p <= 2 for p in batched)
    assert batched == pytest.approx(single, abs=1e-5)
    assert judge.is_demo and judge.counters["calls"] == 2 * len(items)
    # By hand: one unpadded forward pass, softmax over the vocabulary, 1 + P(M) / (P(m) + P(M)).
    from harness.judges.base import format_messages

    text = tokenizer.apply_chat_template(format_messages(config.prompt_template, items[:1])[0], tokenize=False,
                                         add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=ids).logits[0, -1].double(), dim=-1)
    p_m, p_big = (probs[tokenizer.convert_tokens_to_ids(t)].item() for t in ("m", "M"))
    assert batched[0] == pytest.approx(1 + p_big / (p_m + p_big), abs=1e-5)
