"""DPO training: pairs/s of ``xlpref.training.train_dpo`` with its speed settings against trl's defaults.

Both runs are the same call, :func:`xlpref.training.train_dpo`, on the same in-memory copy of the model,
the same pairs and the same training config (LoRA or full, beta, learning rate, epochs, batch, length,
DPO + NLL). The baseline turns the speed settings off, which is trl's default behaviour on this device
(``precompute_ref_log_probs=False``: the reference forward runs at every step of every epoch;
``completion_only_head=False``: off CUDA, trl's fused LM head projects every position, prompt and
padding included, through the vocabulary); ours keeps :class:`xlpref.training.TrainConfig`'s defaults
(both on). Timed: trainer set-up (including the reference precomputation), training, LoRA merge and
save -- model loading excluded from both. Runs alternate (ABBA over ``repeats``).
Checked: the first logged loss (step 1, before any update) of both, which must agree within 1e-4.

Pairs: the mini set's English preference pairs (``benchmarks/x_alpacaeval/mini/preference_pairs/en.jsonl``).

Example::

    from benchmarks.perf.bench_training import TrainingBenchConfig, run_training
    print(run_training(TrainingBenchConfig(model="tiny-random-llama", pairs=8, epochs=1.0)))
"""

from __future__ import annotations

import copy
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainingBenchConfig:
    model: str = "gemma-3-270m"
    pairs: int = 16
    epochs: float = 2.0
    lora: bool = True
    batch_size: int = 4
    max_length: int = 192
    learning_rate: float = 1e-4
    repeats: int = 1
    speed_options: dict = field(default_factory=dict)  # on top of TrainConfig's defaults (ours)
    baseline_options: dict = field(default_factory=lambda: {"precompute_ref_log_probs": False,
                                                            "completion_only_head": False})

    @classmethod
    def quick(cls, model: str = "gemma-3-270m") -> "TrainingBenchConfig":
        return cls(model=model, pairs=8, epochs=2.0, batch_size=4, max_length=128)


def training_pairs(n: int) -> list[dict]:
    from xlpref.data import MINI_DIR, load_preference_pairs

    pairs = load_preference_pairs(MINI_DIR / "preference_pairs" / "en.jsonl")
    return [{"lang": "en", "prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs[:n]]


def _train_once(model: Any, tokenizer: Any, pairs: list[dict], config: Any) -> tuple[float, Any]:
    from xlpref.training import train_dpo

    fresh = copy.deepcopy(model)
    with tempfile.TemporaryDirectory(prefix="xlpref-bench-train-") as folder:
        start = time.perf_counter()
        result = train_dpo((fresh, tokenizer), pairs, Path(folder) / "out", config, progress=False)
        seconds = time.perf_counter() - start
    del fresh
    return seconds, result


def run_training(config: TrainingBenchConfig, *, log: Any = print) -> dict:
    """Pairs/s of both settings and their first-step losses."""
    from xlpref.models import load_model
    from xlpref.training import TrainConfig

    model, tokenizer = load_model(config.model)
    pairs = training_pairs(config.pairs)
    common = dict(lora=config.lora, lora_r=16, lora_alpha=32, learning_rate=config.learning_rate, epochs=config.epochs,
                  batch_size=config.batch_size, max_length=config.max_length)
    settings = {"naive": TrainConfig(**common, **config.baseline_options),
                "ours": TrainConfig(**common, **config.speed_options)}
    seconds: dict[str, list[float]] = {"naive": [], "ours": []}
    first_loss: dict[str, float | None] = {}
    steps: dict[str, int] = {}
    for name in (["naive", "ours", "ours", "naive"] * config.repeats)[: 2 * config.repeats]:
        took, result = _train_once(model, tokenizer, pairs, settings[name])
        seconds[name].append(took)
        first_loss[name], steps[name] = result.first_loss, result.steps
        log(f"training ({name}): {took:.0f} s, {result.steps} steps, first loss {result.first_loss}")
    best = {name: min(values) for name, values in seconds.items()}
    examples = len(pairs) * config.epochs
    is_comparable = first_loss["ours"] is not None and first_loss["naive"] is not None
    return {
        "model": config.model, "pairs": len(pairs), "epochs": config.epochs,
        "setup": f"{'LoRA r16' if config.lora else 'full'}, {len(pairs)} pairs x {config.epochs:g} epochs, "
                 f"batch {config.batch_size}; trl defaults = {', '.join(f'{k}={v}' for k, v in config.baseline_options.items())}",
        "speed_options": {name: getattr(settings["ours"], name) for name in config.baseline_options},
        "baseline_options": config.baseline_options, "seconds": best, "steps": steps,
        "pairs_per_s": {name: examples / s for name, s in best.items()},
        "first_loss": first_loss,
        "first_loss_difference": abs(first_loss["ours"] - first_loss["naive"]) if is_comparable else None,
    }
