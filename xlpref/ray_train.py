"""DPO training on a Ray cluster: N ranks of :func:`xlpref.train_worker.train_rank` as Ray Train workers.

Ray Train's ``TorchTrainer`` places the workers on the cluster's nodes (``ScalingConfig``: one GPU
per worker with ``compute.gpus_per_worker: 1``, gloo on CPU) and forms their process group; inside
it each rank runs the same trl training as a rank started by ``accelerate launch`` or ``torchrun``
(:mod:`xlpref.distributed`), with the same per-process batch: a config trains the same model
whichever of them starts its ``num_processes`` ranks. Rank 0 writes the model folder, every rank its
record ``OUT/ranks/rank{r}.json`` (with the Ray node it ran on), and the driver checks the records
as :func:`xlpref.distributed.launch_training` does.

Failures: every ``checkpoint_steps`` optimizer steps the trainer saves a resumable checkpoint
(weights, optimizer, scheduler, each rank's RNG), which every rank hands to ``ray.train.report``;
Ray Train merges the ranks' files into one checkpoint under ``storage``. When a worker dies (its
process killed, its node lost), Ray Train restarts the whole group, up to ``max_failures`` times,
and each rank continues from ``ray.train.get_checkpoint()``: the steps after the last checkpoint are
redone, with the data order and RNG of the uninterrupted run. A driver started again (``xlpref run``
after a kill) finds the same Ray Train run (named by the training's fingerprint) in ``storage`` and
resumes from its last checkpoint too. ``storage`` must be a folder every node reads and writes on
several machines (``compute.storage``); it is removed once the model is written.

Test hook (for the failure tests only): ``XLPREF_TEST_KILL_RANK=R:K:MARKER`` makes rank R SIGKILL
itself once, at the end of optimizer step K, unless the file MARKER exists (it creates it first, so
the restarted rank trains on). It waits for Ray Train to register the last checkpoint first: the
controller collects reports at its health checks (every 2 s), and a worker killed before that loses
the checkpoint it just reported (the group then resumes from the one before).

Example (2 workers on a CPU machine, about a minute with a tiny model)::

    from xlpref.cluster import ComputeConfig, ray_session
    from xlpref.ray_train import train_on_ray
    from xlpref.training import TrainConfig
    pairs = [{"prompt": f"Say {i}.", "chosen": f"{i}!", "rejected": "No."} for i in range(8)]
    with ray_session(ComputeConfig(engine="ray", workers=2)):
        result = train_on_ray("tiny-random-llama", pairs, "/tmp/dpo-ray", TrainConfig(batch_size=2),
                              num_workers=2)
    print(result.steps, result.world_size)
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from xlpref.cluster import ComputeConfig
from xlpref.distributed import _result, check_launch, check_rank_records, read_rank_records
from xlpref.errors import InputError
from xlpref.training import (
    TrainConfig,
    TrainResult,
    check_pair,
    completed_training,
    training_fingerprint,
)

#: Restarts of the worker group Ray Train makes before the stage fails.
MAX_FAILURES = 3
#: Environment variable of the test hook (see the module docstring).
KILL_HOOK = "XLPREF_TEST_KILL_RANK"


def optimizer_steps(n_pairs: int, config: TrainConfig) -> int:
    """About the optimizer steps of a training (``config.num_processes`` ranks): for progress and checkpoints."""
    micro_batches = math.ceil(n_pairs / (config.batch_size * config.num_processes))
    return max(1, math.ceil(max(1, micro_batches // config.grad_accum) * config.epochs))


def default_checkpoint_steps(n_pairs: int, config: TrainConfig) -> int:
    """About four checkpoints per epoch (a lost worker costs a quarter epoch, the saving a few writes),
    at logging steps: the trainer logs every 2% of the steps (``xlpref.training``), and a resume
    between two logging steps would average the next logged loss over fewer steps."""
    total_steps = optimizer_steps(n_pairs, config)
    log_every = math.ceil(total_steps * 0.02)
    return max(1, round(total_steps / 4 / log_every)) * log_every


def check_training_capacity(num_workers: int, compute: ComputeConfig, resources: dict) -> None:
    """Refuse (exit 2) ranks the cluster cannot hold at once: Ray Train would wait for them forever."""
    for name, each in (("CPU", compute.cpus_per_worker), ("GPU", compute.gpus_per_worker)):
        wanted, have = num_workers * each, resources.get(name, 0)
        if wanted > have:
            raise InputError(f"{num_workers} training ranks x {each:g} {name}s need {wanted:g} {name}s; the Ray "
                             f"cluster has {have:g}; expected fewer ranks or smaller workers",
                             field="training.num_processes")


def train_on_ray(model: str, pairs: list[dict], output_dir: str | Path, config: TrainConfig, *,
                 num_workers: int, compute: ComputeConfig | None = None, storage: str | Path | None = None,
                 checkpoint_steps: int | None = None, max_failures: int = MAX_FAILURES,
                 deepspeed: str | None = None, board: Any = None) -> TrainResult:
    """Train ``model`` on ``pairs`` with ``num_workers`` Ray Train workers in the connected Ray cluster.

    ``compute`` gives each worker's GPUs and CPUs; ``storage`` holds Ray Train's checkpoints (default:
    ``OUT.ray`` beside the output folder); ``board``: a :class:`xlpref.ray_progress.ProgressBoard`
    the ranks report their optimizer steps to. Returns the finished training already in
    ``output_dir`` without starting anything when its fingerprint matches.

    Raises:
        InputError: bad settings or pairs, ``output_dir`` holding something else.
        RuntimeError: the workers failed more than ``max_failures`` times, or did not form one group.
    """
    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    compute = compute or ComputeConfig(engine="ray", workers=num_workers)
    config = config.model_copy(update={"num_processes": num_workers})
    check_launch(model, config, "accelerate" if deepspeed else "torchrun", num_workers, deepspeed)
    config.validate()
    records = [check_pair(p, record=i) for i, p in enumerate(pairs)]
    if not records:
        raise InputError("no pairs; expected at least one pair to train on")
    output_dir = Path(output_dir).absolute()
    fingerprint = training_fingerprint(model, records, config)
    done = completed_training(output_dir)
    if done is not None and done.get("fingerprint") == fingerprint:
        return _result(output_dir, done, num_workers, was_skipped=True)
    if done is not None or (output_dir.exists() and any(output_dir.iterdir())):
        raise InputError("exists and is not this training's finished result; expected a new or empty folder",
                         path=output_dir)
    check_training_capacity(num_workers, compute, ray.cluster_resources())
    storage = Path(storage).absolute() if storage else output_dir.with_name(output_dir.name + ".ray")
    run_name = f"train-{fingerprint[:16]}"
    use_gpu = compute.gpus_per_worker > 0
    resources = {"CPU": compute.cpus_per_worker, **({"GPU": compute.gpus_per_worker} if use_gpu else {})}
    env = {key: os.environ[key] for key in (KILL_HOOK, "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HOME",
                                            "TOKENIZERS_PARALLELISM") if key in os.environ}
    env.update(_deepspeed_env(deepspeed, num_workers))
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={"model": model, "pairs": records, "output_dir": str(output_dir),
                           "config": config.settings(), "board": board,
                           "checkpoint_steps": checkpoint_steps or default_checkpoint_steps(len(records), config)},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(name=run_name, storage_path=str(storage),
                                       failure_config=ray.train.FailureConfig(max_failures=max_failures),
                                       worker_runtime_env={"env_vars": env}),
    )
    result = trainer.fit()
    if result.error is not None:
        raise RuntimeError(f"Ray Train failed after {max_failures} restarts: {result.error}") from result.error
    done = completed_training(output_dir)
    if done is None:
        raise RuntimeError(f"Ray Train finished but {output_dir} holds no finished training; on several machines "
                           "the run directory must be a folder every node reads and writes (compute.storage)")
    check_rank_records(read_rank_records(output_dir), num_workers)
    shutil.rmtree(storage / run_name, ignore_errors=True)
    if storage.is_dir() and not any(storage.iterdir()):
        storage.rmdir()
    return _result(output_dir, done, num_workers, was_skipped=False)


def _train_loop(loop_config: dict) -> None:
    """One Ray Train worker: this rank's training, resumed from the last checkpoint after a restart."""
    import contextlib

    import ray
    import ray.train
    import torch

    from xlpref.train_worker import train_rank

    context = ray.train.get_context()
    rank = context.get_world_rank()
    if torch.cuda.is_available():  # before the model loads: each rank on the GPU Ray Train gave it
        from ray.train.torch import get_device

        torch.cuda.set_device(get_device())
    config = TrainConfig(**loop_config["config"])
    checkpoint = ray.train.get_checkpoint()
    callbacks = [_report_callback(rank, loop_config["board"]), *_kill_hook(rank)]
    with checkpoint.as_directory() if checkpoint else contextlib.nullcontext() as resume_from:
        train_rank(loop_config["model"], loop_config["pairs"], loop_config["output_dir"], config,
                   extra={"node_id": ray.get_runtime_context().get_node_id(), "resumed_from_step": _step(resume_from)},
                   checkpoint_steps=loop_config["checkpoint_steps"], callbacks=tuple(callbacks),
                   resume_from=resume_from)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()  # every rank's record is written before the driver reads them


def _step(checkpoint: str | None) -> int | None:
    if checkpoint is None:
        return None
    from xlpref.training import _checkpoint_step

    return _checkpoint_step(checkpoint)


def _report_callback(rank: int, board: Any) -> Any:
    """Hands each saved trainer checkpoint to Ray Train, and the optimizer steps to the progress board."""
    import ray.train
    from transformers import TrainerCallback

    from xlpref.ray_progress import Heartbeat

    class RayReport(TrainerCallback):
        def __init__(self) -> None:
            self.heartbeat = Heartbeat(board, f"rank{rank}") if board is not None else None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.heartbeat is not None:
                self.heartbeat.done = state.global_step
                self.heartbeat.__enter__()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.heartbeat is not None:
                self.heartbeat.done = state.global_step

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            # Every rank reports (a barrier); Ray Train merges the ranks' files into one checkpoint.
            ray.train.report({"step": state.global_step}, checkpoint=ray.train.Checkpoint.from_directory(folder),
                             checkpoint_dir_name=f"checkpoint-{state.global_step:06d}")

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.heartbeat is not None:
                self.heartbeat.__exit__(None, None, None)

    return RayReport()


def _kill_hook(rank: int) -> list:
    """The failure tests' hook (:data:`KILL_HOOK`): rank R SIGKILLs itself once after optimizer step K."""
    spec = os.environ.get(KILL_HOOK)
    if not spec:
        return []
    target, step, marker = spec.split(":", 2)
    if int(target) != rank:
        return []
    from transformers import TrainerCallback

    class KillOnce(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == int(step) and not Path(marker).exists():
                Path(marker).touch()
                time.sleep(_registration_s())
                os.kill(os.getpid(), signal.SIGKILL)

    return [KillOnce()]


def _registration_s() -> float:
    """Seconds after which Ray Train has registered a reported checkpoint: its controller collects the
    workers' reports at each health check (a worker killed before that loses its last report)."""
    from ray.train.v2._internal.constants import DEFAULT_HEALTH_CHECK_INTERVAL_S, HEALTH_CHECK_INTERVAL_S_ENV_VAR

    return 2.5 * float(os.environ.get(HEALTH_CHECK_INTERVAL_S_ENV_VAR, DEFAULT_HEALTH_CHECK_INTERVAL_S))


def _deepspeed_env(deepspeed: str | None, num_workers: int) -> dict[str, str]:
    """What ``accelerate launch`` would set from ``configs/accelerate/{deepspeed}.yaml``, for every worker.

    Under Ray Train no launcher runs; accelerate inside trl reads the DeepSpeed plugin from these
    variables instead. Not run here (no GPU, no deepspeed package).
    """
    if deepspeed is None:
        return {}
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    from xlpref.distributed import accelerate_config

    args = launch_command_parser().parse_args(["--config_file", str(accelerate_config(deepspeed)),
                                               "--num_processes", str(num_workers), "train.py"])
    args, defaults, mixed_precision_from_config = _validate_launch_command(args)
    # What accelerate's launch_command adds before it calls its DeepSpeed launcher.
    fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mixed_precision_from_config else [])
    args.deepspeed_fields_from_accelerate_config = ",".join(fields)
    _, env = prepare_deepspeed_cmd_env(args)
    return {key: value for key, value in env.items() if key.startswith("ACCELERATE_")}

