"""Judge drift sentinel, and an evaluation that leaves nothing uncounted, unsaid or overwritten.

The judge is the API judge against tests/fake_openai_server.py on 127.0.0.1; the server's ``p_good``
is its "model": changing it between two evaluations is a hosted judge that changed behind its name.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import run_cli
from fake_openai_server import FakeOpenAIServer
from results_fixtures import add_row
from test_judge_faults import JUDGE, N_ITEMS, write_user_files

from harness.evaluation.drift import pinned_keys


def evaluate(outputs: Path, data_dir: Path, server: FakeOpenAIServer, capsys, *extra) -> tuple[int, str, str]:
    return run_cli(["evaluate", outputs, "--judge", JUDGE, "--data-dir", data_dir,
                    "--judge-option", f"base_url={server.base_url}", "--judge-option", "retry_backoff_s=0.05",
                    *extra], capsys)


def test_pinned_pairs_depend_only_on_the_candidates_and_the_seed():
    keys = [f"k{i}" for i in range(30)]
    assert pinned_keys(keys, 5, 0) == pinned_keys(list(reversed(keys)), 5, 0)
    assert pinned_keys(keys, 5, 0) != pinned_keys(keys, 5, 1) and len(pinned_keys(keys, 50, 0)) == 30


def test_a_judge_that_changed_its_answers_is_reported_and_fails_check(tmp_path, api_key, capsys, caplog):
    data_dir, outputs = write_user_files(tmp_path)
    metrics_path = outputs / "es" / "weighted_gpt4_turbo_multilingual" / "metrics.json"
    with FakeOpenAIServer(p_good=0.9) as first:
        code, _, err = evaluate(outputs, data_dir, first, capsys, "--drift-check", "5")
        assert code == 0, err
    first_metrics = json.loads(metrics_path.read_text())
    drift = first_metrics["judge_drift"]
    assert drift["n_checked"] == 0 and drift["is_drift"] is False  # nothing cached yet to re-ask

    with FakeOpenAIServer(p_good=0.9) as same:  # the same judge: agreement 100%, no difference
        code, out, err = evaluate(outputs, data_dir, same, capsys, "--drift-check", "5")
        assert code == 0 and same.hits == 5, err
    drift = json.loads(metrics_path.read_text())["judge_drift"]
    assert (drift["n_checked"], drift["agreement"], drift["is_drift"]) == (5, 1.0, False)
    assert drift["mean_abs_preference_difference"] == pytest.approx(0.0, abs=1e-6)

    with FakeOpenAIServer(p_good=0.3) as changed:  # the same name, another model
        code, out, err = evaluate(outputs, data_dir, changed, capsys, "--drift-check", "5")
        assert code == 0 and changed.hits == 5, err
    metrics = json.loads(metrics_path.read_text())
    drift = metrics["judge_drift"]
    assert (drift["n_checked"], drift["agreement"], drift["is_drift"]) == (5, 0.0, True)
    assert drift["mean_abs_preference_difference"] == pytest.approx(0.6, abs=1e-6)
    assert "judge drift in es: 5 pinned pairs re-asked" in " ".join((out + err).split())
    # The cached answers stay the pinned reference: the win rate is the first judge's.
    assert metrics["win_rate"] == pytest.approx(first_metrics["win_rate"])
    calls = json.loads(metrics_path.with_name("judge_calls.json").read_text())
    assert calls["calls"] == N_ITEMS + 5 + 5 and calls["invocations"] == 3

    results = tmp_path / "results"
    add_row(results, "base", {"es": (50.0, 50.0)})
    row = add_row(results, "new", {"es": (50.0, 50.0)})
    row_metrics = json.loads((row / "es" / "metrics.json").read_text())
    (row / "es" / "metrics.json").write_text(json.dumps({**row_metrics, "judge_drift": drift}))
    code, out, err = run_cli(["check", "new", "--against", "base", "--results-dir", results], capsys)
    assert code == 0, out + err
    code, out, err = run_cli(["check", "new", "--against", "base", "--results-dir", results, "--fail-on-drift"],
                             capsys)
    assert code == 1 and "judge drift in es" in out, out + err


def test_two_outputs_files_of_one_folder_get_two_evaluations(tmp_path, api_key, capsys):
    data_dir, outputs = write_user_files(tmp_path)
    mine = tmp_path / "mine"
    mine.mkdir()
    good = json.loads((outputs / "es" / "model_outputs.json").read_text())
    (mine / "es.json").write_text(json.dumps(good))
    (mine / "es_other.json").write_text(json.dumps([{**r, "output": r["output"] + " extra"} for r in good]))
    with FakeOpenAIServer() as server:
        assert evaluate(mine / "es.json", data_dir, server, capsys, "--langs", "es")[0] == 0
        assert evaluate(mine / "es_other.json", data_dir, server, capsys, "--langs", "es")[0] == 0
        first = json.loads((mine / JUDGE / "es" / "annotations.json").read_text())
        second = json.loads((mine / JUDGE / "es_other" / "annotations.json").read_text())
        assert first[0]["output_2"] != second[0]["output_2"]
        # One -o folder for two files of one language: the second is refused, naming the first's evaluation.
        out = tmp_path / "judged"
        assert evaluate(mine / "es.json", data_dir, server, capsys, "--langs", "es", "-o", out)[0] == 0
        code, _, err = evaluate(mine / "es_other.json", data_dir, server, capsys, "--langs", "es", "-o", out)
    assert code == 2 and f"{out / 'es' / 'annotations.json'}: was started with other options" in err
    assert "es.json" in err and "es_other.json" in err


def test_a_judge_without_any_usable_preference_leaves_no_annotations(tmp_path, api_key, capsys):
    data_dir, outputs = write_user_files(tmp_path)
    with FakeOpenAIServer(logprobs={"x": -0.1, "y": -3.0}) as server:  # names neither output
        code, _, err = evaluate(outputs, data_dir, server, capsys)
    folder = outputs / "es" / JUDGE
    assert code == 2 and "gave no usable preference" in err, err
    assert not (folder / "annotations.json").exists() and not (folder / "metrics.json").exists()
    assert json.loads((folder / "judge_calls.json").read_text())["calls"] == N_ITEMS  # what it cost is kept


def test_ctrl_c_during_evaluate_says_how_to_resume(tmp_path, api_key, capsys, monkeypatch):
    from harness.evaluation import judging

    data_dir, outputs = write_user_files(tmp_path)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(judging, "_judge", interrupted)
    with FakeOpenAIServer() as server:
        code, _, err = evaluate(outputs, data_dir, server, capsys)
    assert code == 130 and "Aborted." in err and "rerun the same command to resume" in err, err


def test_a_later_evaluation_re_asks_the_pinned_pairs_of_an_earlier_one(tmp_path, api_key):
    """The run's way: iteration t re-asks pairs of pi_0's evaluation (another folder, other outputs)."""
    from test_judge_faults import marked_pairs

    from harness.evaluation.judging import evaluate_outputs
    from harness.judges.loading import load_judge

    model, refs = marked_pairs()
    later = [{**m, "output": m["output"] + " (pi_1)"} for m in model]
    with FakeOpenAIServer(p_good=0.9) as first:
        judge = load_judge(JUDGE, base_url=first.base_url, retry_backoff_s=0.05)
        evaluate_outputs(model, refs, judge, tmp_path / "iter_0", progress=False, drift_check=4)
    pinned_cache = (tmp_path / "iter_0" / "judge_cache.jsonl").read_text()
    with FakeOpenAIServer(p_good=0.2) as changed:
        judge = load_judge(JUDGE, base_url=changed.base_url, retry_backoff_s=0.05)
        metrics = evaluate_outputs(later, refs, judge, tmp_path / "iter_1", progress=False, drift_check=4,
                                   drift_source=tmp_path / "iter_0")
        assert changed.hits == N_ITEMS + 4
    drift = metrics["judge_drift"]
    assert (drift["n_checked"], drift["agreement"], drift["is_drift"]) == (4, 0.0, True)
    assert drift["mean_abs_preference_difference"] == pytest.approx(0.7, abs=1e-6)
    assert (tmp_path / "iter_0" / "judge_cache.jsonl").read_text() == pinned_cache  # the pinned answers stay
