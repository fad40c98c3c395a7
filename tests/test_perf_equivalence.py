"""The optimised scorer equals the naive one (benchmarks/perf/naive.py) and keeps its memory bounds.

Tiny random models (tiny Gemma 3 has a sliding window of 16 tokens, shorter than most items here), fp32,
tolerance 1e-4 (METHOD.md's rewards are sums over response tokens; the naive scorer runs full logits
over re-encoded, right-padded sequences, so only rounding may differ).
"""

from __future__ import annotations

import itertools
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
    """Memory does not grow with vocab x length: every logits tile stays within its bound, each block of
    states meets the whole vocabulary exactly once, and only states predicting response tokens are projected."""
    policy, reference = models
    items = random_items(seed=2)
    vocab = policy.get_output_embeddings().weight.shape[0]
    monkeypatch.setattr(logprobs, "PROJECTION_ROWS", 7)
    monkeypatch.setattr(logprobs, "LOGITS_TILE_ELEMENTS", 7 * 37)
    tiles: list[tuple[int, int, int]] = []  # (rows, first column, end column)
    project = logprobs._TokenLogprobs.project
    monkeypatch.setattr(logprobs._TokenLogprobs, "project", lambda self, hidden, start, stop, out: (
        tiles.append((hidden.shape[0], start, stop)), project(self, hidden, start, stop, out))[1])
    module_calls: list[tuple[int, ...]] = []
    hooks = [m.get_output_embeddings().register_forward_hook(lambda *args: module_calls.append(args[2].shape))
             for m in (policy, reference)]
    passes: list[int] = []
    body_hooks = [m.base_model.register_forward_hook(
        lambda mod, args, kwargs, out: passes.append(kwargs["input_ids"].numel()), with_kwargs=True)
        for m in (policy, reference)]
    try:
        got = logprobs.paired_response_logprobs(policy, reference, items, max_batch_tokens=96)
    finally:
        for hook in hooks + body_hooks:
            hook.remove()
    assert got[0] == pytest.approx(naive_response_logprobs(policy, items), abs=TOLERANCE)
    assert not module_calls  # the full-vocabulary head never ran
    response_tokens = sum(len(r) for _, r in items)
    assert all(rows <= 7 and rows * (stop - start) <= 7 * 37 for rows, start, stop in tiles)
    blocks = [rows for rows, start, _ in tiles if start == 0]
    assert sum(blocks) == 2 * response_tokens  # no prompt or padding position projected
    sweeps: list[list[tuple[int, int]]] = []
    for _, start, stop in tiles:
        if start == 0:
            sweeps.append([])
        sweeps[-1].append((start, stop))
    for sweep in sweeps:  # each block's tiles cover the vocabulary once, in order
        assert sweep[0][0] == 0 and sweep[-1][1] == vocab
        assert all(a[1] == b[0] for a, b in itertools.pairwise(sweep))
    assert max(passes) <= 96


@pytest.mark.parametrize("block", [50, 10**6])
def test_states_of_several_passes_share_one_projection_block(models, monkeypatch, block):
    """Small passes are projected together (one read of the head per block, not per pass), blocks stay bounded."""
    policy, reference = models
    items = random_items(seed=4, n_prompts=6)
    monkeypatch.setattr(logprobs, "PROJECTION_ROWS", block)
    blocks: list[int] = []
    project = logprobs._TokenLogprobs.project
    monkeypatch.setattr(logprobs._TokenLogprobs, "project", lambda self, hidden, start, stop, out: (
        start == 0 and blocks.append(hidden.shape[0]), project(self, hidden, start, stop, out))[1])
    passes: list[int] = []
    hook = policy.base_model.register_forward_hook(lambda *args: passes.append(1))
    try:
        got = logprobs.paired_response_logprobs(policy, reference, items, max_batch_tokens=48)
    finally:
        hook.remove()
    assert got[0] == pytest.approx(naive_response_logprobs(policy, items), abs=TOLERANCE)
    assert got[1] == pytest.approx(naive_response_logprobs(reference, items), abs=TOLERANCE)
    response_tokens = sum(len(r) for _, r in items)
    assert sum(blocks) == 2 * response_tokens and max(blocks) <= block
    assert len(blocks) < len(passes)  # passes (prompt encodings included) outnumber projection blocks
    if block > 2 * response_tokens:
        assert len(blocks) == 2  # policy and reference: one block each (separate heads)


def test_heads_with_bias_softcap_and_scale_and_other_modules_equal_naive(monkeypatch):
    """The tiled projection applies a head's bias, logit scale and soft-capping like the model's own forward;
    a head that is not a plain Linear runs as a module, in bounded row slices."""
    model, _ = build_tiny_model("tiny-random-gemma3", seed=3)
    model.config.final_logit_softcapping = 2.0  # tight: most logits are bent
    old = model.get_output_embeddings()
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.normal_(0, 0.5)
    model.lm_head = head
    items = random_items(seed=3)
    assert logprobs._TokenLogprobs(model).softcap == 2.0
    expected = naive_response_logprobs(model, items)
    assert logprobs.response_logprobs(model, items) == pytest.approx(expected, abs=TOLERANCE)

    scaled = logprobs._TokenLogprobs(model)
    scaled.scale = 0.5  # Cohere-style: the logits multiplied before soft-capping
    hidden = torch.randn(5, old.in_features)
    targets = torch.tensor([0, 7, 100, 511, 3])
    by_hand = torch.log_softmax(torch.tanh(head(hidden) * 0.5 / 2.0) * 2.0, dim=-1)[torch.arange(5), targets]
    assert scaled(hidden, targets) == pytest.approx(by_hand.tolist(), abs=1e-5)

    class Wrapped(torch.nn.Module):  # e.g. a quantised or adapter-wrapped head: only callable as a module
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.weight = inner.weight
            self.calls: list[int] = []

        def forward(self, x):
            self.calls.append(x.shape[0])
            return self.inner(x)

    model.lm_head = wrapped = Wrapped(head)
    monkeypatch.setattr(logprobs, "FALLBACK_LOGITS_ELEMENTS", 3 * head.out_features)
    assert not logprobs._TokenLogprobs(model).is_tiled
    assert logprobs.response_logprobs(model, items) == pytest.approx(expected, abs=TOLERANCE)
    assert wrapped.calls and max(wrapped.calls) <= 3


def test_bench_summary_rows_state_targets():
    from benchmarks.perf.suite import summary_rows

    per_k = {"k": 10, "tokens_per_s": {"ours": 30.0, "naive": 12.0}, "peak_mib": {"ours": 600.0, "naive": 2400.0},
             "matmul_gflops": 100.0, "utilisation": {"ours": 0.65, "naive": 0.26}, "max_abs_reward_difference": 2e-5,
             "max_relative_reward_difference": 1e-7}
    per_k["prompt_tokens"] = [90, 130]
    short = {**per_k, "tokens_per_s": {"ours": 30.0, "naive": 20.0}, "prompt_tokens": [36, 36], "is_short_prompts": True}
    scoring = {"per_k": [per_k, short], "memory_growth": {"ours": {"256": 520.0, "1024": 530.0},
                                                   "naive": {"256": 512.0, "1024": 2048.0}, "vocab_row_mib": 1.0},
               "rounding": {"response_tokens": 256, "ours_minus_float64": -4e-5, "naive_minus_float64": 5e-3},
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
    growth = by_measure["peak memory added per response token, 256 -> 1024 tokens, in vocab rows (1.00 MiB)"]
    assert growth["ours"] == pytest.approx(10 / 768) and growth["naive"] == pytest.approx(2.0) and growth["met"] is True
    assert by_measure["fully cached re-evaluation: model calls"]["met"] is True
    error = by_measure["|log p - float64 log-softmax of the same logits|, one response of 256 tokens"]
    assert (error["ours"], error["naive"]) == (4e-5, 5e-3)
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


def test_rounding_probe_measures_both_scorers_against_float64():
    from benchmarks.perf.bench_scoring import rounding

    model, tokenizer = build_tiny_model("tiny-random-llama", seed=5)
    error = rounding(model, tokenizer, length=48)
    assert error["response_tokens"] == 48 and error["float64_logp"] < -1.0
    assert abs(error["ours_minus_float64"]) < 1e-4  # float64 finish: only the logits' own rounding remains
    assert abs(error["naive_minus_float64"]) < 1e-3


def test_the_suite_runs_as_a_module_and_refuses_an_unknown_section(capsys):
    from benchmarks.perf.suite import main

    assert main(["--sections", "scoring,warp-drive"]) == 2
    assert "unknown sections ['warp-drive']" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0 and "python -m benchmarks.perf.suite" in capsys.readouterr().out
