"""``xlpref run CONFIG.yaml``: the ICR loop with X-AlpacaEval evaluation around every iteration.

Example::

    xlpref run configs/demo.yaml --iterations 1
"""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table


def stage_table(stages: dict[str, dict]) -> Table:
    """Time and tokens per finished stage, in the order they ran (from the run's stages.json)."""
    table = Table(title="Time and tokens per stage (this machine)")
    for name in ("stage", "seconds", "records", "tokens", "tokens/s"):
        table.add_column(name, justify="left" if name == "stage" else "right")
    total = 0.0
    for name, info in stages.items():
        seconds = float(info.get("seconds", 0.0))
        total += seconds
        tokens = info.get("tokens")
        records = info.get("records", info.get("pairs", info.get("items", "")))
        rate = f"{tokens / seconds:.1f}" if tokens and seconds else ""
        table.add_row(name, f"{seconds:.1f}", str(records), str(tokens or ""), rate)
    table.add_row("[bold]total", f"[bold]{total:.1f}", "", "", "")
    return table


@click.command()
@click.argument("config_path", type=click.Path(path_type=Path))
@click.option("--iterations", type=click.IntRange(min=0), default=None, help="Override the config's iterations.")
@click.option("--run-dir", "run_dir_opt", type=click.Path(path_type=Path), default=None,
              help="Override the run directory (default: the config's, else runs/<name>).")
@click.option("--dry-run", is_flag=True, help="Print the plan (stages, counts, judge cost, artifacts) and the "
              "pre-flight findings; start nothing.")
@click.pass_obj
def run(obj, config_path: Path, iterations: int | None, run_dir_opt: Path | None, dry_run: bool) -> None:
    """Run (or resume) the ICR loop described by CONFIG_PATH and print the run's leaderboard.

    Before any work, one pre-flight pass checks everything it can (judge key, models, writable folders,
    data files, GPUs) and refuses to start on any problem, naming all of them.
    """
    from harness.config import load_config
    from harness.loop import run_icr
    from harness.plan import plan, render_plan
    from harness.preflight import preflight, problems_line
    from harness.results.run_leaderboard import run_leaderboard
    from xlpref.errors import InputError
    from xlpref.runlock import hold_lock

    overrides = {}
    run_dir = run_dir_opt or (obj.run_dir if obj else None)
    if run_dir:
        overrides["run_dir"] = str(run_dir)
    config = load_config(config_path, overrides=overrides)
    findings = preflight(config)
    if dry_run:
        click.echo(render_plan(plan(config, iterations=iterations), findings))
        return
    if (problems := problems_line(findings)) is not None:
        raise InputError(problems, path=config_path)
    console = Console(stderr=True)
    from harness.results.terminal import TableOutput

    with hold_lock(config.run_dir, is_folder=True, what="run directory"):  # one writer per run directory
        ctx = run_icr(config, iterations=iterations, console=console)
        out = TableOutput()  # a terminal: tables fitted to it; a log: each table at its own width, nothing cut
        if config.evaluation.is_enabled:
            for table in run_leaderboard(ctx):
                out.print(table)
    out.print(stage_table(ctx.store.stages()))
    out.print(f"run directory: {ctx.store.root}")
