"""Multi-process training: N ranks of :mod:`xlpref.train_worker` started by ``accelerate launch`` or ``torchrun``.

The launcher runs as a subprocess; each rank trains with :func:`xlpref.training.train_dpo` in the
process group the launcher set up (trl's trainer joins it: gloo on CPU, NCCL on GPU), rank 0 writes
the model folder, and every rank records what it did in ``OUT/ranks/rank{r}.json``. After the
launcher exits, :func:`launch_training` checks those records: N ranks, numbered 0..N-1, each in a
group of N. That catches the failure where a launcher starts N independent single-rank copies, or a
single process, instead of one N-rank job.

Accelerate configs (``configs/accelerate/``): ``cpu-multi.yaml`` without a GPU (why it says MULTI_GPU
is explained in the file), ``gpu-ddp.yaml`` with GPUs, ``zero2.yaml`` / ``zero3.yaml`` for DeepSpeed.
``torchrun`` needs no config: ``--standalone --nproc_per_node N``.

Batch sizes are per process: one optimizer step sees ``batch_size x num_processes x grad_accum``
pairs. To keep a single-process setting's global batch on N processes, divide ``batch_size`` or
``grad_accum`` by N.

Example (2 processes on a CPU machine, about a minute with a tiny model)::

    from xlpref.distributed import launch_training
    from xlpref.training import TrainConfig
    pairs = [{"prompt": f"Say {i}.", "chosen": f"{i}!", "rejected": "No."} for i in range(8)]
    result = launch_training("tiny-random-llama", pairs, "/tmp/dpo-2ranks", TrainConfig(batch_size=2),
                             launcher="accelerate", num_processes=2)
    print(result.steps, result.world_size)
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from xlpref.errors import InputError
from xlpref.jsonio import read_json, write_json_atomic, write_jsonl_atomic
from xlpref.train_worker import RANKS_DIR
from xlpref.training import (
    TrainConfig,
    TrainResult,
    check_full_fine_tuning,
    check_pair,
    completed_training,
    load_pairs_for_training,
    training_fingerprint,
)

LAUNCHERS = ("accelerate", "torchrun")
DEEPSPEED_STAGES = ("zero2", "zero3")
ACCELERATE_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "accelerate"


def accelerate_config(deepspeed: str | None = None, *, has_cuda: bool | None = None) -> Path:
    """The bundled accelerate config for this machine: DeepSpeed stage, GPU data parallel, or CPU processes."""
    if has_cuda is None:
        import torch

        has_cuda = torch.cuda.is_available()
    name = deepspeed if deepspeed else ("gpu-ddp" if has_cuda else "cpu-multi")
    path = ACCELERATE_CONFIGS / f"{name}.yaml"
    if not path.is_file():
        raise InputError(f"accelerate config {path} not found; expected the repository's configs/accelerate folder "
                         "(run from a checkout, or pass accelerate_config=)")
    return path


def launch_command(launcher: str, num_processes: int, worker_args: Sequence[str], *,
                   config_file: str | Path | None = None) -> list[str]:
    """The command line that starts ``num_processes`` ranks of the training worker."""
    worker = ["-m", "xlpref.train_worker", *worker_args]
    if launcher == "accelerate":
        return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
                "--num_processes", str(num_processes), *worker]
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(num_processes),
                *worker]
    raise InputError(f"unknown launcher {launcher!r}; expected one of {list(LAUNCHERS)}", field="launcher")


def check_launch(model: object, config: TrainConfig, launcher: str, num_processes: int,
                 deepspeed: str | None) -> None:
    """Refuse settings that cannot run, before anything starts."""
    if launcher not in LAUNCHERS:
        raise InputError(f"unknown launcher {launcher!r}; expected one of {list(LAUNCHERS)}", field="launcher")
    if isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 1:
        raise InputError(f"{num_processes!r}; expected a positive integer", field="num_processes")
    if not isinstance(model, str):
        raise InputError("every rank loads the model itself; expected a model spec or folder, not an in-memory model",
                         field="model")
    if deepspeed is None:
        check_full_fine_tuning(model, config, is_deepspeed=False)  # before N ranks each load the model
        return
    if deepspeed not in DEEPSPEED_STAGES:
        raise InputError(f"{deepspeed!r}; expected one of {list(DEEPSPEED_STAGES)}", field="deepspeed")
    if launcher != "accelerate":
        raise InputError(f"DeepSpeed {deepspeed} is set up through accelerate's config; expected --launcher "
                         "accelerate", field="deepspeed")
    if deepspeed == "zero3" and config.lora:
        raise InputError("zero3 shards the weights, and LoRA adapters are merged into them before saving; expected "
                         "zero2 (or no DeepSpeed) with LoRA", field="deepspeed")
    if importlib.util.find_spec("deepspeed") is None:
        raise InputError(f"DeepSpeed {deepspeed} needs the deepspeed package, which is not installed; expected "
                         "`pip install deepspeed` on a CUDA machine, or no --deepspeed", field="deepspeed")


def read_rank_records(output_dir: str | Path) -> list[dict]:
    """The ``ranks/rank{r}.json`` records the worker ranks wrote, by rank."""
    folder = Path(output_dir) / RANKS_DIR
    return sorted((read_json(p) for p in folder.glob("rank*.json")), key=lambda r: r["rank"])


def check_rank_records(records: list[dict], num_processes: int) -> None:
    """Raise unless ``num_processes`` ranks 0..N-1 each trained in a group of N."""
    ranks = [r["rank"] for r in records]
    sizes = sorted({r["world_size"] for r in records})
    if ranks != list(range(num_processes)) or sizes != [num_processes]:
        raise RuntimeError(f"asked for one job of {num_processes} ranks, but the ranks reported ranks {ranks} in "
                           f"groups of {sizes}: the launcher did not start one {num_processes}-rank job")


def launch_training(model: str, pairs: list[dict] | str | Path, output_dir: str | Path, config: TrainConfig, *,
                    launcher: str = "accelerate", num_processes: int = 2, deepspeed: str | None = None,
                    accelerate_config_file: str | Path | None = None, timeout_s: float | None = None) -> TrainResult:
    """Train ``model`` on ``pairs`` (records or a PAIRS.jsonl path) with ``num_processes`` ranks.

    Returns the finished training already in ``output_dir`` without starting anything when its
    fingerprint matches (the same pairs, model and settings, ``num_processes`` included).

    Raises:
        InputError: bad settings or pairs, DeepSpeed not installed, ``output_dir`` holding something else.
        RuntimeError: the launcher failed, or its ranks did not form one group of ``num_processes``.
    """
    config = config.model_copy(update={"num_processes": num_processes})
    check_launch(model, config, launcher, num_processes, deepspeed)
    config.validate()
    pairs_path = None if isinstance(pairs, list) else Path(pairs)
    records = [check_pair(p, record=i) for i, p in enumerate(pairs)] if pairs_path is None \
        else load_pairs_for_training(pairs_path)
    if not records:
        raise InputError("no pairs; expected at least one pair to train on")
    output_dir = Path(output_dir).absolute()
    done = completed_training(output_dir)
    if done is not None and done.get("fingerprint") == training_fingerprint(model, records, config):
        return _result(output_dir, done, num_processes, was_skipped=True)
    # Other contents: the worker's train_dpo refuses them with the same message; refusing here saves a launch.
    if done is not None or (output_dir.exists() and any(output_dir.iterdir())):
        raise InputError("exists and is not this training's finished result; expected a new or empty folder",
                         path=output_dir)
    if launcher == "accelerate" and accelerate_config_file is None:
        accelerate_config_file = accelerate_config(deepspeed)

    with tempfile.TemporaryDirectory(prefix="xlpref-launch-") as tmp:
        if pairs_path is None:
            pairs_path = Path(tmp) / "pairs.jsonl"
            write_jsonl_atomic(pairs_path, records)
        config_path = Path(tmp) / "train_config.json"
        write_json_atomic(config_path, config.settings())
        worker_args = ["--model", model, "--pairs", str(Path(pairs_path).absolute()), "--output", str(output_dir),
                       "--config", str(config_path)]
        command = launch_command(launcher, num_processes, worker_args, config_file=accelerate_config_file)
        returncode = _run(command, timeout_s)
    if returncode != 0:
        raise RuntimeError(f"{launcher} exited with code {returncode} (the ranks' output is above): {' '.join(command)}")
    done = completed_training(output_dir)
    if done is None:
        raise RuntimeError(f"{launcher} exited without error but {output_dir} holds no finished training")
    check_rank_records(read_rank_records(output_dir), num_processes)
    return _result(output_dir, done, num_processes, was_skipped=False)


def _run(command: list[str], timeout_s: float | None) -> int:
    """Run the launcher in its own process group; on timeout or interrupt, stop every rank it started."""
    process = subprocess.Popen(command, start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        return process.wait(timeout=timeout_s)
    except BaseException:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        raise


def _result(output_dir: Path, meta: dict, num_processes: int, *, was_skipped: bool) -> TrainResult:
    return TrainResult(output_dir, meta["metrics"], meta["steps"], meta["first_loss"], meta["seconds"],
                       was_skipped=was_skipped, world_size=num_processes)
