"""PNG charts of WR and LC per language by iteration, one chart per run and metric.

Only rows with a run and an iteration are plotted. A run whose rows come from more than one judge
(annotator, reference) gets one chart per judge: lines from different judges never share axes.
Error bars are the stored standard errors where they exist (published rows have none).

Example::

    from harness.results.plots import plot_by_iteration
    from harness.results.rows import read_rows
    paths = plot_by_iteration(read_rows("results"), "results/plots", run="paper-icr")
    # -> results/plots/paper-icr.wr.png, results/plots/paper-icr.lc.png
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from harness.results.leaderboard import METRIC_COLUMNS, METRIC_NAMES, canonical_order
from harness.results.rows import Row
from xlpref.errors import InputError
from xlpref.jsonio import atomic_open


def iteration_series(rows: Sequence[Row], metric: str) -> dict[str, list[tuple[int, float, float | None]]]:
    """{lang: [(iteration, value, standard error or None), ...]} sorted by iteration (the plotted data)."""
    value_key, se_key = METRIC_COLUMNS[metric]
    series: dict[str, list] = defaultdict(list)
    for row in sorted(rows, key=lambda r: r.iteration):
        for lang, metrics in row.metrics.items():
            if metrics.get(value_key) is not None:
                series[lang].append((row.iteration, float(metrics[value_key]), metrics.get(se_key)))
    return {lang: series[lang] for lang in canonical_order(series)}


def average_series(rows: Sequence[Row], metric: str) -> list[tuple[int, float]]:
    """[(iteration, mean over the run's languages)] for the iterations that have every one of them."""
    series = iteration_series(rows, metric)
    by_iteration: dict[int, list[float]] = defaultdict(list)
    for points in series.values():
        for iteration, value, _ in points:
            by_iteration[iteration].append(value)
    return [(t, sum(v) / len(v)) for t, v in sorted(by_iteration.items()) if len(v) == len(series) and len(series) > 1]


def _runs(rows: Sequence[Row], run: str | None) -> dict[tuple[str, tuple[str, str]], list[Row]]:
    grouped: dict[tuple[str, tuple[str, str]], list[Row]] = defaultdict(list)
    for row in rows:
        if row.run is not None and row.iteration is not None and (run is None or row.run == run):
            grouped[(row.run, row.judge)].append(row)
    return dict(sorted(grouped.items()))


def _file_name_part(text: str) -> str:
    """``text`` (a judge's name) in a file name: case, digits, '.', '_' and '-' kept, other runs -> '-'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


def plot_by_iteration(rows: Sequence[Row], out_dir: str | Path, *, run: str | None = None) -> list[Path]:
    """Write ``<run>.wr.png`` and ``<run>.lc.png`` (plus ``.<judge>`` when a run has several judges)."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    grouped = _runs(rows, run)
    if not grouped:
        known = sorted({r.run for r in rows if r.run is not None and r.iteration is not None})
        raise InputError(f"no rows with iterations for run {run!r}; expected one of {known}" if run else
                         "no rows with a run and an iteration to plot")
    judges_per_run: dict[str, int] = defaultdict(int)
    for run_name, _ in grouped:
        judges_per_run[run_name] += 1
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for (run_name, (annotator, reference)), run_rows in grouped.items():
        stem = run_name + (f".{_file_name_part(annotator)}" if judges_per_run[run_name] > 1 else "")
        for metric in ("wr", "lc"):
            series = iteration_series(run_rows, metric)
            if not series:
                continue  # e.g. published WR-only rows have no LC to draw
            figure, axes = plt.subplots(figsize=(7, 4.5), dpi=100)
            for lang, points in series.items():
                xs, ys, errors = zip(*points)
                has_errors = all(e is not None for e in errors)
                axes.errorbar(xs, ys, yerr=errors if has_errors else None, marker="o", capsize=3, label=lang)
            averages = average_series(run_rows, metric)
            if len(averages) > 0:
                axes.plot(*zip(*averages), linestyle="--", color="black", marker="s", label="average")
            iterations = sorted({r.iteration for r in run_rows})
            axes.set_xticks(iterations)
            axes.set_xlabel("iteration")
            axes.set_ylabel("length-controlled win rate (%)" if metric == "lc" else "win rate (%)")
            axes.set_title(f"{run_name}: {METRIC_NAMES[metric]} by iteration", fontsize=11)
            figure.text(0.01, 0.01, f"annotator: {annotator} | reference: {reference}", fontsize=7, color="0.3")
            axes.grid(alpha=0.3)
            axes.legend(title="language", fontsize=8)
            figure.tight_layout(rect=(0, 0.03, 1, 1))
            path = out_dir / f"{stem}.{metric}.png"
            with atomic_open(path, "wb") as handle:
                figure.savefig(handle, format="png", metadata={"Software": None})
            plt.close(figure)
            written.append(path)
    return written
