"""Preference training through trl (DPO + NLL, IPO, KTO): the one module that imports trl.

The method's training step (METHOD.md, step 4): DPO on all languages' pairs together, the prompt being
the target-language instruction in the model's chat template, plus an NLL term on the chosen
response (weight 1), beta = 0.1, the reference being the starting policy pi_t.

How trl 1.16 expresses it (read from ``trl/trainer/dpo_trainer.py``):

- DPO + NLL is ``loss_type=["sigmoid", "sft"]`` with ``loss_weights=[1, nll_weight]`` (there is no
  ``rpo_alpha`` any more). trl's "sft" term is the mean negative log-likelihood over all chosen
  completion tokens of the batch (tokens pooled across the batch, not a mean of per-pair means).
- IPO is ``loss_type=["ipo", "sft"]`` (trl averages IPO's log-ratios per completion token).
- KTO is trl's ``KTOTrainer`` on unpaired data: every pair gives a desirable (chosen) and an
  undesirable (rejected) example. trl's KTO has no NLL term, so ``nll_weight`` must be 0 for it.
- Pairs are given to trl in conversational form (``[{"role": "user", ...}]``), so trl applies the
  tokenizer's chat template (base models get :data:`xlpref.models.PLAIN_CHAT_TEMPLATE`); the
  completion includes the template's end-of-turn token, which teaches the model to stop.
- The reference model is the starting policy. By default its log-probs are computed once before
  training (``precompute_ref_log_probs``, reused every epoch); without that, a frozen copy for full
  fine-tuning, or the base with the adapter disabled for LoRA, runs at every step.
- trl's fused LM head computes log-probs in vocabulary tiles without the full logits; by default
  it also runs only at completion positions on CPU (``completion_only_head``; trl does so on
  CUDA/XPU already). Both speed settings keep the values (``make bench``'s training section shows
  the first loss of both and the pairs/s against trl's defaults).

Output folder: a complete ``save_pretrained`` folder (safetensors) with the tokenizer and its chat
template. **LoRA adapters are merged into the base before saving**, so ``xlpref.models.load_model(OUT)``
loads the trained model directly in the sampler and the scorer. ``xlpref_train.json`` (config,
metrics, first loss, steps, time, pairs per language, fingerprint) is the completion marker: it is
written last, into ``OUT.tmp``, which is then renamed to ``OUT``; a crash leaves no half-written
``OUT``, and an ``OUT`` holding a marker with the same fingerprint is returned without training.

Example::

    from xlpref.training import TrainConfig, train_dpo
    pairs = [{"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."}] * 4
    result = train_dpo("tiny-random-llama", pairs, "/tmp/dpo-out", TrainConfig(epochs=1, learning_rate=1e-4))
    print(result.first_loss, result.steps)
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from pydantic import BaseModel, ConfigDict, Field

from xlpref.errors import InputError
from xlpref.jsonio import iter_jsonl, write_json_atomic

log = logging.getLogger(__name__)

LOSSES = ("sigmoid", "ipo", "kto")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial")
MARKER = "xlpref_train.json"
#: Where transformers' TensorBoard callback writes inside trl's output folder (kept in the saved model).
TRACKER_LOGS = "runs"
_FORMAT_VERSION = 1


class TrainConfig(BaseModel):
    """Every training setting, with its default; saved into ``xlpref_train.json``.

    One class for the stage: ``xlpref train`` builds it from its flags (their defaults are these), and
    the run config's ``training`` block is this class extended by the loop's run-only fields. Types
    are checked on construction; values (ranges, names) by :meth:`validate`, which names the field.
    """

    model_config = ConfigDict(extra="forbid")

    loss: str = Field("sigmoid", description=f"one of {list(LOSSES)}: sigmoid = DPO; kto needs nll_weight 0")
    beta: float = 0.1
    nll_weight: float = Field(1.0, description="weight of the NLL term on the chosen response (0 for kto)")
    lora: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: Optional[list[str]] = Field(None, description="None: every linear layer but the LM head")
    learning_rate: float = 5e-6
    epochs: float = 1.0
    batch_size: int = Field(4, description="pairs per device and step")
    grad_accum: int = 1
    max_length: int = Field(1024, description="prompt + response tokens; longer sequences keep their start")
    max_prompt_length: Optional[int] = Field(None, description="instruction tokens kept (its end), template not "
                                                                "counted")
    # Speed settings (same values, less work; benchmarks/perf/bench_training.py measures them against trl's defaults):
    precompute_ref_log_probs: bool = Field(True, description="the reference's log-probs once, before training")
    completion_only_head: bool = Field(True, description="the LM head only at completion positions, on every device")
    seed: int = 42
    report_to: list[str] = Field(default_factory=list, description="experiment trackers (tensorboard, wandb)")
    num_processes: int = Field(1, description="processes of the training group (xlpref.distributed); must match it")
    lr_scheduler_type: str = Field("linear", description=f"one of {list(SCHEDULERS)}")
    warmup_ratio: float = 0.0
    # Recompute activations in the backward pass (an 8B model's activations at 4096 tokens do not fit an
    # 80 GB GPU otherwise); None: on with CUDA, off on CPU (where memory is not the limit), resolved at train time.
    gradient_checkpointing: Optional[bool] = Field(None, description="recompute activations; null: on with CUDA, off on CPU")
    evaluate_held_in: bool = Field(False, description="after training, record trl's margins on the training pairs")

    def validate(self, *, is_tracker_checked: bool = True) -> None:
        """Raise :class:`InputError` naming the first bad value.

        Args:
            is_tracker_checked: also check that every ``report_to`` tracker is installed (imports transformers).
        """
        def bad(name: str, expected: str) -> InputError:
            return InputError(f"{getattr(self, name)!r}; expected {expected}", field=name)

        if self.loss not in LOSSES:
            raise bad("loss", f"one of {list(LOSSES)}")
        if self.loss == "kto" and self.nll_weight != 0:
            raise bad("nll_weight", "0 with loss 'kto' (trl's KTO has no NLL term)")
        if self.loss == "kto" and self.batch_size < 2:
            raise bad("batch_size", "at least 2 with loss 'kto' (its KL estimate pairs examples within a batch)")
        for name in ("beta", "learning_rate", "epochs"):
            if not getattr(self, name) > 0:
                raise bad(name, "a positive number")
        if not self.nll_weight >= 0:
            raise bad("nll_weight", "a number >= 0")
        for name in ("lora_r", "lora_alpha", "batch_size", "grad_accum", "max_length", "num_processes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad(name, "a positive integer")
        if self.max_prompt_length is not None and not 1 <= self.max_prompt_length < self.max_length:
            raise bad("max_prompt_length", "None or an integer in [1, max_length)")
        if not 0 <= self.lora_dropout < 1:
            raise bad("lora_dropout", "a number in [0, 1)")
        if self.lr_scheduler_type not in SCHEDULERS:
            raise bad("lr_scheduler_type", f"one of {list(SCHEDULERS)}")
        if not 0 <= self.warmup_ratio < 1:
            raise bad("warmup_ratio", "a number in [0, 1)")
        if self.report_to and is_tracker_checked:
            check_trackers(self.report_to)

    @property
    def uses_precomputed_reference(self) -> bool:
        """Whether trl precomputes the reference's log-probs: only in a single process.

        trl writes them to a cache file beside the dataset and every rank reads that file; our
        datasets live in memory, so each process's cache path is its own temporary folder and the
        other ranks would not find rank 0's file. With several processes the reference runs at every
        step instead (the same values).
        """
        return self.precompute_ref_log_probs and self.num_processes == 1

    def fingerprint_fields(self) -> dict:
        """The settings that change the trained weights (reporting, evaluation and checkpointing do not)."""
        return {k: v for k, v in self.settings().items()
                if k not in ("report_to", "evaluate_held_in", "gradient_checkpointing")}

    def settings(self) -> dict:
        """This stage's settings as plain data (a subclass's extra fields left out)."""
        return self.model_dump(include=set(TrainConfig.model_fields))

    def uses_gradient_checkpointing(self, use_cuda: bool) -> bool:
        """The checkpointing setting, None resolved for the device: on with CUDA, off on CPU."""
        return use_cuda if self.gradient_checkpointing is None else self.gradient_checkpointing



def check_trackers(report_to: list[str]) -> None:
    """Refuse a tracker transformers does not know, or one whose package is not installed."""
    from transformers.integrations.integration_utils import (
        INTEGRATION_TO_CALLBACK,
        get_available_reporting_integrations,
    )

    for tracker in report_to:
        if tracker not in INTEGRATION_TO_CALLBACK:
            raise InputError(f"unknown tracker {tracker!r}; expected some of {sorted(INTEGRATION_TO_CALLBACK)}",
                             field="report_to")
        if tracker not in get_available_reporting_integrations():
            raise InputError(f"tracker {tracker!r} is not available: its package is not installed; expected it "
                             f"installed (`pip install {tracker}`) or {tracker!r} left out", field="report_to")


@dataclass
class TrainResult:
    output_dir: Path
    metrics: dict
    steps: int
    first_loss: float | None
    seconds: float
    was_skipped: bool = False  # True when OUT_DIR already held this training's result
    world_size: int = 1  # processes that trained together
    rank: int = 0  # this process's rank among them
    micro_batches: int | None = None  # forward/backward passes this process ran (None when skipped)


# -- pairs -------------------------------------------------------------------------------------------

def check_pair(obj: Any, *, path: str | Path | None = None, line: int | None = None,
               record: int | None = None) -> dict:
    """Validate one pair (``prompt``, ``chosen``, ``rejected``: non-empty strings; ``lang`` optional)."""
    where = dict(path=path, line=line, record=record)
    if not isinstance(obj, dict):
        raise InputError(f"expected a JSON object, found {type(obj).__name__}", **where)
    for name in ("prompt", "chosen", "rejected"):
        if name not in obj:
            raise InputError("missing field; expected prompt, chosen and rejected in every pair", field=name, **where)
        if not isinstance(obj[name], str) or not obj[name].strip():
            raise InputError(f"expected a non-empty string, found {obj[name]!r:.40}", field=name, **where)
    if "lang" in obj and not isinstance(obj["lang"], str):
        raise InputError(f"expected a language code string, found {obj['lang']!r}", field="lang", **where)
    return obj


def load_pairs_for_training(path: str | Path) -> list[dict]:
    """Read and validate a PAIRS.jsonl file (one pair a line)."""
    pairs = [check_pair(obj, path=path, line=line) for line, obj in iter_jsonl(path)]
    if not pairs:
        raise InputError("no pairs; expected at least one JSON line", path=path)
    return pairs


def _conversational(pairs: list[dict], loss: str, max_prompt_length: int | None, tokenizer: Any, seed: int):
    """trl's conversational dataset: paired for DPO/IPO, unpaired (shuffled with the seed) for KTO."""
    from datasets import Dataset

    def user(text: str) -> list[dict]:
        if max_prompt_length is not None:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            text = tokenizer.decode(ids[-max_prompt_length:]) if len(ids) > max_prompt_length else text
        return [{"role": "user", "content": text}]

    def assistant(text: str) -> list[dict]:
        return [{"role": "assistant", "content": text}]

    if loss != "kto":
        return Dataset.from_list([{"prompt": user(p["prompt"]), "chosen": assistant(p["chosen"]),
                                   "rejected": assistant(p["rejected"])} for p in pairs])
    rows = [{"prompt": user(p["prompt"]), "completion": assistant(p[key]), "label": key == "chosen"}
            for p in pairs for key in ("chosen", "rejected")]
    random.Random(seed).shuffle(rows)  # trl's KTO samples sequentially; mix desirable and undesirable
    return Dataset.from_list(rows)


# -- resumability ----------------------------------------------------------------------------------

def completed_training(output_dir: str | Path) -> dict | None:
    """The marker of a complete training in ``output_dir``, or None."""
    marker = Path(output_dir) / MARKER
    if not marker.exists():
        return None
    return json.loads(marker.read_text(encoding="utf-8"))


def training_fingerprint(model: str | tuple, pairs: list[dict], config: TrainConfig) -> str:
    """sha256 over the starting model, the pairs' texts and the settings that change the weights."""
    if isinstance(model, str):
        model_id = model
    else:  # an in-memory model: hash its weights (trl's helper)
        from trl.trainer.utils import hash_module

        model_id = f"{type(model[0]).__name__}:{hash_module(model[0])}"
    payload = {"model": model_id, "config": config.fingerprint_fields(),
               "pairs": [[p["prompt"], p["chosen"], p["rejected"]] for p in pairs], "format": _FORMAT_VERSION}
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False, sort_keys=True).encode()).hexdigest()


def _result_from_marker(output_dir: Path, meta: dict) -> TrainResult:
    return TrainResult(output_dir, meta["metrics"], meta["steps"], meta["first_loss"], meta["seconds"],
                       was_skipped=True)


# -- training ----------------------------------------------------------------------------------------

def _trl_args(config: TrainConfig, work_dir: str, *, use_cuda: bool, progress: bool,
              checkpoint_steps: int | None = None) -> Any:
    from trl import DPOConfig, KTOConfig

    common = dict(
        output_dir=work_dir, seed=config.seed, data_seed=config.seed, beta=config.beta,
        learning_rate=config.learning_rate, num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size, per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum, max_length=config.max_length,
        precompute_ref_log_probs=config.uses_precomputed_reference,
        lr_scheduler_type=config.lr_scheduler_type, warmup_steps=config.warmup_ratio,
        gradient_checkpointing=config.uses_gradient_checkpointing(use_cuda),
        # non-reentrant checkpointing works with frozen inputs (LoRA) and DDP; trl switches it back for LoRA + ZeRO-3
        gradient_checkpointing_kwargs={"use_reentrant": False},
        # bf16 on GPU (autocast, or DeepSpeed's bf16 mode); plain fp32 on CPU (trl would turn bf16 on everywhere).
        bf16=use_cuda, fp16=False, use_cpu=not use_cuda, dataloader_pin_memory=use_cuda,
        report_to=list(config.report_to) or "none", push_to_hub=False,
        # Resumable checkpoints (model, optimizer, scheduler, every rank's RNG) only where a restart can use them.
        save_strategy="steps" if checkpoint_steps else "no", save_steps=checkpoint_steps or 500,
        eval_strategy="no", logging_steps=0.02, logging_first_step=True,  # ~50 log rows
        disable_tqdm=not progress, remove_unused_columns=True,
    )
    if config.loss == "kto":
        return KTOConfig(**common, loss_type="kto")
    return DPOConfig(**common, loss_type=[config.loss, "sft"], loss_weights=[1.0, config.nll_weight])


#: Full fine-tuning of a larger model without ZeRO or LoRA is refused: fp32 weights, gradients and Adam's
#: two moments take 16 bytes a parameter per process (an 8B model: 128 GB), more than one 80 GB GPU holds.
FULL_FINE_TUNING_MAX_PARAMETERS = 3_000_000_000


def count_parameters(model: str | tuple) -> int | None:
    """Parameters of a model spec (a skeleton on the meta device: nothing loaded) or an in-memory model;
    None when the config cannot be read (a hub id offline)."""
    if not isinstance(model, str):
        return sum(p.numel() for p in model[0].parameters())
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from xlpref.models import _adapter_base, resolve_model_path

    path = resolve_model_path(model)
    try:
        model_config = AutoConfig.from_pretrained(_adapter_base(path) or path)
    except (OSError, ValueError):  # offline hub id, or an architecture this transformers does not know
        return None
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(model_config)
    return sum(p.numel() for p in skeleton.parameters())  # tied weights counted once


def check_full_fine_tuning(model: str | tuple, config: TrainConfig, *, is_deepspeed: bool) -> None:
    """Refuse full fine-tuning above :data:`FULL_FINE_TUNING_MAX_PARAMETERS` without ZeRO or LoRA."""
    if config.lora or is_deepspeed:
        return
    n = count_parameters(model)
    if n is not None and n > FULL_FINE_TUNING_MAX_PARAMETERS:
        raise InputError(
            f"full fine-tuning of {n / 1e9:.1f}B parameters needs about {16 * n / 1e9:.0f} GB per process (fp32 "
            "weights, gradients and Adam state) and is refused without ZeRO or LoRA; expected --deepspeed zero3 "
            "(with --launcher accelerate on several GPUs: the state is sharded over them) or --lora (a frozen bf16 "
            "base)", field="lora")


def training_dtypes(config: TrainConfig, *, use_cuda: bool, is_deepspeed: bool) -> tuple[Any, Any]:
    """(policy dtype, reference dtype) at load.

    On CPU both fp32. On CUDA the frozen reference is bf16 (it only runs forward, under bf16 autocast
    anyway); the policy is bf16 under DeepSpeed (which keeps its own fp32 master weights) and with LoRA
    (the base is frozen; peft keeps the adapters in fp32), and fp32 otherwise: a plain optimizer
    updates the weights themselves, and bf16 would round small updates away.
    """
    import torch

    if not use_cuda:
        return torch.float32, torch.float32
    policy = torch.bfloat16 if is_deepspeed or config.lora else torch.float32
    return policy, torch.bfloat16


def _load(model: str | tuple, dtype: Any = None, *, is_deepspeed: bool = False) -> tuple[Any, Any]:
    """A (model, tokenizer) to train. Under DeepSpeed the weights are not moved: the engine places them
    (and under ZeRO-3 ``from_pretrained`` already loaded this rank's shard)."""
    import torch

    from xlpref.models import _adapter_base, default_device, ensure_chat_template, load_model, resolve_model_path

    dtype = dtype or torch.float32
    if not isinstance(model, str):
        policy, tokenizer = model
    elif is_deepspeed and not _adapter_base(resolve_model_path(model)):
        from transformers import AutoModelForCausalLM

        from xlpref.models import _use_safetensors, load_tokenizer

        path = resolve_model_path(model)
        policy = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=_use_safetensors(path, False))
        tokenizer = load_tokenizer(model)
    else:
        policy, tokenizer = load_model(model, device=default_device(), dtype=dtype)
    return policy, ensure_chat_template(tokenizer)


def _reference_model(model: str | tuple, policy: Any, config: TrainConfig, dtype: Any, *, is_deepspeed: bool) -> Any:
    """The frozen reference that runs at every step, or None where trl needs none (LoRA disables the
    adapter; precomputed log-probs come from the policy before its first step).

    A spec is loaded again in ``dtype`` (bf16 on CUDA: half an fp32 copy, and under ZeRO-3 sharded like
    the policy); an in-memory policy has no path to load from and is copied.
    """
    if config.lora or config.uses_precomputed_reference:
        return None
    if not isinstance(model, str):
        return copy.deepcopy(policy).eval()
    reference, _ = _load(model, dtype, is_deepspeed=is_deepspeed)
    return reference.eval().requires_grad_(False)


def train_dpo(model: str | tuple, pairs: list[dict], output_dir: str | Path, config: TrainConfig,
              *, progress: bool = True, checkpoint_steps: int | None = None, callbacks: tuple = (),
              resume_from: str | Path | None = None) -> TrainResult:
    """Train ``model`` (a spec, or an in-memory ``(model, tokenizer)`` trained in place) on ``pairs``.

    Returns the result of the training already in ``output_dir`` when its fingerprint matches.

    ``checkpoint_steps``, ``callbacks`` and ``resume_from`` serve a supervisor that restarts failed
    ranks (:mod:`xlpref.ray_train`): the trainer saves a resumable checkpoint every ``checkpoint_steps``
    optimizer steps into its working folder (the callbacks' ``on_save`` sees it), and ``resume_from``
    (such a checkpoint) continues the same training from there.

    Raises:
        InputError: bad config or pairs, or ``output_dir`` holding something else.
    """
    config.validate()
    if not pairs:
        raise InputError("no pairs; expected at least one pair to train on")
    pairs = [check_pair(p, record=i) for i, p in enumerate(pairs)]
    output_dir = Path(output_dir)
    fingerprint = training_fingerprint(model, pairs, config)
    done = completed_training(output_dir)
    if done is not None:
        if done.get("fingerprint") == fingerprint:
            return _result_from_marker(output_dir, done)
        raise InputError("holds a model trained from other pairs, settings or starting model; remove it or "
                         "choose another output folder", path=output_dir)
    if output_dir.exists() and any(output_dir.iterdir()):
        raise InputError(f"exists and is not a finished training (no {MARKER}); expected a new or empty folder",
                         path=output_dir)

    import torch

    _check_world_size(config.num_processes, _launched_world_size())  # before loading: a wrong launch fails fast
    start = time.perf_counter()
    use_cuda = torch.cuda.is_available()
    config = config.model_copy(update={"gradient_checkpointing": config.uses_gradient_checkpointing(use_cuda)})  # as it ran
    with tempfile.TemporaryDirectory(prefix="xlpref-train-") as work_dir, \
            _completion_only_head(config.completion_only_head):
        # trl's config before the model: under ZeRO-3 it registers the DeepSpeed config that makes
        # from_pretrained load each rank's shard instead of the whole model on every rank.
        args = _trl_args(config, work_dir, use_cuda=use_cuda, progress=progress, checkpoint_steps=checkpoint_steps)
        is_deepspeed = getattr(args, "deepspeed_plugin", None) is not None
        check_full_fine_tuning(model, config, is_deepspeed=is_deepspeed)
        policy_dtype, reference_dtype = training_dtypes(config, use_cuda=use_cuda, is_deepspeed=is_deepspeed)
        policy, tokenizer = _load(model, policy_dtype, is_deepspeed=is_deepspeed)
        reference = _reference_model(model, policy, config, reference_dtype, is_deepspeed=is_deepspeed)
        dataset = _conversational(pairs, config.loss, config.max_prompt_length, tokenizer, config.seed)
        trainer = _build_trainer(policy, reference, tokenizer, dataset, config, args, progress=progress)
        accelerator = trainer.accelerator
        _check_world_size(config.num_processes, accelerator.num_processes)
        counter = _micro_batch_counter()
        trainer.add_callback(counter)
        if checkpoint_steps or resume_from is not None:
            trainer.add_callback(_resumable_totals(trainer, resume_from))  # before `callbacks` see the checkpoint
        for callback in callbacks:
            trainer.add_callback(callback)
        if resume_from is not None:  # the micro-batches before the checkpoint count too
            counter.count = _checkpoint_step(resume_from) * config.grad_accum
        output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from is not None else None)
        held_in = _held_in_metrics(trainer, config.beta) if config.evaluate_held_in else {}
        history = [row for row in trainer.state.log_history if "loss" in row]  # losses are averaged over ranks
        trained = trainer.model.merge_and_unload() if config.lora else trainer.model
        # Several processes: every rank takes part in gathering the weights (ZeRO-3 shards them), rank 0 writes.
        state_dict = None
        if accelerator.num_processes > 1:
            state_dict = trained.state_dict() if config.lora else accelerator.get_state_dict(trainer.model_wrapped)
        steps = trainer.state.global_step
        del trainer

        seconds = time.perf_counter() - start
        metrics = {**output.metrics, "loss_history": history, **({"held_in": held_in} if held_in else {})}
        meta = {
            "format": _FORMAT_VERSION, "fingerprint": fingerprint,
            "model": model if isinstance(model, str) else "in-memory", "config": config.settings(),
            "adapters_merged": config.lora, "n_pairs": len(pairs),
            "pairs_per_language": dict(Counter(p.get("lang", "unknown") for p in pairs)),
            "first_loss": history[0]["loss"] if history else None, "steps": steps, "seconds": seconds,
            "metrics": metrics, "versions": _versions(),
        }
        if accelerator.is_main_process:
            _save(trained, tokenizer, output_dir, meta, state_dict=state_dict, tracker_logs=Path(work_dir) / TRACKER_LOGS)
        accelerator.wait_for_everyone()  # the other ranks return once OUT exists
    return TrainResult(output_dir, metrics, steps, meta["first_loss"], seconds, world_size=accelerator.num_processes,
                       rank=accelerator.process_index, micro_batches=counter.count)


#: The run totals a trainer checkpoint lacks, saved beside it (see :func:`_resumable_totals`).
TOTALS = "xlpref_totals.json"


def _resumable_totals(trainer: Any, resume_from: str | Path | None) -> Any:
    """Keep the run's totals across a resume: the loss summed since the start, trl's token count.

    A trainer resumed from a checkpoint reports ``train_loss`` over the steps of its own ``train()``
    call only, and trl counts ``num_tokens`` from 0 again; the metrics of a training resumed after a
    failure would differ from the uninterrupted training's. This callback writes both totals into
    each checkpoint and, on resume, starts the trainer's running sums (transformers'
    ``_total_loss_scalar``, ``_initial_global_step``; trl's ``_total_train_tokens``) from them, so
    the sums continue in the same order as without the failure.
    """
    from transformers import TrainerCallback

    class ResumableTotals(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            totals = Path(resume_from) / TOTALS if resume_from is not None else None
            if totals is None or not totals.exists():
                return
            saved = json.loads(totals.read_text(encoding="utf-8"))
            trainer._total_loss_scalar = saved["loss_sum"]
            trainer._initial_global_step = 0  # train_loss: the sum over every step, divided by all of them
            if hasattr(trainer, "_total_train_tokens"):
                trainer._total_train_tokens = saved["train_tokens"]

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            totals = {"loss_sum": trainer._total_loss_scalar + float(trainer._tr_loss.item()),
                      "train_tokens": getattr(trainer, "_total_train_tokens", 0)}
            write_json_atomic(folder / TOTALS, totals)

    return ResumableTotals()


def _checkpoint_step(checkpoint: str | Path) -> int:
    """The optimizer step a trainer checkpoint was saved at (its ``trainer_state.json``)."""
    return int(json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))["global_step"])


def _launched_world_size() -> int:
    """The number of processes a launcher (torchrun, accelerate, mpirun) started, from its environment."""
    from accelerate.utils import get_int_from_env

    return get_int_from_env(["WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"], 1)


def _check_world_size(expected: int, actual: int) -> None:
    """Refuse to train when the process group is not the one the config asks for (e.g. N independent copies)."""
    if expected != actual:
        raise InputError(f"{expected}, but this process trains in a group of {actual}; start multi-process "
                         "training through xlpref.distributed (xlpref train --launcher accelerate|torchrun "
                         "--num-processes N), or set num_processes to the launcher's", field="num_processes")


def _micro_batch_counter() -> Any:
    """A trainer callback counting this process's forward/backward passes (one per micro-batch)."""
    from transformers import TrainerCallback

    class MicroBatchCounter(TrainerCallback):
        count = 0

        def on_substep_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.count += 1

        on_step_end = on_substep_end  # the last micro-batch of an optimizer step

    return MicroBatchCounter()


def _build_trainer(policy: Any, ref_model: Any, tokenizer: Any, dataset: Any, config: TrainConfig, args: Any, *,
                   progress: bool) -> Any:
    from trl import DPOTrainer, KTOTrainer

    peft_config = None
    if config.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                                 target_modules=config.lora_target_modules or "all-linear", task_type="CAUSAL_LM")
    # The reference is the starting policy (see _reference_model).
    trainer_cls = KTOTrainer if config.loss == "kto" else DPOTrainer
    with _datasets_progress(progress):
        trainer = trainer_cls(model=policy, ref_model=ref_model, args=args, train_dataset=dataset,
                              eval_dataset=dataset if config.evaluate_held_in else None,
                              processing_class=tokenizer, peft_config=peft_config)
    if not progress:
        from transformers import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # the log lines transformers prints instead of a bar
    return trainer


@contextlib.contextmanager
def _completion_only_head(is_enabled: bool) -> Iterator[None]:
    """Project only the positions that carry a label through the LM head, on every device.

    trl 1.16's fused LM head (``trl.trainer.utils.add_fused_lm_head``, which computes the log-probs in
    vocabulary tiles without the full logits) scores only the labelled positions where Triton folds
    the tiles (CUDA, XPU); on other devices it projects *every* position -- prompt and padding
    included -- and masks the results afterwards, so that tile shapes stay fixed for compilers
    (Neuron). On CPU nothing is compiled, and with Gemma's 262k vocabulary the projection is most
    of a step, so trl's own choice (``trl.trainer.utils._use_triton``, read only for this decision)
    is set to "compact" while the trainer lives. The values are the same: only rows whose results
    trl would have zeroed are left out (``tests/test_training.py`` compares the first loss).
    """
    import trl.trainer.utils as trl_utils

    original = getattr(trl_utils, "_use_triton", None)
    if not is_enabled or original is None:
        if is_enabled:
            log.warning("this trl has no trl.trainer.utils._use_triton; the LM head runs at every position")
        yield
        return
    trl_utils._use_triton = lambda device: True
    try:
        yield
    finally:
        trl_utils._use_triton = original


@contextlib.contextmanager
def _datasets_progress(is_shown: bool) -> Iterator[None]:
    """Hide the ``datasets`` tokenising bars while trl prepares the data, when asked."""
    import datasets

    was_shown = datasets.is_progress_bar_enabled()
    if not is_shown:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_shown and not is_shown:
            datasets.enable_progress_bars()


def _held_in_metrics(trainer: Any, beta: float) -> dict:
    """trl's evaluation on the training pairs, after training, plus the margins it implies.

    trl reports the policy's mean summed log-probs and ``beta`` times the log-ratios to the
    reference; the reference's log-probs follow from the two, so one pass gives before and after.
    """
    raw = {key.removeprefix("eval_"): value for key, value in trainer.evaluate().items()
           if not key.endswith(("_runtime", "_per_second"))}
    if not {"logps/chosen", "logps/rejected", "rewards/chosen", "rewards/rejected"} <= raw.keys():
        return raw  # KTO reports other keys
    ref_chosen = raw["logps/chosen"] - raw["rewards/chosen"] / beta
    ref_rejected = raw["logps/rejected"] - raw["rewards/rejected"] / beta
    return {**raw, "logp_margin_reference": ref_chosen - ref_rejected,
            "logp_margin_policy": raw["logps/chosen"] - raw["logps/rejected"],
            "implicit_reward_margin": raw["rewards/margins"] / beta}


def _versions() -> dict:
    import peft
    import torch
    import transformers
    import trl

    return {"trl": trl.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "torch": torch.__version__}


def _save(model: Any, tokenizer: Any, output_dir: Path, meta: dict, *, state_dict: dict | None = None,
          tracker_logs: Path | None = None) -> None:
    """Write the folder into ``OUT.tmp`` (marker last) and rename it to ``OUT``.

    ``state_dict``: the weights gathered from all ranks (multi-process); ``tracker_logs``: a folder of
    tracker event files, copied to ``OUT/runs`` when it exists.
    """
    tmp = output_dir.with_name(output_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if tracker_logs is not None and tracker_logs.is_dir():
        shutil.copytree(tracker_logs, tmp / TRACKER_LOGS)
    write_json_atomic(tmp / MARKER, meta)
    if output_dir.exists():  # an empty folder (checked by the caller)
        output_dir.rmdir()
    os.replace(tmp, output_dir)
