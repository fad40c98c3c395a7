"""One rank of a multi-process training: the entry point ``accelerate launch`` or ``torchrun`` starts N times.

Each process runs :func:`xlpref.training.train_dpo` inside the process group its launcher set up
(trl's trainer joins it: gloo on CPU, NCCL on GPU); rank 0 writes the model, the others wait for it.
Each rank then records what it did in ``OUT/ranks/rank{r}.json`` (world size, rank, micro-batches,
optimizer steps, the loss history), so one can check that N ranks really trained together rather
than N independent copies (each of those would report a world size of 1).

``--config`` is a JSON object of :class:`xlpref.training.TrainConfig` fields (missing ones take their
defaults); ``num_processes`` must equal the launcher's process count. :mod:`xlpref.distributed` writes
it and starts the launcher; starting the launcher by hand (several nodes) works the same way.

Example (2 processes on one CPU machine)::

    echo '{"num_processes": 2, "batch_size": 2, "epochs": 1}' > /tmp/train.json
    python -m torch.distributed.run --nproc_per_node 2 -m xlpref.train_worker \\
        --model tiny-random-llama --pairs pairs.jsonl --output /tmp/out --config /tmp/train.json
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from xlpref.errors import InputError
from xlpref.jsonio import read_json, write_json_atomic

RANKS_DIR = "ranks"


def read_train_config(path: str | Path):
    """A :class:`TrainConfig` from a JSON object of its fields; unknown keys are refused."""
    from pydantic import ValidationError

    from xlpref.training import TrainConfig

    raw = read_json(path)
    if not isinstance(raw, dict):
        raise InputError(f"expected a JSON object of training settings, found {type(raw).__name__}", path=path)
    known = set(TrainConfig.model_fields)
    for key in raw:
        if key not in known:
            raise InputError(f"unknown training setting; expected some of {sorted(known)}", path=path, field=key)
    try:
        config = TrainConfig(**raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise InputError(f"{error['msg']} (got {error.get('input')!r})", path=path,
                         field=".".join(str(part) for part in error["loc"])) from None
    try:
        config.validate()
    except InputError as exc:
        raise InputError(exc.message, path=path, field=exc.field) from None
    return config


def rank_record(result) -> dict:
    """What one rank did, as plain data."""
    return {"rank": result.rank, "world_size": result.world_size, "local_rank": int(os.environ.get("LOCAL_RANK", "0")),
            "host": socket.gethostname(), "pid": os.getpid(), "micro_batches": result.micro_batches,
            "optimizer_steps": result.steps, "loss_history": result.metrics.get("loss_history", []),
            "was_skipped": result.was_skipped}


def train_rank(model: str, pairs: list[dict], output_dir: str | Path, config, *, extra: dict | None = None,
               **train_options):
    """This process's share of an N-rank training (the process group is already formed): train, then
    record what this rank did (``extra``: more fields for the record, e.g. the Ray node)."""
    from xlpref.training import train_dpo

    result = train_dpo(model, pairs, output_dir, config, progress=int(os.environ.get("RANK", "0")) == 0,
                       **train_options)
    if not result.was_skipped:
        write_json_atomic(Path(output_dir) / RANKS_DIR / f"rank{result.rank}.json", {**rank_record(result), **(extra or {})})
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xlpref.train_worker", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="starting policy: a spec or a folder (every rank loads it)")
    parser.add_argument("--pairs", required=True, help="PAIRS.jsonl")
    parser.add_argument("--output", required=True, help="output folder (rank 0 writes it)")
    parser.add_argument("--config", required=True, help="JSON object of TrainConfig fields")
    args = parser.parse_args(argv)

    import torch

    from xlpref.training import load_pairs_for_training

    if torch.cuda.is_available():  # before the model loads: each rank on its own GPU, not all on cuda:0
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    try:
        config = read_train_config(args.config)
        pairs = load_pairs_for_training(args.pairs)
        train_rank(args.model, pairs, args.output, config)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()  # every rank's record is written before the launcher sees the exit
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
