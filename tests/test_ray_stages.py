"""Stages on Ray worker actors write what one worker and a local run write; a killed worker loses nothing.

One local Ray instance (2 CPUs) serves the module; each stage starts its own workers (a few seconds
each on this machine: every worker imports torch and loads its model once).
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
from pathlib import Path

import pytest
from cli_helpers import run_cli

from xlpref.cluster import ComputeConfig
from xlpref.data import MINI_DIR, load_instructions
from xlpref.jsonio import read_jsonl
from xlpref.ray_stages import make_stage_sampler
from xlpref.records import RecordLog
from xlpref.reward import SCORE_KEY, BlockScorer, score_records
from xlpref.sampling import SAMPLE_KEY, SampleRequest, SamplingParams, make_sampler, sample_to_log
from xlpref.sampling_prompts import requests_from_prompts

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'xlpref[ray]')")

POLICY, REFERENCE = "tiny-random-llama", "tiny-random-llama-seed1"
PROMPTS = {"en": ["Write a haiku about the sea.", "List three fruits.", "Explain rain to a child in two sentences.",
                  "Name a color."],
           "es": ["Escribe un haiku sobre el mar.", "Enumera tres frutas.",
                  "Explica la lluvia a un niño en dos frases.", "Nombra un color."]}
PARAMS = SamplingParams(n=2, max_new_tokens=8, batch_size=2, seed=7)


def ray_compute(workers: int) -> ComputeConfig:
    return ComputeConfig(engine="ray", workers=workers)


@pytest.fixture(scope="module", autouse=True)
def local_ray(one_torch_thread):
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    # The fault test's job class lives in this module, which the workers cannot import: send it by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def prompts_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("prompts")
    for lang, texts in PROMPTS.items():
        rows = [{"instruction": text, "instruction_id": f"id{i}"} for i, text in enumerate(texts)]
        (folder / f"{lang}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def requests(prompts_dir) -> list[SampleRequest]:
    return requests_from_prompts(prompts_dir, ["en", "es"])


@pytest.fixture(scope="module")
def local_samples(requests, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("local") / "samples.jsonl"
    sample_to_log(make_sampler("hf", POLICY), requests, PARAMS, RecordLog(path, SAMPLE_KEY), progress=False)
    return path


def sample_with_workers(requests, path: Path, workers: int) -> dict:
    sampler = make_stage_sampler("hf", POLICY, ray_compute(workers))
    try:
        sample_to_log(sampler, requests, PARAMS, RecordLog(path, SAMPLE_KEY), progress=False)
    finally:
        sampler.close()
    return sampler.report


def test_ray_sampling_with_one_or_two_workers_writes_the_bytes_of_a_local_run(requests, prompts_dir, local_samples,
                                                                             tmp_path, capsys):
    one = sample_with_workers(requests, tmp_path / "one.jsonl", 1)
    code, _, err = run_cli(["sample", "--model", POLICY, "--prompts", prompts_dir, "--langs", "en,es", "--n", PARAMS.n,
                            "--max-new-tokens", PARAMS.max_new_tokens, "--batch-size", PARAMS.batch_size,
                            "--seed", PARAMS.seed, "-o", tmp_path / "two.jsonl", "--engine", "ray", "--workers", 2],
                           capsys)
    assert code == 0, err

    expected = local_samples.read_bytes()
    assert (tmp_path / "one.jsonl").read_bytes() == expected
    assert (tmp_path / "two.jsonl").read_bytes() == expected
    # 8 prompts in batches of 2: 4 shards, pulled by idle workers; every record came back once.
    assert one["workers"] == 1 and one["per_worker"][0]["shards"] == 4
    two = json.loads((tmp_path / "two.jsonl.stages.json").read_text(encoding="utf-8"))["sample"]["compute"]
    assert [w["shards"] > 0 for w in two["per_worker"]] == [True, True]
    assert sum(w["records"] for w in two["per_worker"]) == 16
    assert all(w["load_seconds"] > 0 for w in two["per_worker"])


def test_ray_evaluation_outputs_with_two_workers_equal_a_local_run(tmp_path):
    from harness.evaluation.model_outputs import generate_outputs

    instructions = {lang: rows[:3] for lang, rows in load_instructions(MINI_DIR / "x_alpacaeval" / "instructions",
                                                                       ["en", "es"]).items()}
    params = SamplingParams(n=1, temperature=0.6, top_p=0.9, max_new_tokens=8, batch_size=2, seed=3)
    outputs = {}
    for name, compute in (("local", None), ("ray", ray_compute(2))):
        paths = generate_outputs(POLICY, instructions, tmp_path / name, generator="tiny", params=params,
                                 progress=False, compute=compute)
        outputs[name] = {lang: path.read_bytes() for lang, path in paths.items()}
    assert outputs["ray"] == outputs["local"]
    assert (tmp_path / "ray" / "generation.jsonl").read_bytes() == (tmp_path / "local" / "generation.jsonl").read_bytes()
    summary = json.loads((tmp_path / "ray" / "generation.stages.json").read_text(encoding="utf-8"))["generate"]
    assert summary["records"] == 6 and summary["compute"]["workers"] == 2
    assert not (tmp_path / "local" / "generation.stages.json").exists()


class DriverStopped(Exception):
    """The driver process ends mid-stage (as if killed)."""


class PoolScorer:
    """The scorer interface of :class:`xlpref.ray_stages.RayScorer` over a given pool (reused across runs)."""

    def __init__(self, pool, *, stop_after: int | None = None) -> None:
        self.pool, self.stop_after = pool, stop_after

    def map_blocks(self, blocks):
        for count, result in enumerate(self.pool.map(blocks), start=1):
            yield result
            if count == self.stop_after:
                raise DriverStopped("the driver stops here")


class KillOnce:
    """A worker's scoring job that SIGKILLs its own process on its first shard, once per test (a marker file)."""

    def __init__(self, marker: str, build) -> None:
        self.marker, self.job = marker, build()

    def __call__(self, shard):
        if not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()), encoding="utf-8")
            os.kill(os.getpid(), signal.SIGKILL)
        return self.job(shard)


SCORING = {"token_span": "authors", "max_batch_tokens": 4}  # tiny blocks: one prompt group each


@pytest.fixture(scope="module")
def fault_free_scores(local_samples, tmp_path_factory) -> Path:
    """The local scorer's artifact: every Ray run below must write these bytes (rewards within 1e-5)."""
    path = tmp_path_factory.mktemp("scored") / "scored.jsonl"
    scorer = BlockScorer.load(POLICY, REFERENCE, "cross-lingual", **SCORING)
    score_records(read_jsonl(local_samples), None, None, None, "cross-lingual", log=RecordLog(path, SCORE_KEY),
                  scorer=scorer, progress=False, max_batch_tokens=SCORING["max_batch_tokens"])
    return path


def assert_same_scores(path: Path, expected: Path) -> None:
    got, want = read_jsonl(path), read_jsonl(expected)
    assert [tuple(r[k] for k in SCORE_KEY) for r in got] == [tuple(r[k] for k in SCORE_KEY) for r in want]
    for a, b in zip(got, want):
        assert abs(a["reward"] - b["reward"]) <= 1e-5
        assert {k: v for k, v in a.items() if k not in ("reward", "logp_policy", "logp_reference")} == \
            {k: v for k, v in b.items() if k not in ("reward", "logp_policy", "logp_reference")}


def test_ray_scoring_command_with_two_workers_gives_the_local_rewards(local_samples, fault_free_scores, tmp_path,
                                                                     capsys):
    output = tmp_path / "scored.jsonl"
    code, _, err = run_cli(["score", local_samples, "--policy", POLICY, "--reference", REFERENCE,
                            "--max-batch-tokens", SCORING["max_batch_tokens"], "-o", output,
                            "--engine", "ray", "--workers", 2], capsys)

    assert code == 0, err
    assert_same_scores(output, fault_free_scores)
    summary = json.loads(output.with_name(output.name + ".stages.json").read_text(encoding="utf-8"))["score"]
    assert summary["records"] == 16 and summary["compute"]["workers"] == 2
    assert [w["records"] > 0 for w in summary["compute"]["per_worker"]] == [True, True]
    assert sum(w["records"] for w in summary["compute"]["per_worker"]) == 16


def test_ray_one_worker_killed_mid_shard_is_restarted_and_a_stopped_driver_resumes(local_samples, fault_free_scores,
                                                                                      tmp_path):
    from xlpref.ray_stages import WorkerPool

    marker = tmp_path / "killed.pid"
    build = functools.partial(KillOnce, str(marker), functools.partial(BlockScorer.load, POLICY, REFERENCE,
                                                                       "cross-lingual", **SCORING))
    pool = WorkerPool(ray_compute(1), build, stage="scoring")
    samples = read_jsonl(local_samples)
    path = tmp_path / "scored.jsonl"
    options = {"progress": False, "max_batch_tokens": SCORING["max_batch_tokens"]}
    try:
        # The driver stops after two blocks (killed mid-stage); a rerun resumes from the record log.
        with pytest.raises(DriverStopped):
            score_records(samples, None, None, None, "cross-lingual", log=RecordLog(path, SCORE_KEY),
                          scorer=PoolScorer(pool, stop_after=2), **options)
        partial = read_jsonl(path.with_name("scored.partial.jsonl"))
        assert 0 < len(partial) < len(samples) and not path.exists()
        score_records(samples, None, None, None, "cross-lingual", log=RecordLog(path, SCORE_KEY),
                      scorer=PoolScorer(pool), **options)
        report = pool.report
    finally:
        pool.close()

    assert marker.exists()  # a worker process was SIGKILLed inside a shard ...
    assert pool.stats[0]["pid"] != int(marker.read_text(encoding="utf-8"))  # the worker was restarted
    assert_same_scores(path, fault_free_scores)  # ... and its shard was redone: every record exactly once
    # Each block reached the driver once (the killed attempt returned nothing; done blocks were not redone).
    assert sum(w["records"] for w in report["per_worker"]) == len(samples)


def test_ray_loop_stages_record_workers_nodes_and_per_worker_records_in_stages_json(tmp_path):
    from rich.console import Console

    from harness.config import load_config
    from harness.loop import RunContext, build_preference_pairs, load_run_data, sample_responses
    from harness.store import RunStore

    config = load_config(Path(__file__).parent / "fixtures" / "tiny_run.yaml",
                         overrides={"run_dir": str(tmp_path / "run"), "data": {"prompt_limit": 2},
                                    "compute": {"engine": "ray", "workers": 1}})
    store = RunStore(config.run_dir)
    ctx = RunContext(config, store, Console(stderr=True, quiet=True), *load_run_data(config))

    samples = sample_responses(ctx, 0, config.models.policy)
    build_preference_pairs(ctx, 0, config.models.policy, samples)

    stages = store.stages()
    for stage, records in (("iter_0/samples", len(samples)), ("iter_0/pairs", len(samples))):
        compute = stages[stage]["compute"]
        assert compute["workers"] == 1 and compute["nodes"] == 1
        assert sum(w["records"] for w in compute["per_worker"]) == records
        assert all(set(w) >= {"node", "shards", "records", "seconds", "load_seconds"} for w in compute["per_worker"])


def test_ray_flags_are_refused_in_one_line_before_any_work(local_samples, tmp_path, capsys):
    output = tmp_path / "scored.jsonl"
    base = ["score", local_samples, "--policy", POLICY, "--reference", REFERENCE, "-o", output]

    code, _, err = run_cli([*base, "--workers", 2], capsys)
    assert code == 2 and "--workers, --ray-address and --gpus-per-worker need --engine ray" in err
    code, _, err = run_cli([*base, "--engine", "ray", "--gpus-per-worker", 1], capsys)
    assert code == 2 and "1 workers x 1 GPUs need 1 GPUs; the Ray cluster has 0" in err
    assert not output.exists() and not output.with_name("scored.partial.jsonl").exists()


def test_ray_lidr_answers_and_self_translations_on_two_workers_give_the_local_pairs(tmp_path, capsys):
    base = ["annotate", "--annotator", "lidr", "--policy", "tiny-random-gemma3", "--prompts",
            MINI_DIR / "train_prompts" / "mini",
            "--langs", "en,es", "--limit", 2, "--max-new-tokens", 6, "--batch-size", 1]
    code, _, err = run_cli([*base, "-o", tmp_path / "local.jsonl"], capsys)
    assert code == 0, err
    code, _, err = run_cli([*base, "-o", tmp_path / "ray.jsonl", "--engine", "ray", "--workers", 2], capsys)
    assert code == 0, err

    assert (tmp_path / "ray.jsonl").read_bytes() == (tmp_path / "local.jsonl").read_bytes()
    assert read_jsonl(tmp_path / "ray.jsonl")  # answers were translated and paired
    assert (tmp_path / "ray.work" / "lidr_translations.jsonl").read_bytes() == \
        (tmp_path / "local.work" / "lidr_translations.jsonl").read_bytes()
    compute = json.loads((tmp_path / "ray.jsonl.stages.json").read_text(encoding="utf-8"))["annotate"]["compute"]
    assert compute["workers"] == 2 and all(w["shards"] > 0 for w in compute["per_worker"])


def test_ray_scale_bench_rows_give_the_speedup_of_two_workers_and_the_per_shard_overhead():
    from benchmarks.perf.suite import summary_rows

    def run(wall: float, tokens: int, workers: int) -> dict:
        return {"wall_seconds": wall, "tokens": tokens, "shards": 8, "load_seconds": [4.0] * workers,
                "overhead_ms_per_shard": 12.5, "equal_to_first": True}

    scale = {"config": {"worker_counts": [1, 2]}, "ray_startup_seconds": 5.0,
             "sampling": {"1": run(10.0, 1000, 1), "2": run(5.5, 1000, 2)},
             "scoring": {"1": run(8.0, 800, 1), "2": run(6.0, 800, 2), "max_logp_difference": 0.0}}
    rows = {row["measure"]: row for row in summary_rows({"sections": {"scale": scale}})}

    sampling = rows["hf sampling: 2 workers x 1 thread vs 1, tok/s (same output: True)"]
    assert sampling["ratio"] == pytest.approx(10 / 5.5) and sampling["met"] is True
    scoring = rows["scoring (one model): 2 workers x 1 thread vs 1, tok/s (same output: True)"]
    assert scoring["ratio"] == pytest.approx(8 / 6) and scoring["met"] is False
    assert rows["hf sampling: per-shard overhead, 2 workers (8 shards)"]["ours"] == 12.5
    assert rows["Ray start-up (local instance, once per command)"]["ours"] == 5.0
