"""``xlpref compare-baselines``: run ICR and its baselines on the same data and seeds, print one leaderboard.

Each config runs (or resumes) through :func:`harness.loop.run_icr`; then the final iteration of
every run, the paper's published ICR and LIDR rows, and per baseline the paired bootstrap deltas
ICR minus baseline per language are printed and written to ``RESULTS/comparisons/<name>/``
(``leaderboard.csv``, ``icr-vs-<baseline row>.csv``, ``comparison.json``). ``--no-run`` only reads the
finished runs (regenerates the comparison from stored results).

Example::

    xlpref compare-baselines --icr configs/demo.yaml --baseline configs/baselines/lidr.yaml \\
        --baseline configs/baselines/english-only.yaml --iterations 1
"""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console


@click.command()
@click.option("--icr", "icr_path", required=True, type=click.Path(path_type=Path), help="The ICR run config.")
@click.option("--baseline", "baseline_paths", required=True, multiple=True, type=click.Path(path_type=Path),
              help="A baseline run config (repeatable), e.g. configs/baselines/lidr.yaml.")
@click.option("--iterations", type=click.IntRange(min=0), default=None, help="Override every config's iterations.")
@click.option("--results-dir", type=click.Path(path_type=Path), default=Path("results"), show_default=True,
              help="Published rows are read from here; the comparison goes to RESULTS/comparisons/<name>/.")
@click.option("--name", default=None, help="Comparison folder name (default: <icr run>-vs-baselines).")
@click.option("--metric", type=click.Choice(["lc", "wr"]), default="lc", show_default=True, help="Ranking metric.")
@click.option("--n-boot", type=click.IntRange(min=100), default=None,
              help="Bootstrap replicates (default: the ICR config's evaluation.n_bootstrap).")
@click.option("--no-published", is_flag=True, help="Leave the paper's published rows out.")
@click.option("--no-run", is_flag=True, help="Do not run; compare the runs' stored final iterations.")
@click.pass_obj
def compare_baselines(obj, icr_path: Path, baseline_paths: tuple[Path, ...], iterations: int | None,
                      results_dir: Path, name: str | None, metric: str, n_boot: int | None, no_published: bool,
                      no_run: bool) -> None:
    """Run ICR and each baseline with the same data and seeds; print one leaderboard and ICR's deltas."""
    from harness import baselines
    from harness.config import load_config
    from harness.results.comparison import render_comparison
    from harness.results.leaderboard import leaderboard_layouts
    from harness.results.rows import check_row_id
    from harness.store import safe_join

    paths = [icr_path, *baseline_paths]
    configs = [load_config(path) for path in paths]
    baselines.check_same_setup(configs[0], configs[1:], paths=paths, iterations=iterations)
    name = check_row_id(name or f"{configs[0].name}-vs-baselines")
    published = [] if no_published else baselines.published_baseline_rows(results_dir)
    final = configs[0].iterations if iterations is None else iterations
    log = Console(stderr=True)
    if not no_run:
        from harness.loop import run_icr

        for path, config in zip(paths, configs):
            log.rule(f"[bold]{config.name} ({path})")
            run_icr(config, iterations=final, console=log)
    rows = [baselines.final_row(config, final) for config in configs]
    result = baselines.compare_baselines(rows[0], rows[1:], published=published, langs=configs[0].languages,
                                         metric=metric, n_boot=n_boot or configs[0].evaluation.n_bootstrap,
                                         seed=configs[0].seed)
    setup = {"configs": [str(p) for p in paths], "iterations": final, "metric": metric}
    written = baselines.write_comparison(result, safe_join(results_dir, "comparisons", name), setup=setup)
    from harness.results.terminal import TableOutput

    out = TableOutput()  # a terminal: tables fitted to it; a log: each table at its own width, nothing cut
    for table, narrow in leaderboard_layouts(result.leaderboard, metric=metric):
        out.print(table, narrow)
    for frame in result.comparisons.values():
        out.print(render_comparison(frame))
    out.print("wrote " + ", ".join(str(p) for p in written))
