"""Trackers: ``report_to`` reaches trl's training, per-iteration metrics reach the same tracker.

Budget: under 15 s (one tiny training). Event files are read back with TensorBoard's own reader
(``EventAccumulator``), not with our code.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from harness.trackers import TRACKER_DIR, iteration_scalars, log_iteration_metrics
from xlpref.errors import InputError
from xlpref.training import TRACKER_LOGS, TrainConfig, train_dpo

has_tensorboard = importlib.util.find_spec("tensorboard") is not None
needs_tensorboard = pytest.mark.skipif(not has_tensorboard, reason="tensorboard is not installed")
PAIRS = [{"prompt": f"Name the number {i}.", "chosen": f"It is {i}.", "rejected": "No."} for i in range(8)]


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in the event files under ``folder`` (TensorBoard's reader)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    series: dict[str, list[tuple[int, float]]] = {}
    for run in sorted({path.parent for path in folder.rglob("events.out.tfevents.*")}):
        events = EventAccumulator(str(run))
        events.Reload()
        for tag in events.Tags()["scalars"]:
            series.setdefault(tag, []).extend((e.step, e.value) for e in events.Scalars(tag))
    return series


def test_iteration_scalars_skip_missing_values():
    metrics = {"en": {"win_rate": 20.0, "length_controlled_winrate": None, "n_total": 6, "annotator": "x"},
               "es": {"win_rate": 30.0, "length_controlled_winrate": 25.0, "n_total": 6}}
    assert iteration_scalars(metrics) == {
        "eval/win_rate/en": 20.0, "eval/win_rate/es": 30.0, "eval/win_rate/mean": 25.0,
        "eval/length_controlled_winrate/es": 25.0,  # no mean: en has none
        "eval/n_total/en": 6.0, "eval/n_total/es": 6.0, "eval/n_total/mean": 6.0}


@needs_tensorboard
def test_iteration_metrics_reach_tensorboard(tmp_path):
    for iteration, rate in [(0, 12.5), (1, 20.0)]:
        log_iteration_metrics(["tensorboard"], tmp_path, iteration,
                              {"en": {"win_rate": rate, "standard_error": 1.5}, "es": {"win_rate": 2 * rate}})
    scalars = read_scalars(tmp_path / TRACKER_DIR)
    assert scalars["eval/win_rate/en"] == [(0, 12.5), (1, 20.0)]
    assert scalars["eval/win_rate/mean"] == [(0, pytest.approx(18.75)), (1, pytest.approx(30.0))]
    assert scalars["eval/standard_error/en"] == [(0, 1.5), (1, 1.5)] and "eval/standard_error/mean" not in scalars


@needs_tensorboard
def test_training_reports_to_tensorboard(tmp_path):
    config = TrainConfig(report_to=["tensorboard"], learning_rate=1e-3, batch_size=2, max_length=64)
    result = train_dpo("tiny-random-llama", PAIRS, tmp_path / "model", config, progress=False)
    scalars = read_scalars(tmp_path / "model" / TRACKER_LOGS)  # kept inside the saved model folder
    history = result.metrics["loss_history"]
    assert [step for step, _ in scalars["train/loss"]] == [row["step"] for row in history] == [1, 2, 3, 4]
    assert [value for _, value in scalars["train/loss"]] == pytest.approx([row["loss"] for row in history], rel=1e-6)


def test_unknown_or_missing_tracker_is_refused(tmp_path):
    with pytest.raises(InputError, match="unknown tracker 'tensorbord'") as info:
        TrainConfig(report_to=["tensorbord"]).validate()
    assert info.value.field == "report_to"
    with pytest.raises(InputError, match="unknown tracker"):
        log_iteration_metrics(["tensorbord"], tmp_path, 0, {"en": {"win_rate": 1.0}})
    if importlib.util.find_spec("wandb") is None:  # the case of this machine: wandb is not installed
        with pytest.raises(InputError, match="'wandb' is not available"):
            TrainConfig(report_to=["wandb"]).validate()
