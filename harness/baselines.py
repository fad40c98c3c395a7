"""ICR against its baselines: the same setup checked, one leaderboard, paired bootstrap deltas per baseline.

A comparison is only fair when the runs differ in their method alone, so :func:`check_same_setup`
refuses configs that differ in languages, data, seed, starting models, iterations or evaluation
(judge, its options, decoding). The final iteration's row of each run goes into one leaderboard
beside the paper's published ICR and LIDR rows (Table 2; their own table, labelled published, never
ranked with ours), and each baseline is compared with ICR by
:func:`harness.results.comparison.compare_rows` (A = the baseline, B = ICR: a positive delta means ICR is
better), with paired bootstrap intervals over the instructions both runs answered.

Example::

    from harness.baselines import compare_baselines, published_baseline_rows
    from harness.results.rows import resolve_row
    icr = resolve_row("demo-iter1")
    result = compare_baselines(icr, [resolve_row("demo-lidr-iter1")], published=published_baseline_rows("results"))
    print(result.comparisons["demo-lidr-iter1"])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from harness.results.comparison import compare_rows
from harness.config import RunConfig
from harness.results.leaderboard import leaderboard_frame, write_leaderboard_csv
from harness.results.rows import Row, read_row, read_rows
from xlpref.errors import InputError
from xlpref.jsonio import write_json_atomic

#: The published runs shown beside ours (harness/results/published_rows.py names them).
PUBLISHED_RUNS = ("paper-icr", "paper-lidr")
#: What must agree between ICR and a baseline: (label, how to read it from a config).
SETUP_FIELDS = (
    ("languages", lambda c: c.languages),
    ("seed", lambda c: c.seed),
    ("iterations", lambda c: c.iterations),
    ("data", lambda c: c.data.model_dump(mode="json")),
    ("models.policy", lambda c: c.models.policy),
    ("models.reference", lambda c: c.models.reference),
    ("evaluation", lambda c: c.evaluation.model_dump(mode="json", include={
        "is_enabled", "judge", "judge_options", "backend", "temperature", "top_p", "max_new_tokens"})),
)


def check_same_setup(icr: RunConfig, baselines: Sequence[RunConfig], *, paths: Sequence[Any] | None = None,
                     iterations: int | None = None) -> None:
    """Refuse baselines whose setup differs from ICR's in anything but the method.

    Args:
        paths: the config files (``paths[0]`` ICR's), named in errors.
        iterations: an override for every run; then the configs' own iterations need not agree.
    Raises:
        InputError: no baseline, a shared run name or directory, evaluation off, or a differing field.
    """
    configs = [icr, *baselines]
    paths = list(paths) if paths is not None else [None] * len(configs)
    if not baselines:
        raise InputError("no baseline given; expected at least one --baseline config")
    if not icr.evaluation.is_enabled:
        raise InputError("evaluation is off; expected evaluation.is_enabled: true to compare runs", path=paths[0],
                         field="evaluation.is_enabled")
    for index, config in enumerate(configs):
        for other in configs[:index]:
            if config.name == other.name or config.run_dir == other.run_dir:
                raise InputError(f"run {config.name!r} ({config.run_dir}) shares its name or run directory with "
                                 f"{other.name!r}; expected one run per config", path=paths[index], field="name")
    for path, config in zip(paths[1:], baselines):
        for name, read in SETUP_FIELDS:
            if name == "iterations" and iterations is not None:
                continue
            if read(config) != read(icr):
                raise InputError(f"{name} is {read(config)!r} but the ICR config has {read(icr)!r}; expected the "
                                 "same setup so that only the method differs", path=path, field=name)


def final_row(config: RunConfig, iterations: int) -> Row:
    """The run's row of its final evaluation (``RUN/results/<name>-iter<iterations>``)."""
    folder = Path(config.run_dir) / "results" / f"{config.name}-iter{iterations}"
    if not (folder / "row.json").exists():
        raise InputError(f"run {config.name!r} has no evaluated iteration {iterations}; expected the run to have "
                         "finished (run without --no-run)", path=folder)
    return read_row(folder)


def published_baseline_rows(results_dir: str | Path, runs: Sequence[str] = PUBLISHED_RUNS) -> list[Row]:
    """The paper's published rows of ``runs`` (ICR's iterations and LIDR) under ``results_dir/published``."""
    return [row for row in read_rows(results_dir) if row.is_published and row.run in runs]


@dataclass
class BaselineComparison:
    """One leaderboard over all rows, and per baseline row id the per-language deltas ICR minus baseline."""

    icr: str
    baselines: list[str]
    leaderboard: pd.DataFrame
    comparisons: dict[str, pd.DataFrame]
    published: list[str]


def compare_baselines(icr: Row, baselines: Sequence[Row], *, published: Sequence[Row] = (),
                      langs: Sequence[str] | None = None, metric: str = "lc", n_boot: int = 2000,
                      seed: int = 0) -> BaselineComparison:
    """The leaderboard of ICR, its baselines and ``published`` rows, and ICR vs each baseline.

    Raises:
        InputError: a baseline judged differently from ICR (its deltas would measure the judges).
    """
    langs = list(langs) if langs is not None else list(icr.languages)
    frame = leaderboard_frame([icr, *baselines, *published], langs=langs, metric=metric)
    comparisons = {row.row_id: compare_rows(row, icr, langs=langs, n_boot=n_boot, seed=seed) for row in baselines}
    return BaselineComparison(icr.row_id, [row.row_id for row in baselines], frame, comparisons,
                              [row.row_id for row in published])


def _records(frame: pd.DataFrame) -> list[dict]:
    """Rows as JSON-ready dicts (NaN and <NA> -> null)."""
    def plain(value: Any) -> Any:
        if value is pd.NA or (isinstance(value, float) and math.isnan(value)):
            return None
        return value.item() if hasattr(value, "item") else value

    return [{key: plain(value) for key, value in record.items()} for record in frame.to_dict("records")]


def write_comparison(result: BaselineComparison, out_dir: str | Path, *, setup: dict | None = None) -> list[Path]:
    """``leaderboard.csv``, ``icr-vs-<baseline>.csv`` and ``comparison.json`` in ``out_dir``; same input, same bytes."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "leaderboard.csv"]
    write_leaderboard_csv(result.leaderboard, written[0])
    for baseline, frame in result.comparisons.items():
        path = out_dir / f"icr-vs-{baseline}.csv"
        write_leaderboard_csv(frame, path)
        written.append(path)
    summary = {
        "icr": result.icr, "baselines": result.baselines, "published": result.published,
        "delta": "ICR minus baseline (B = ICR, A = baseline), percentage points; WR with a paired bootstrap interval",
        "comparisons": {baseline: {"attrs": {k: v for k, v in frame.attrs.items()}, "rows": _records(frame)}
                        for baseline, frame in result.comparisons.items()},
        **({"setup": setup} if setup else {}),
    }
    written.append(out_dir / "comparison.json")
    write_json_atomic(written[-1], summary)
    return written
