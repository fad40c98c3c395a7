"""The CLI's commands, one module per command group; ``harness.cli`` imports each only when it runs."""

from __future__ import annotations

import functools
from typing import Any, Callable

#: The global ``--seed`` default (``harness.cli``), used too when a command runs outside the group.
DEFAULT_SEED = 42


def global_seed(obj: Any) -> int:
    """The global ``--seed`` from the click context object (:data:`DEFAULT_SEED` without one)."""
    return obj.seed if obj is not None else DEFAULT_SEED


def writes_output(parameter: str, *, is_folder: bool) -> Callable:
    """Hold the one-writer lock (:mod:`xlpref.runlock`) of the output named by ``parameter`` while the command runs.

    A second writer of the same output exits 2 naming the holder; readers are never blocked.
    """
    def decorate(command: Callable) -> Callable:
        @functools.wraps(command)
        def locked(*args: Any, **kwargs: Any) -> Any:
            from xlpref.runlock import hold_lock

            with hold_lock(kwargs[parameter], is_folder=is_folder):
                return command(*args, **kwargs)
        return locked
    return decorate


def compute_options(command: Any) -> Any:
    """``--engine local|ray``, ``--workers N``, ``--ray-address A`` and ``--gpus-per-worker G`` for a command
    with a heavy stage, handed to it as one ``compute`` keyword (:class:`xlpref.cluster.ComputeConfig`)."""
    import click

    @functools.wraps(command)
    def with_compute(*args: Any, engine: str, workers: int, ray_address: str | None, gpus_per_worker: float,
                     **kwargs: Any) -> Any:
        from xlpref.cluster import ComputeConfig
        from xlpref.errors import InputError

        if engine == "local" and (workers != 1 or ray_address is not None or gpus_per_worker):
            raise InputError("--workers, --ray-address and --gpus-per-worker need --engine ray", field="--engine")
        compute = ComputeConfig(engine=engine, workers=workers, address=ray_address, gpus_per_worker=gpus_per_worker)
        return command(*args, compute=compute, **kwargs)

    options = [
        click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                     help="local: this process; ray: worker actors on a Ray cluster (docs/scaling.md)."),
        click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
                     help="ray: worker actors, each loading the model(s) once."),
        click.option("--ray-address", default=None,
                     help="ray: join this cluster ('auto', host:port or ray://host:port); default: start one here."),
        click.option("--gpus-per-worker", type=click.FloatRange(min=0), default=0.0, show_default=True,
                     help="ray: GPUs each worker reserves (vllm: tensor_parallel_size)."),
    ]
    for option in reversed(options):
        with_compute = option(with_compute)
    return with_compute


def write_stage_summary(output: Any, stage: str, summary: dict) -> Any:
    """``OUT.stages.json``: the command's stage summary (seconds, records; a Ray stage's workers and nodes)."""
    from pathlib import Path

    from xlpref.jsonio import write_json_atomic

    path = Path(output).with_name(Path(output).name + ".stages.json")
    write_json_atomic(path, {stage: summary})
    return path
