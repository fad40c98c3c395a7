"""The optimised scorer equals the naive one (benchmarks/perf/naive.py) and keeps its memory bounds.

Tiny random models (tiny Gemma 3 has a sliding window of 16 tokens, shorter than most items here), fp32,
tolerance 1e-4 (METHOD.md's rewards are sums over response tokens; the naive scorer runs full logits
over re-encoded, right-padded sequences, so only rounding may differ).
"""

from __future__ import annotations

import json
import random

import pytest
import torch
from cli_helpers import run_cli

import xlpref.logprobs as logprobs
from benchmarks.perf.bench_scoring import perturbed_copy
from benchmarks.perf.naive import naive_implicit_rewards, naive_response_logprobs
from xlpref.models import build_tiny_model
from xlpref.reward import implicit_rewards

TOLERANCE = 1e-4


def random_items(seed: int = 0, n_prompts: int = 4, k: int = 4, vocab: int = 400) -> list[tuple[list[int], list[int]]]:
    """Prompts of different lengths (3..30 tokens), k responses each of 0..40 tokens (empty and 1-token ones too)."""
    rng = random.Random(seed)
    items = []
    for _ in range(n_prompts):
        prompt = [rng.randrange(3, vocab) for _ in range(rng.randint(3, 30))]
        for length in rng.sample([0, 1, 2, 5, 17, 29, 40], k):
            items.append((prompt, [rng.randrange(3, vocab) for _ in range(length)]))
    return items


@pytest.fixture(scope="module", params=["tiny-random-llama", "tiny-random-gemma3"])
def models(request):
    policy, _ = build_tiny_model(request.param, seed=1)
    reference, _ = build_tiny_model(request.param, seed=2)
    return policy, reference


def test_plan_encodes_each_prompt_once_and_keeps_passes_within_budget():
    items = random_items()
    for budget in (1, 64, 256, 10**6):
        windows = logprobs.plan_windows(items, budget)
        prompts = [p for w in windows for p in w.prompts]
        assert len(prompts) == len(set(prompts))  # one encoding per prompt
        flat = [i for w in windows for rows in w.passes for i in rows]
        assert sorted(flat) == [i for i, (_, r) in enumerate(items) if r]  # empty responses need no pass
        for window in windows:
            width = max(len(p) for p in window.prompts)
            assert len(window.prompts) == 1 or len(window.prompts) * width <= budget
            lengths = [len(items[i][1]) for rows in window.passes for i in rows]
            assert lengths == sorted(lengths, reverse=True)
            for rows in window.passes:
                assert all(tuple(items[i][0]) in window.prompts for i in rows)
                assert len(rows) == 1 or len(rows) * (width + len(items[rows[0]][1])) <= budget
                assert all(len(items[i][1]) >= logprobs.MIN_FILL * len(items[rows[0]][1]) for i in rows)
    # with a large budget, a pass mixes prompts of different lengths (the left-padded path)
    passes = [rows for w in logprobs.plan_windows(items, 10**6) for rows in w.passes]
    assert any(len({len(items[i][0]) for i in rows}) > 1 for rows in passes)


@pytest.mark.parametrize("budget", [1, 64, 10**6])
def test_optimised_scorer_equals_naive(models, budget):
    policy, _ = models
    items = random_items()
    expected = naive_response_logprobs(policy, items)
    got = logprobs.response_logprobs(policy, items, max_batch_tokens=budget)
    assert got == pytest.approx(expected, abs=TOLERANCE)
    assert all(value == 0.0 for value, (_, r) in zip(got, items) if not r)
    assert len({round(v, 3) for v in got}) > 5  # real, distinct values


def test_paired_scorer_equals_naive_with_and_without_a_shared_projection(models):
    policy, reference = models
    items = random_items(seed=1)
    lora_like = perturbed_copy(reference, rank=4, scale=0.2)
    head = logprobs._TokenLogprobs
    assert head(lora_like).is_same_as(head(reference))  # tied embeddings untouched: one shared projection
    assert not head(policy).is_same_as(head(reference))  # other seeds: two projections
    for first in (policy, lora_like):
        lp, lr = logprobs.paired_response_logprobs(first, reference, items, max_batch_tokens=128)
        assert lp == pytest.approx(naive_response_logprobs(first, items), abs=TOLERANCE)
        assert lr == pytest.approx(naive_response_logprobs(reference, items), abs=TOLERANCE)
    rewards = [s.reward for s in implicit_rewards(lora_like, reference, items)]
    assert rewards == pytest.approx(naive_implicit_rewards(lora_like, reference, items), abs=TOLERANCE)
    assert max(abs(r) for r in rewards) > 1e-3  # the update changed the model: rewards are not all zero


def test_logits_stay_bounded_and_only_response_positions_are_projected(models, monkeypatch):
    """Memory does not grow with vocab x length: logits chunks and log-softmax slices stay within their bounds."""
    policy, reference = models
    items = random_items(seed=2)
    vocab = policy.get_output_embeddings().weight.shape[0]
    monkeypatch.setattr(logprobs, "LOGITS_CHUNK_ELEMENTS", 7 * vocab)
    monkeypatch.setattr(logprobs, "LOG_SOFTMAX_ELEMENTS", 3 * vocab)
    softmax_rows: list[int] = []
    log_softmax = torch.log_softmax
    monkeypatch.setattr(torch, "log_softmax", lambda x, dim: softmax_rows.append(x.shape[0]) or log_softmax(x, dim))
    shapes: list[tuple[int, ...]] = []
    hooks = [m.get_output_embeddings().register_forward_hook(lambda mod, args, out: shapes.append(tuple(out.shape)))
             for m in (policy, reference)]
    passes: list[int] = []
    body_hooks = [m.base_model.register_forward_hook(
        lambda mod, args, kwargs, out: passes.append(kwargs["input_ids"].numel()), with_kwargs=True)
        for m in (policy, reference)]
    try:
        logprobs.paired_response_logprobs(policy, reference, items, max_batch_tokens=96)
    finally:
        for hook in hooks + body_hooks:
            hook.remove()
    response_tokens = sum(len(r) for _, r in items)
    assert max(rows for rows, _ in shapes) <= 7 and all(cols == vocab for _, cols in shapes)
    assert sum(rows for rows, _ in shapes) == 2 * response_tokens  # no prompt or padding position projected
    assert max(passes) <= 96
    assert max(softmax_rows) <= 3 and sum(softmax_rows) == 2 * response_tokens


def test_bench_summary_rows_state_targets():
    from benchmarks.perf.suite import summary_rows

    per_k = {"k": 10, "tokens_per_s": {"ours": 30.0, "naive": 12.0}, "peak_mib": {"ours": 600.0, "naive": 2400.0},
             "matmul_gflops": 100.0, "utilisation": {"ours": 0.65, "naive": 0.26}, "max_abs_reward_difference": 2e-5,
             "max_relative_reward_difference": 1e-7}
    per_k["prompt_tokens"] = [90, 130]
    short = {**per_k, "tokens_per_s": {"ours": 30.0, "naive": 20.0}, "prompt_tokens": [36, 36], "is_short_prompts": True}
    scoring = {"per_k": [per_k, short], "memory_growth": {"ours": {"256": 520.0, "1024": 530.0},
                                                   "naive": {"256": 512.0, "1024": 2048.0}},
               "bf16": {"bf16_matmul_gflops": 0.3, "fp32_matmul_gflops": 100.0, "decision": "fp32"}}
    judging = {"batch_size": 8, "items_per_s": {"ours": 2.0, "naive": 1.0},
               "cached": {"cached_calls": 0, "first_calls": 16}}
    rows = summary_rows({"sections": {"scoring": scoring, "judging": judging, "training": {"error": "boom"}}})
    by_measure = {row["measure"]: row for row in rows}
    assert by_measure["K=10 response tokens/s (2 models; prompt 130 tokens)"]["ratio"] == pytest.approx(2.5)
    assert by_measure["K=10 response tokens/s (2 models; prompt 130 tokens)"]["met"] is True
    short_row = by_measure["K=10 response tokens/s (2 models; short prompts, prompt 36 tokens)"]
    assert short_row["ratio"] == pytest.approx(1.5) and short_row["met"] is None and short_row["target"] == ""
    assert by_measure["K=10 useful-FLOP utilisation (of 100 GFLOP/s)"]["met"] is True
    assert by_measure["peak memory growth, response 256 -> 1024 tokens"]["met"] is True
    assert by_measure["fully cached re-evaluation: model calls"]["met"] is True
    assert by_measure["section failed: boom"]["met"] is None


def test_scoring_section_compares_both_scorers(models):
    from benchmarks.perf.bench_scoring import ScoringConfig, compare_at_k

    policy, reference = models
    items = random_items(seed=3, n_prompts=2, k=3)
    row = compare_at_k(policy, reference, items, ScoringConfig(model="tiny", repeats=1), k=3)
    assert row["response_tokens"] == sum(len(r) for _, r in items) and row["prompts"] == 2
    assert all(row["tokens_per_s"][name] > 0 and row["utilisation"][name] > 0 for name in ("ours", "naive"))
    assert row["max_relative_reward_difference"] <= TOLERANCE


def test_bench_command_prints_the_table_and_writes_json(tmp_path, capsys):
    from harness.store import RunStore

    store = RunStore(tmp_path / "run")
    store.mark_done("iter_0/samples", {"seconds": 12.5, "records": 48, "tokens": 900})
    store.mark_done("iter_0/pairs", {"seconds": 30.0, "pairs": 12})
    out = tmp_path / "bench.json"
    code, stdout, stderr = run_cli(["bench", "--sections", "e2e", "--e2e-run-dir", str(tmp_path / "run"),
                                    "--no-e2e-fresh", "-o", str(out)], capsys)
    assert code == 0, stderr
    data = json.loads(out.read_text())
    assert data["machine"]["cores"] >= 1 and data["machine"]["torch"] == torch.__version__
    stages = data["sections"]["e2e"]["existing_run"]["stages"]
    assert [(row["stage"], row["seconds"]) for row in stages] == [("iter_0/samples", 12.5), ("iter_0/pairs", 30.0),
                                                                 ("total", 42.5)]
    [row] = data["rows"]
    assert row["section"] == "e2e" and row["ours"] == 42.5 and "iter_0/samples 12s" in row["measure"]
    assert "xlpref bench" in stdout and "e2e" in stdout and "42.5" in stdout
    code, _, stderr = run_cli(["bench", "--sections", "scoring,bogus"], capsys)
    assert code == 2 and "bogus" in stderr


def test_independent_score_cli_timing_agrees_with_the_naive_scorer(tmp_path):
    """benchmarks/perf/score_cli.py: `xlpref score` in its own process and the naive scorer on the same texts."""
    from benchmarks.perf.score_cli import main

    out = tmp_path / "score_cli.json"
    result = main(["--policy", "tiny-random-llama-seed1", "--reference", "tiny-random-llama", "--prompts", "2",
                   "--k", "3", "--min-tokens", "4", "--max-tokens", "20", "--threads", "1", "-o", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["response_tokens"] > 2 * 3 * 3
    assert result["seconds"]["xlpref_score"] > 0 and result["seconds"]["naive"] > 0
    assert result["max_abs_reward_difference"] < 1e-3
