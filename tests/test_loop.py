"""The ICR loop end to end on tiny random models: a 2-iteration run, resume after interruptions
inside every stage (same artifacts as an uninterrupted run), and config validation errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from harness.config import load_config
from harness.loop import run_icr
from xlpref.errors import InputError
from xlpref.records import RecordLog

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "fixtures" / "tiny_run.yaml"
# Artifacts whose content must not depend on interruptions (times and caches excluded).
COMPARED = ("*/samples.jsonl", "*/scored.jsonl", "*/pairs.jsonl", "*/pairs.summary.json",
            "eval/*/*/model_outputs.json", "eval/*/*/annotations.json", "eval/*/*/metrics.json",
            "leaderboard.csv", "deltas.csv")
# judge_calls.json sums the calls of every invocation: a resumed run may redo a cut chunk, by design.


class Interrupt(Exception):
    """Stands for a crash in the middle of a stage."""


def tiny_config(run_dir: Path):
    return load_config(TINY, overrides={"run_dir": str(run_dir)})


def artifacts(run_dir: Path) -> dict[str, str]:
    """Compared files; pi_t is a folder inside the run, so the run's own path is written as <RUN>."""
    found = {}
    for pattern in COMPARED:
        for path in sorted(run_dir.glob(pattern)):
            found[str(path.relative_to(run_dir))] = path.read_text(encoding="utf-8").replace(str(run_dir), "<RUN>")
    return found


def weights_digest(run_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.glob("iter_*/model/*.safetensors"))}


@pytest.fixture(scope="module")
def reference_run(tiny_reference_run):
    """The uninterrupted tiny run (run once per session by tests/conftest.py, through the CLI)."""
    return tiny_reference_run.run_dir


def test_two_iterations_end_to_end(reference_run):
    run_dir = reference_run
    stages = json.loads((run_dir / "stages.json").read_text())
    expected = ["eval/iter_0", "iter_0/samples", "iter_0/pairs", "iter_0/train",
                "eval/iter_1", "iter_1/samples", "iter_1/pairs", "iter_1/train", "eval/iter_2"]
    assert list(stages) == expected
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["reward_pair"] == "original"
    assert manifest["config"]["models"]["policy"] == "tiny-random-llama-seed1"
    assert len(manifest["config_hash"]) == 64
    samples = [json.loads(line) for line in (run_dir / "iter_0" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 * 4 * 3  # languages x prompts x n
    assert {"id", "lang", "prompt", "prompt_en", "response", "sample_index"} <= set(samples[0])
    pairs = [json.loads(line) for line in (run_dir / "iter_0" / "pairs.jsonl").read_text().splitlines()]
    assert pairs and {p["lang"] for p in pairs} <= {"en", "es"}
    # pi_1 differs from pi_0: training moved the weights.
    assert (run_dir / "iter_0" / "model" / "model.safetensors").exists()
    board = (run_dir / "leaderboard.csv").read_text()
    for t in range(3):
        assert f"tiny-iter{t}" in board
    for t in range(3):
        for lang in ("en", "es"):
            metrics = json.loads((run_dir / "eval" / f"iter_{t}" / lang / "metrics.json").read_text())
            assert metrics["n_total"] == 6
            assert 0 <= metrics["win_rate"] <= 100
            assert metrics["annotator"].startswith("local_hf_logprob")


def test_resume_after_interruptions_in_every_stage(reference_run, tmp_path, monkeypatch):
    """Crash inside sampling, scoring, evaluation (record logs) and training; rerun until done."""
    run_dir = tmp_path / "interrupted"
    crashed: list[str] = []
    original_append = RecordLog.append

    def flaky_append(self, records):
        records = list(records)
        kind = f"{self.final_path.parent.name}/{self.final_path.name}"  # e.g. iter_0/samples.jsonl
        if kind not in crashed and len(records) > 1:
            crashed.append(kind)
            original_append(self, records[: len(records) // 2])  # half a batch landed, then the crash
            raise Interrupt(f"crash in {kind}")
        return original_append(self, records)

    from harness.evaluation.judging import AnnotationCache

    original_add = AnnotationCache.add

    def flaky_add(self, records):
        records = list(records)
        if "judge" not in crashed and len(records) > 1:
            crashed.append("judge")
            original_add(self, records[:1])
            raise Interrupt("crash while judging")
        return original_add(self, records)

    import transformers

    original_step = transformers.Trainer.training_step

    def flaky_step(self, *args, **kwargs):
        if "train" not in crashed and self.state.global_step == 1:
            crashed.append("train")
            raise Interrupt("crash inside training")
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(AnnotationCache, "add", flaky_add)
    monkeypatch.setattr(RecordLog, "append", flaky_append)
    monkeypatch.setattr(transformers.Trainer, "training_step", flaky_step)
    crashes = 0
    for _ in range(20):
        try:
            ctx = run_icr(tiny_config(run_dir))
            break
        except Interrupt:
            crashes += 1
    else:
        pytest.fail("the run did not finish after 20 resumes")
    from harness.results.run_leaderboard import run_leaderboard

    run_leaderboard(ctx)
    assert crashes == len(crashed)
    for stage in ("iter_0/samples.jsonl", "iter_0/scored.jsonl", "iter_0/generation.jsonl", "judge", "train"):
        assert stage in crashed, crashed
    assert artifacts(run_dir) == artifacts(reference_run)
    assert weights_digest(run_dir) == weights_digest(reference_run)
    assert not list(run_dir.rglob("*.partial.jsonl"))


@pytest.mark.parametrize("patch, message", [
    ({"sampling": {"n": 0}}, "sampling.n"),
    ({"samplng": {"n": 2}}, "unknown key"),
    ({"languages": ["en", "xx"]}, "unknown language"),
    ({"data": {"train_prompts": "/nonexistent/prompts"}}, "data.train_prompts"),
    ({"iterations": "two"}, "iterations"),
    ({"models": {"reward_pair": "newest"}}, "models.reward_pair"),
    ({"training": {"languages": ["fr"]}}, "training.languages"),
])
def test_config_validation_errors(tmp_path, patch, message):
    raw = yaml.safe_load(TINY.read_text())
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(InputError) as info:
        load_config(bad)
    assert str(bad) in str(info.value)
    assert message in str(info.value)
    assert not (tmp_path / "runs").exists()


def test_config_extends_and_overrides(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text(f"extends: {TINY}\nname: child\nsampling: {{n: 5}}\n")
    config = load_config(child)
    assert config.name == "child" and config.sampling.n == 5
    assert config.sampling.max_new_tokens == 12  # kept from the base
    assert config.run_dir == Path.cwd() / "runs" / "child"


def test_run_files_are_published_beside_the_rows(reference_run, tmp_path):
    """With evaluation.results_dir set, RESULTS/<run>-run/ holds the run's own leaderboard, deltas and stages."""
    from types import SimpleNamespace

    from harness.results.run_leaderboard import publish_run_files
    from harness.store import RunStore

    config = load_config(TINY, overrides={"run_dir": str(reference_run),
                                          "evaluation": {"results_dir": str(tmp_path / "results")}})
    out = publish_run_files(SimpleNamespace(config=config, store=RunStore(reference_run)))
    assert out == (tmp_path / "results" / "tiny-run").resolve()
    for name in ("leaderboard.csv", "deltas.csv", "stages.json"):
        assert (out / name).read_bytes() == (reference_run / name).read_bytes()
