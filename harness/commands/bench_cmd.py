"""``xlpref bench``: the performance suite, each hot path against its naive baseline in one run.

Prints the summary table (section, ours, naive, ratio, target, met?) and the end-to-end stage
breakdown, and writes everything (with the machine's cores, CPU, torch version, load, date) as JSON.

Example::

    xlpref bench                                   # the full suite, about 10-15 minutes on 2 idle cores
    xlpref bench --quick --sections scoring,judging
    xlpref bench --model tiny-random-llama --quick --no-vllm -o /tmp/bench.json   # a smoke test

The suite lives in ``benchmarks/perf`` (``python -m benchmarks.perf.suite`` runs it without the CLI);
this command imports it only when it runs, so the harness never loads it otherwise.
"""

from __future__ import annotations

from pathlib import Path

import click

@click.command()
@click.option("--sections", default="scoring,sampling,training,judging,e2e", show_default=True,
              help="Comma-separated subset of the sections to run; also scale (Ray workers, 1 against 2).")
@click.option("--quick", is_flag=True, help="Small sizes (a few minutes); the default sizes take 10-15 min.")
@click.option("--model", default="gemma-3-270m", show_default=True, help="Model spec every section uses.")
@click.option("--repeats", type=click.IntRange(min=1), default=None,
              help="Interleaved repetitions per comparison (ours and naive alternate, ABBA); default 1.")
@click.option("--no-vllm", is_flag=True, help="Skip the vLLM engine in the sampling section.")
@click.option("--e2e-run-dir", default="runs/demo", show_default=True,
              help="An existing run whose stages.json the e2e section reports (skipped when absent).")
@click.option("--e2e-fresh/--no-e2e-fresh", default=None,
              help="Run a fresh reduced demo iteration in the e2e section [default: only when --e2e-run-dir has none].")
@click.option("--e2e-build-policy", is_flag=True,
              help="Let the fresh e2e run build the demo's English DPO policy when it is missing.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch threads for the in-process sections [default: torch's, one per physical core].")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="JSON output [default: benchmarks/perf/results/bench.json].")
@click.pass_obj
def bench(obj, sections: str, quick: bool, model: str, repeats: int | None, no_vllm: bool, e2e_run_dir: str,
          e2e_fresh: bool | None, e2e_build_policy: bool, threads: int | None, output: Path | None) -> None:
    """Run the performance benchmarks against naive baselines; print the table, write JSON."""
    from rich.console import Console

    from benchmarks.perf.suite import DEFAULT_OUTPUT, parse_sections, print_and_write, run_suite

    names = parse_sections(sections)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    output = output or DEFAULT_OUTPUT
    err = Console(stderr=True)
    options = {"sampling": {"is_vllm": not no_vllm},
               "e2e": {"run_dir": e2e_run_dir or None, "is_fresh": e2e_fresh, "build_policy": e2e_build_policy}}
    results = run_suite(names, quick=quick, model=model, repeats=repeats, options=options,
                        log=lambda message: err.print(f"[dim]{message}"))
    print_and_write(results, output)
