"""Per-iteration evaluation metrics sent to the experiment tracker that training reports to.

``training.report_to`` in a run config names the trackers: transformers reports each training's
losses to them (TensorBoard event files land in ``RUN/iter_{t}/model/runs/``), and the loop sends
each iteration's X-AlpacaEval metrics here, one point per iteration and language:
``eval/{metric}/{lang}`` and ``eval/{metric}/mean`` (mean over the run's languages).

- ``tensorboard``: event files under ``RUN/tracker/`` (``tensorboard --logdir RUN`` shows both);
- ``wandb``: one W&B run per xlpref run (id ``xlpref-<run name>``, resumed at every iteration), the
  iteration as the x axis. Not installed here, so untested;
- other transformers trackers get the training losses only.

Example::

    from harness.trackers import log_iteration_metrics
    log_iteration_metrics(["tensorboard"], "/tmp/run", 0, {"en": {"win_rate": 12.5, "n_total": 805}})
    # tensorboard --logdir /tmp/run/tracker
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)

#: The metrics.json columns sent to the tracker (AlpacaEval's names).
ITERATION_METRICS = ("win_rate", "standard_error", "length_controlled_winrate", "lc_standard_error",
                     "avg_length", "n_total")
TRACKER_DIR = "tracker"


def iteration_scalars(metrics_by_lang: Mapping[str, Mapping]) -> dict[str, float]:
    """``{'eval/{metric}/{lang}': value}`` for the numeric metrics, and their mean over languages."""
    scalars: dict[str, float] = {}
    for metric in ITERATION_METRICS:
        values = {lang: m.get(metric) for lang, m in metrics_by_lang.items()}
        values = {lang: float(v) for lang, v in values.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        scalars.update({f"eval/{metric}/{lang}": v for lang, v in sorted(values.items())})
        if values and len(values) == len(metrics_by_lang):  # a mean over some languages would mislead
            scalars[f"eval/{metric}/mean"] = sum(values.values()) / len(values)
    return scalars


def log_iteration_metrics(report_to: list[str], run_dir: str | Path, iteration: int,
                          metrics_by_lang: Mapping[str, Mapping], *, run_name: str | None = None) -> dict[str, float]:
    """Send one iteration's metrics to the chosen trackers; returns the scalars sent.

    Raises:
        InputError: a tracker transformers does not know, or one that is not installed.
    """
    from xlpref.training import check_trackers

    if not report_to:
        return {}
    check_trackers(report_to)
    scalars = iteration_scalars(metrics_by_lang)
    run_dir = Path(run_dir)
    if "tensorboard" in report_to:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(log_dir=str(run_dir / TRACKER_DIR)) as writer:
            for tag, value in scalars.items():
                writer.add_scalar(tag, value, global_step=iteration)
    if "wandb" in report_to:
        _log_wandb(run_dir, run_name or run_dir.name, iteration, scalars)
    others = sorted(set(report_to) - {"tensorboard", "wandb"})
    if others:
        log.info("trackers %s get the training losses only (iteration metrics go to tensorboard and wandb)", others)
    return scalars


def _log_wandb(run_dir: Path, run_name: str, iteration: int, scalars: dict[str, float]) -> None:
    """One W&B run per xlpref run, resumed at each iteration (W&B's own settings apply: WANDB_PROJECT, WANDB_MODE)."""
    import wandb

    (run_dir / TRACKER_DIR).mkdir(parents=True, exist_ok=True)
    run = wandb.init(id=f"xlpref-{run_name}", name=run_name, resume="allow", dir=str(run_dir / TRACKER_DIR))
    try:
        run.define_metric("iteration")
        run.define_metric("eval/*", step_metric="iteration")
        run.log({"iteration": iteration, **scalars})
    finally:
        run.finish()
