"""``xlpref doctor``: versions, GPUs, and a short check of scoring, sampling and training on this machine.

Computation is :mod:`xlpref.doctor`; this module renders its report. Exit code 0 when every check
passed, 1 otherwise (the report says which failed and why).

Example::

    xlpref doctor                        # versions, GPUs, score / sample / train checks (under 2 minutes on CPU)
    xlpref doctor --json > doctor.json
    xlpref doctor --memory-estimates     # per-GPU memory of docs/scaling.md's training recipes (nothing runs)
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Any, Iterator

import click
from rich.console import Console
from rich.table import Table

#: Check fields shown in the table's detail column (the JSON report has them all).
_DETAILS = ("backend", "processes", "steps", "losses", "bf16_vs_fp32_nats_per_token",
            "bf16_rounded_logits_vs_fp32_nats_per_token", "records", "response_tokens", "error")


def render_report(report: dict) -> list[Table]:
    """The versions and GPUs, then one row per check with its memory afterwards."""
    setup = Table(title="xlpref doctor: this machine")
    setup.add_column("what")
    setup.add_column("value")
    for name, version in report["versions"].items():
        setup.add_row(name, version or "not installed")
    for gpu in report["gpus"] or [{"index": "-", "name": "none (CPU checks)", "memory_gb": "-"}]:
        setup.add_row(f"GPU {gpu['index']}", f"{gpu['name']} ({gpu['memory_gb']} GB)")
    setup.add_row("memory at start", _memory(report["memory_at_start"]))
    checks = Table(title=f"checks on {report['device']}")
    for column in ("check", "ok", "seconds", "memory after", "details"):
        checks.add_column(column)
    for check in report["checks"]:
        details = "; ".join(f"{key} {check[key]}" for key in _DETAILS if key in check)
        checks.add_row(check["name"], "yes" if check["ok"] else "[red]NO[/]", str(check["seconds"]),
                       _memory(check["memory_after"]), details)
    return [setup, checks]


def render_estimates(rows: list[dict]) -> Table:
    table = Table(title="per-GPU training memory, GB (xlpref.doctor.memory_estimates; activations at max_length)")
    columns = ("recipe", "model", "parameters_b", "weights_and_optimizer_gb", "reference_gb", "checkpoints_gb",
               "recompute_gb", "total_gb", "without_checkpointing_gb")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(row[column]) for column in columns))
    return table


def _memory(memory: dict[str, Any]) -> str:
    if "rss_gb" in memory:
        return f"RSS {memory['rss_gb']} GB"
    return f"GPUs used {memory['gpu_used_gb']} GB, reserved here {memory['reserved_gb']} GB"


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send what the checks print (vLLM logs to stdout, in this process and its engine's) to stderr,
    so that ``--json`` leaves only the report on stdout."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("--backend", type=click.Choice(["hf", "vllm"]), default=None,
              help="Sampler of the sample check (default: vllm with CUDA and vLLM installed, else hf).")
@click.option("--memory-estimates", is_flag=True, help="Only print the training recipes' memory estimates.")
def doctor(as_json: bool, backend: str | None, memory_estimates: bool) -> None:
    """Print versions and GPUs, then score, sample and train a small model here, reading memory between."""
    from xlpref.doctor import memory_estimates as estimates
    from xlpref.doctor import run_doctor

    if memory_estimates:
        rows = estimates()
        if as_json:
            click.echo(json.dumps(rows, indent=2))
        else:
            Console(width=200).print(render_estimates(rows))
        return
    with _stdout_to_stderr():
        report = run_doctor(backend=backend)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        console = Console(width=200)
        for table in render_report(report):
            console.print(table)
    sys.exit(0 if report["ok"] else 1)
