"""``xlpref train``: DPO (+NLL), IPO or KTO training on a PAIRS.jsonl file (trl, see xlpref.training).

The output folder is a complete model (LoRA adapters merged) that ``--model OUT_DIR`` loads in
``sample``, ``score`` and ``generate``; ``OUT_DIR/xlpref_train.json`` records settings and metrics.
Running the same command again finds the finished folder and returns at once.

Example::

    xlpref train --model tiny-random-llama --pairs pairs.jsonl -o runs/demo/model --epochs 1
    xlpref train --model gemma-3-270m --pairs pairs.jsonl -o out/ --lora --lr 1e-4 --batch-size 8
    xlpref train --model tiny-random-llama --pairs pairs.jsonl -o out2/ --launcher accelerate --num-processes 2

``--launcher accelerate|torchrun --num-processes N`` trains with N processes (xlpref.distributed): one
GPU each, or gloo processes without a GPU; ``--batch-size`` is per process. ``--engine ray
--num-processes N [--ray-address auto]`` runs the same N ranks as Ray Train workers (xlpref.ray_train).
"""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from harness.commands import global_seed, writes_output
from xlpref.distributed import DEEPSPEED_STAGES, LAUNCHERS
from xlpref.errors import InputError
from xlpref.training import LOSSES, TrainConfig, TrainResult


def default(name: str):
    """TrainConfig's default for ``name``: the flags and the run config's ``training`` block share them."""
    return TrainConfig.model_fields[name].get_default(call_default_factory=True)


def render_result(result: TrainResult, n_pairs: int) -> Table:
    """A summary table of one training."""
    table = Table(title=f"Training {'(already done, skipped)' if result.was_skipped else ''}".strip())
    table.add_column("what")
    table.add_column("value", justify="right")
    rows = [("pairs", str(n_pairs)), ("processes", str(result.world_size)), ("optimizer steps", str(result.steps)),
            ("first loss", "-" if result.first_loss is None else f"{result.first_loss:.4f}"),
            ("mean train loss", f"{result.metrics.get('train_loss', float('nan')):.4f}"),
            ("seconds", f"{result.seconds:.1f}"), ("output", str(result.output_dir))]
    for what, value in rows:
        table.add_row(what, value)
    return table


@click.command()
@click.option("--model", "model_spec", required=True,
              help="Starting policy (also the reference): a folder, a built-in spec, or a hub id.")
@click.option("--pairs", "pairs_path", required=True, type=click.Path(path_type=Path),
              help="PAIRS.jsonl: one {prompt, chosen, rejected[, lang, ...]} object a line.")
@click.option("-o", "--output", "output_dir", required=True, type=click.Path(path_type=Path),
              help="Output folder (written as OUT.tmp, renamed when complete).")
@click.option("--loss", type=click.Choice(LOSSES), default=default("loss"), show_default=True,
              help="sigmoid = DPO; kto needs --nll-weight 0.")
@click.option("--beta", type=float, default=default("beta"), show_default=True)
@click.option("--nll-weight", type=float, default=default("nll_weight"), show_default=True,
              help="Weight of the NLL term on the chosen response.")
@click.option("--lora", is_flag=True, default=default("lora"),
              help="Train a LoRA adapter (merged into the saved model).")
@click.option("--lora-r", type=int, default=default("lora_r"), show_default=True)
@click.option("--lora-alpha", type=int, default=default("lora_alpha"), show_default=True)
@click.option("--lr", "learning_rate", type=float, default=default("learning_rate"), show_default=True)
@click.option("--epochs", type=float, default=default("epochs"), show_default=True)
@click.option("--batch-size", type=int, default=default("batch_size"), show_default=True)
@click.option("--grad-accum", type=int, default=default("grad_accum"), show_default=True)
@click.option("--max-length", type=int, default=default("max_length"), show_default=True)
@click.option("--max-prompt-length", type=int, default=default("max_prompt_length"),
              help="Keep the last N tokens of each instruction.")
@click.option("--precompute-ref-log-probs/--no-precompute-ref-log-probs", default=default("precompute_ref_log_probs"),
              show_default=True,
              help="Compute the reference's log-probs once before training (no reference pass per step).")
@click.option("--completion-only-head/--no-completion-only-head", default=default("completion_only_head"),
              show_default=True,
              help="Run the LM head only at completion positions (trl does on CUDA; on CPU only with this).")
@click.option("--gradient-checkpointing/--no-gradient-checkpointing", default=None,
              help="Recompute activations in the backward pass (less memory, ~30% more compute). "
                   "Default: on with CUDA, off on CPU.")
@click.option("--seed", type=int, default=None, help="Training seed (default: the global --seed).")
@click.option("--report-to", multiple=True, help="Experiment trackers (tensorboard, wandb); none by default.")
@click.option("--launcher", type=click.Choice(("none", *LAUNCHERS)), default="none", show_default=True,
              help="Start --num-processes training processes (none: train in this process).")
@click.option("--num-processes", type=int, default=default("num_processes"), show_default=True,
              help="Training processes (one per GPU); --batch-size is per process.")
@click.option("--deepspeed", type=click.Choice(DEEPSPEED_STAGES), default=None,
              help="DeepSpeed ZeRO stage (with --launcher accelerate; needs the deepspeed package and GPUs).")
@click.option("--accelerate-config", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Your own accelerate config (default: configs/accelerate/ for this machine).")
@click.option("--engine", type=click.Choice(("local", "ray")), default="local", show_default=True,
              help="ray: --num-processes Ray Train workers on a Ray cluster (no launcher).")
@click.option("--ray-address", default=None,
              help="With --engine ray: join this cluster ('auto', host:6379); default: start a local Ray.")
@click.option("--gpus-per-worker", type=float, default=0, show_default=True, help="With --engine ray: GPUs per rank.")
@click.pass_obj
@writes_output("output_dir", is_folder=False)
def train(obj, model_spec: str, pairs_path: Path, output_dir: Path, loss: str, beta: float, nll_weight: float,
          lora: bool, lora_r: int, lora_alpha: int, learning_rate: float, epochs: float, batch_size: int,
          grad_accum: int, max_length: int, max_prompt_length: int | None, precompute_ref_log_probs: bool,
          completion_only_head: bool, gradient_checkpointing: bool | None,
          seed: int | None, report_to: tuple[str, ...], launcher: str, num_processes: int, deepspeed: str | None,
          accelerate_config: Path | None, engine: str, ray_address: str | None, gpus_per_worker: float) -> None:
    """Train the model on preference pairs; the reference is the starting model."""
    from xlpref.training import load_pairs_for_training, train_dpo

    config = TrainConfig(
        loss=loss, beta=beta, nll_weight=nll_weight, lora=lora, lora_r=lora_r, lora_alpha=lora_alpha,
        learning_rate=learning_rate, epochs=epochs, batch_size=batch_size, grad_accum=grad_accum,
        max_length=max_length, max_prompt_length=max_prompt_length,
        precompute_ref_log_probs=precompute_ref_log_probs, completion_only_head=completion_only_head,
        gradient_checkpointing=gradient_checkpointing,
        seed=seed if seed is not None else global_seed(obj), report_to=list(report_to),
        num_processes=num_processes,
    )
    config.validate()  # before loading pairs or models: bad flags fail fast
    if launcher != "accelerate" and (accelerate_config or (deepspeed and engine != "ray")):
        raise InputError("--deepspeed and --accelerate-config need --launcher accelerate", field="launcher")
    if engine == "ray" and (launcher != "none" or accelerate_config):
        raise InputError("--engine ray forms the process group itself; expected no --launcher or --accelerate-config",
                         field="launcher")
    pairs = load_pairs_for_training(pairs_path)
    if engine == "ray":
        result = _train_on_ray(model_spec, pairs, output_dir, config, ray_address, gpus_per_worker, deepspeed)
    elif launcher == "none":
        result = train_dpo(model_spec, pairs, output_dir, config)
    else:
        from xlpref.distributed import launch_training

        result = launch_training(model_spec, pairs_path, output_dir, config, launcher=launcher,
                                 num_processes=num_processes, deepspeed=deepspeed,
                                 accelerate_config_file=accelerate_config)
    Console(stderr=True).print(render_result(result, len(pairs)))
    click.echo(str(result.output_dir))


def _train_on_ray(model_spec: str, pairs: list[dict], output_dir: Path, config: TrainConfig,
                  address: str | None, gpus_per_worker: float, deepspeed: str | None) -> TrainResult:
    """``config.num_processes`` Ray Train workers, in a Ray session of their own, with a bar of steps."""
    from xlpref.cluster import ComputeConfig, ray_session
    from xlpref.ray_progress import ray_stage_progress
    from xlpref.ray_train import optimizer_steps, train_on_ray

    compute = ComputeConfig(engine="ray", address=address, workers=config.num_processes,
                            gpus_per_worker=gpus_per_worker)
    steps = optimizer_steps(len(pairs), config)
    with ray_session(compute), ray_stage_progress(Console(stderr=True), "train", total=steps, unit="steps",
                                                  combine="max") as bar:
        return train_on_ray(model_spec, pairs, output_dir, config, num_workers=config.num_processes,
                            compute=compute, deepspeed=deepspeed, board=bar.board)
