"""``xlpref leaderboard | compare | check | plot``: the results tree as tables, gates and charts.

Example::

    xlpref leaderboard --results-dir results --langs en,es,de,fr,ru --metric lc
    xlpref leaderboard --html results/site       # the static site: open results/site/index.html
    xlpref compare paper-icr-iter0 paper-icr-iter2
    xlpref check demo-iter1 --against demo-iter0 --tolerance 1.0 --metric lc   # exit 0 pass, 1 regressed
    xlpref check demo-iter1 --against demo-iter0 --max-language-drop 5         # also gate answer language
    xlpref plot --run paper-icr -o results/plots
"""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from harness.commands import global_seed

RESULTS_DIR = Path("results")

results_dir_option = click.option("--results-dir", type=click.Path(path_type=Path), default=RESULTS_DIR,
                                  show_default=True, help="The results tree (see harness/results/rows.py).")


@click.command()
@results_dir_option
@click.option("--langs", default=None, help="Comma-separated languages (default: those of our rows).")
@click.option("--metric", type=click.Choice(["lc", "wr"]), default="lc", show_default=True,
              help="Ranking metric: length-controlled win rate or win rate.")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path), default=None,
              help="Where to write the CSV (default: RESULTS_DIR/leaderboard.csv, for the full view only: "
                   "a view filtered by --langs, --no-published or --metric wr is written only with --csv).")
@click.option("--include-published/--no-published", default=True, show_default=True,
              help="Show the paper's published rows (in their own tables).")
@click.option("--width", type=int, default=None, help="Table width in characters (default: the terminal's).")
@click.option("--html", "html_dir", type=click.Path(path_type=Path), default=None,
              help="Also write the static site (index.html, one page per row, plots) to this folder, "
                   "e.g. results/site; it always shows every row.")
def leaderboard(results_dir: Path, langs: str | None, metric: str, csv_path: Path | None,
                include_published: bool, width: int | None, html_dir: Path | None) -> None:
    """Regenerate RESULTS_DIR/leaderboard.csv from the stored rows and print one table per judge."""
    from harness.results.leaderboard import leaderboard_frame, leaderboard_layouts, write_leaderboard_csv
    from harness.results.rows import judge_agreements, read_rows
    from harness.results.terminal import TableOutput
    from xlpref.errors import InputError
    from xlpref.languages import parse_languages

    rows = read_rows(results_dir, include_published=include_published)
    if not rows:
        raise InputError("no rows; expected row folders with row.json (see results/README.md)", path=results_dir)
    agreements = judge_agreements(rows)
    frame = leaderboard_frame(rows, langs=parse_languages(langs) if langs else None, metric=metric,
                              agreements=agreements)
    # The canonical CSV is the full view; a filtered view never overwrites it.
    is_full_view = langs is None and include_published and metric == "lc"
    csv_path = csv_path or (results_dir / "leaderboard.csv" if is_full_view else None)
    if csv_path is not None:
        write_leaderboard_csv(frame, csv_path)
    out = TableOutput(width)
    for table, narrow in leaderboard_layouts(frame, metric=metric):
        out.print(table, narrow)
        out.console.print()
    if html_dir is not None:
        from harness.results.site import build_site

        Console(stderr=True).print(f"wrote {build_site(results_dir, html_dir)}")
    Console(stderr=True).print(f"wrote {csv_path} ({len(frame)} rows)" if csv_path is not None else
                               f"a filtered view: {results_dir / 'leaderboard.csv'} left as it is "
                               "(--csv PATH writes this view)")


def export_options(command):
    """``--json/--csv/--markdown PATH`` ('-' for stdout, which then carries only that format)."""
    for name, what in (("markdown", "Markdown (a pull-request comment)"), ("csv", "CSV"), ("json", "JSON")):
        command = click.option(f"--{name}", f"{name}_path", type=click.Path(path_type=Path, allow_dash=True),
                               default=None, help=f"Also write the result as {what} to PATH ('-': stdout).")(command)
    return command


def _write_exports(paths: dict, builders: dict) -> bool:
    """Write each requested format; True when one went to stdout (then no terminal table is printed)."""
    from harness.results.export import emit

    for name, path in paths.items():
        if path is not None:
            emit(path, builders[name]())
    return any(str(path) == "-" for path in paths.values() if path is not None)


@click.command()
@click.argument("row_a")
@click.argument("row_b")
@results_dir_option
@click.option("--langs", default=None, help="Comma-separated languages (default: those both rows have).")
@click.option("--n-boot", type=click.IntRange(min=100), default=2000, show_default=True,
              help="Bootstrap resamples.")
@click.option("--confidence", type=click.FloatRange(0.5, 0.999), default=0.95, show_default=True)
@click.option("--width", type=int, default=None, help="Table width in characters (default: the terminal's).")
@export_options
@click.pass_obj
def compare(obj, row_a: str, row_b: str, results_dir: Path, langs: str | None, n_boot: int,
            confidence: float, width: int | None, json_path: Path | None, csv_path: Path | None,
            markdown_path: Path | None) -> None:
    """Per-language B minus A: WR delta with paired bootstrap interval (significant ones marked), LC delta.

    ROW_A and ROW_B are row ids (in RESULTS_DIR or RESULTS_DIR/published) or row folders.
    """
    from harness.results import export
    from harness.results.comparison import compare_language, compare_rows, render_comparison, render_language_comparison
    from harness.results.rows import resolve_row
    from harness.results.terminal import TableOutput
    from xlpref.languages import parse_languages

    a, b = resolve_row(row_a, results_dir), resolve_row(row_b, results_dir)
    frame = compare_rows(a, b, langs=parse_languages(langs) if langs else None, n_boot=n_boot,
                         seed=global_seed(obj), confidence=confidence)
    language = compare_language(a, b, langs=parse_languages(langs) if langs else None)
    to_stdout = _write_exports(
        {"json": json_path, "csv": csv_path, "markdown": markdown_path},
        {"json": lambda: export.comparison_json(frame, language), "csv": lambda: export.comparison_csv(frame, language),
         "markdown": lambda: export.comparison_markdown(frame, language)})
    if to_stdout:
        return
    out = TableOutput(width)
    out.print(render_comparison(frame))
    if not language.empty:
        out.print(render_language_comparison(language))


@click.command()
@click.argument("run_row")
@click.option("--against", "baseline", required=True, help="Baseline row id or folder.")
@results_dir_option
@click.option("--tolerance", type=float, default=1.0, show_default=True,
              help="Allowed drop in points before a language fails.")
@click.option("--metric", type=click.Choice(["lc", "wr"]), default="lc", show_default=True)
@click.option("--langs", default=None, help="Languages to gate on (default: the baseline's).")
@click.option("--fail-on-significant", is_flag=True,
              help="Also fail a language whose WR is significantly lower (paired bootstrap).")
@click.option("--n-boot", type=click.IntRange(min=100), default=2000, show_default=True)
@click.option("--max-language-drop", type=float, default=None, metavar="POINTS",
              help="Also fail a language whose in-language rate falls, or mixed rate rises, by more than POINTS.")
@click.option("--fail-on-drift", is_flag=True,
              help="Also fail when RUN_ROW's evaluation found judge drift (evaluation.drift_check).")
@click.option("--width", type=int, default=None, help="Table width in characters (default: the terminal's).")
@export_options
@click.pass_obj
def check(obj, run_row: str, baseline: str, results_dir: Path, tolerance: float, metric: str, langs: str | None,
          fail_on_significant: bool, n_boot: int, max_language_drop: float | None, fail_on_drift: bool,
          width: int | None, json_path: Path | None, csv_path: Path | None, markdown_path: Path | None) -> None:
    """Regression gate: exit 0 when RUN_ROW holds up against the baseline, 1 when it regressed, 2 on bad input."""
    from harness.evaluation.drift import row_drift_messages
    from harness.results import export
    from harness.results.comparison import check_regression, render_check, render_language_check
    from harness.results.rows import resolve_row
    from harness.results.terminal import TableOutput
    from xlpref.languages import parse_languages

    row = resolve_row(run_row, results_dir)
    result = check_regression(row, resolve_row(baseline, results_dir),
                              tolerance=tolerance, metric=metric, langs=parse_languages(langs) if langs else None,
                              fail_on_significant=fail_on_significant, n_boot=n_boot, seed=global_seed(obj),
                              max_language_drop=max_language_drop)
    to_stdout = _write_exports({"json": json_path, "csv": csv_path, "markdown": markdown_path},
                               {"json": lambda: export.check_json(result), "csv": lambda: export.check_csv(result),
                                "markdown": lambda: export.check_markdown(result)})
    drift = row_drift_messages(row.metrics) if fail_on_drift else []
    if not to_stdout:
        out = TableOutput(width)
        out.print(render_check(result))
        if result.language_table is not None:
            out.print(render_language_check(result.language_table))
        for failure in result.failures:
            out.console.print(f"[red]regressed[/] {failure}")
    for message in drift:  # on stderr when stdout carries an export
        click.echo(f"failed: {message}", err=to_stdout)
    if not result.passed or drift:
        # SystemExit, not ctx.exit: harness.cli.main runs click with standalone_mode=False, which turns
        # ctx.exit(1) into a return value and would lose the exit code.
        raise SystemExit(1)


@click.command()
@results_dir_option
@click.option("--run", "run_name", default=None, help="Plot only this run (default: every run).")
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Folder for the PNGs (default: RESULTS_DIR/plots).")
@click.option("--include-published/--no-published", default=True, show_default=True)
def plot(results_dir: Path, run_name: str | None, out_dir: Path | None, include_published: bool) -> None:
    """PNG charts of WR and LC per language by iteration, one per run (and judge)."""
    from harness.results.plots import plot_by_iteration
    from harness.results.rows import read_rows

    rows = read_rows(results_dir, include_published=include_published)
    for path in plot_by_iteration(rows, out_dir or results_dir / "plots", run=run_name):
        click.echo(str(path))


@click.command()
@click.argument("row_ids", nargs=-1, required=True)
@results_dir_option
@click.option("--instruction-difficulty", type=click.Path(path_type=Path), default=None,
              help="CSV index,instruction_difficulty, for rows whose LC used a difficulty table.")
def remetrics(row_ids: tuple[str, ...], results_dir: Path, instruction_difficulty: Path | None) -> None:
    """Rewrite each row's <lang>/metrics.json from its annotations.json (then run `xlpref leaderboard`)."""
    from harness.results.remetrics import recompute_row_metrics
    from harness.results.rows import resolve_row

    console = Console(stderr=True)
    for row_id in row_ids:
        row = resolve_row(row_id, results_dir)
        written = recompute_row_metrics(row.path, instruction_difficulty=instruction_difficulty)
        console.print(f"{row.row_id}: rewrote {len(written)} metrics.json")
