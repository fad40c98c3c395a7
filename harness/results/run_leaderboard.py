"""The run's own leaderboard: iterations x languages (LC and WR), and deltas against iteration 0.

Built only from the run's stored rows (``RUN/results/<run>-iter<t>``), so it is regenerated, never
edited. Deltas carry paired bootstrap intervals over the instructions both iterations answered.

Example::

    from harness.results.run_leaderboard import run_leaderboard
    for table in run_leaderboard(ctx):  # ctx from harness.loop.run_icr
        console.print(table)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from harness.results.comparison import compare_language, compare_rows, render_comparison, render_language_comparison
from harness.results.leaderboard import leaderboard_frame, render_leaderboard, write_leaderboard_csv
from harness.results.rows import read_rows


def run_leaderboard(ctx: Any) -> list[Table]:
    """Tables for a finished run; also writes RUN/leaderboard.csv and RUN/deltas.csv.

    With ``evaluation.results_dir`` set, both files and the run's ``stages.json`` are copied to
    ``RESULTS/<run>-run/`` beside the rows, so the committed results are what the run wrote, and the
    static site ``RESULTS/site/`` is rebuilt from every row there (harness/results/site.py).
    """
    rows = sorted(read_rows(ctx.store.path("results"), include_published=False), key=lambda r: r.iteration)
    if not rows:
        return []
    langs = list(ctx.config.languages)
    frame = leaderboard_frame(rows, langs=langs, metric="lc")
    write_leaderboard_csv(frame, ctx.store.path("leaderboard.csv"))
    tables = render_leaderboard(frame, metric="lc")
    base = rows[0]
    deltas = []
    for row in rows[1:]:
        comparison = compare_rows(base, row, langs=langs, n_boot=ctx.config.evaluation.n_bootstrap,
                                  seed=ctx.config.seed)
        deltas.append(comparison.assign(row_a=base.row_id, row_b=row.row_id))
        tables.append(render_comparison(comparison))
        language = compare_language(base, row, langs=langs)
        if not language.empty:
            tables.append(render_language_comparison(language))
    if deltas:
        import pandas as pd

        from xlpref.jsonio import write_text_atomic

        write_text_atomic(ctx.store.path("deltas.csv"), pd.concat(deltas).to_csv(index=False))
    if ctx.config.evaluation.results_dir:
        publish_run_files(ctx)
        from harness.results.site import build_site

        build_site(ctx.config.evaluation.results_dir, Path(ctx.config.evaluation.results_dir) / "site")
    return tables


def publish_run_files(ctx: Any) -> Path:
    """Copy the run's leaderboard.csv, deltas.csv and stages.json to ``RESULTS/<run>-run/`` (atomically)."""
    from harness.store import safe_join
    from xlpref.jsonio import write_text_atomic

    out = safe_join(ctx.config.evaluation.results_dir, f"{ctx.config.name}-run")
    out.mkdir(parents=True, exist_ok=True)
    for name in ("leaderboard.csv", "deltas.csv", "stages.json"):
        source = Path(ctx.store.path(name))
        if source.is_file():
            write_text_atomic(out / name, source.read_text(encoding="utf-8"))
    return out
