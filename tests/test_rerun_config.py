"""A run's record matches its artifacts: a rerun with another config, or a resumed command with other options,
is refused where finished or started work depends on what changed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from cli_helpers import run_cli

from harness.config import load_config
from harness.loop import check_config_matches_run, config_dependents
from harness.store import (RunStore, check_output_options, config_differences, options_sidecar_path,
                           record_output_options)
from xlpref.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


def write_config(folder: Path, run_dir: Path, **overrides) -> Path:
    body = {"extends": str(ROOT / "configs" / "demo.yaml"), "run_dir": str(run_dir), **overrides}
    path = folder / f"config-{len(list(folder.glob('config-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(body), encoding="utf-8")
    return path


@pytest.fixture
def finished_iteration(tmp_path, monkeypatch):
    """A run directory whose manifest records demo.yaml and whose iteration 0 sampled its responses."""
    monkeypatch.chdir(ROOT)
    run_dir = tmp_path / "run"
    config = load_config(write_config(tmp_path, run_dir))
    store = RunStore(run_dir)
    store.write_manifest(config.resolved(), iterations=config.iterations)
    store.mark_done("eval/iter_0", {})
    store.mark_done("iter_0/samples", {})
    (run_dir / "iter_0").mkdir()
    (run_dir / "iter_0" / "samples.jsonl").write_text("", encoding="utf-8")
    return tmp_path, run_dir, store


def test_config_differences_name_dotted_keys():
    assert config_differences({"a": {"b": 1, "c": [1]}, "d": 2}, {"a": {"b": 2, "c": [1]}, "e": 3}) == \
        ["a.b", "d", "e"]
    assert config_dependents("sampling.temperature") == ("samples",)
    assert config_dependents("iterations") == () and config_dependents("seed") == ("eval", "samples", "pairs", "train")


def test_a_rerun_changing_what_finished_stages_used_is_refused_with_the_keys(finished_iteration, capsys):
    tmp_path, run_dir, store = finished_iteration
    changed = write_config(tmp_path, run_dir, sampling={"temperature": 0.3, "n": 5})
    before = store.manifest_path.read_text()
    code, _, err = run_cli(["run", changed], capsys)
    assert code == 2
    assert "sampling.n" in err and "sampling.temperature" in err and "iter_0/samples" in err
    assert store.manifest_path.read_text() == before  # the record still says what made the artifacts
    with pytest.raises(InputError, match="evaluation.temperature"):
        check_config_matches_run(store, load_config(write_config(tmp_path, run_dir, evaluation={"temperature": 1.0})))


def test_what_only_unfinished_work_uses_may_change(finished_iteration):
    tmp_path, run_dir, store = finished_iteration
    for overrides in ({"iterations": 3}, {"annotator": {"token_span": "response"}}, {"training": {"epochs": 2}},
                      {"description": "more iterations"}):
        check_config_matches_run(store, load_config(write_config(tmp_path, run_dir, **overrides)))
    # a started (not finished) stage counts too: its partial log holds records made with the recorded config
    (run_dir / "iter_0" / "scored.partial.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(InputError, match="annotator.token_span"):
        check_config_matches_run(store, load_config(write_config(tmp_path, run_dir,
                                                                 annotator={"token_span": "response"})))


def test_a_resumed_output_with_other_options_is_refused(tmp_path):
    output = tmp_path / "scored.jsonl"
    record_output_options(output, check_output_options(
        output, {"reward": "cross-lingual", "token_span": "authors", "max_batch_tokens": 64}, has_work=False))
    assert json.loads(options_sidecar_path(output).read_text())["options"]["token_span"] == "authors"
    check_output_options(output, {"reward": "cross-lingual", "token_span": "authors", "max_batch_tokens": 128},
                         has_work=True, changeable=("max_batch_tokens",))
    with pytest.raises(InputError, match="token_span: 'authors' -> 'response'"):
        check_output_options(output, {"reward": "cross-lingual", "token_span": "response", "max_batch_tokens": 128},
                             has_work=True, changeable=("max_batch_tokens",))
    # nothing written yet: the new options simply replace the record
    record_output_options(output, check_output_options(output, {"reward": "multilingual"}, has_work=False))
    assert json.loads(options_sidecar_path(output).read_text())["options"] == {"reward": "multilingual"}


def test_score_resumed_with_another_reference_is_refused(tmp_path, capsys):
    samples = tmp_path / "samples.jsonl"
    samples.write_text(json.dumps({"lang": "es", "id": 1, "sample_index": 0, "prompt": "Escribe.", "prompt_en": "Write.",
                                   "response": "Hola"}) + "\n", encoding="utf-8")
    output = tmp_path / "scored.jsonl"
    args = ["score", samples, "--policy", "tiny-random-llama", "-o", output]
    code, _, err = run_cli([*args, "--reference", "tiny-random-llama-seed1"], capsys)
    assert code == 0, err
    code, _, err = run_cli([*args, "--reference", "tiny-random-llama-seed2"], capsys)
    assert code == 2 and "reference: 'tiny-random-llama-seed1' -> 'tiny-random-llama-seed2'" in err
    code, _, err = run_cli([*args, "--reference", "tiny-random-llama-seed1"], capsys)  # the same options resume
    assert code == 0, err
