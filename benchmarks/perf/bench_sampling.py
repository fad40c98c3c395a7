"""Sampling: generated tokens/s of the hf backend at batch 16 and of vLLM against one prompt at a time.

Workload: the mini set's evaluation instructions, languages cycled (the target-language prompt in the
chat template, as the sampler sends it). Counted tokens are the responses' own (``n_response_tokens``:
up to the end of turn), so a batch running on after some rows stopped is not credited for padding.

- baseline: transformers ``generate`` one prompt at a time (``xlpref.sampling`` hf, batch 1) on the
  first ``baseline_prompts`` prompts (a rate; fewer prompts keep it affordable);
- ours: hf at ``batch_size`` on all prompts, interleaved with the baseline in this process;
- vLLM (CPU build) in a subprocess (:mod:`benchmarks.perf.vllm_worker`): engine start-up timed apart,
  then the prompts with n = 1 and n = ``vllm_n``; from the rates, the amount of generated tokens from
  which vLLM's start-up is paid back against hf batch 16;
- vLLM's ``prompt_logprobs`` as a scoring backend (one model) against ours
  (:func:`xlpref.logprobs.response_logprobs`, run before and after the worker, the best counts) on the
  same items, sums compared.

Example::

    from benchmarks.perf.bench_sampling import SamplingBenchConfig, run_sampling
    print(run_sampling(SamplingBenchConfig(model="tiny-random-llama", prompts=4, is_vllm=False)))
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class SamplingBenchConfig:
    model: str = "gemma-3-270m"
    prompts: int = 16
    baseline_prompts: int = 4
    batch_size: int = 16
    max_new_tokens: int = 64
    repeats: int = 1
    is_vllm: bool = True
    vllm_n: int = 2
    vllm_timeout_s: int = 1200
    score_k: int = 10  # vLLM scoring comparison: one prompt, score_k responses
    seed: int = 42

    @classmethod
    def quick(cls, model: str = "gemma-3-270m") -> "SamplingBenchConfig":
        return cls(model=model, prompts=8, baseline_prompts=2, batch_size=8, max_new_tokens=16, vllm_n=2, score_k=4)


def sampling_requests(n: int) -> list:
    from xlpref.data import MINI_DIR
    from xlpref.sampling_prompts import requests_from_prompts

    langs = ["en", "es", "de", "fr", "ru", "zh"]
    by_lang = requests_from_prompts(MINI_DIR / "x_alpacaeval" / "instructions", langs, limit=-(-n // len(langs)))
    per_lang = {lang: [r for r in by_lang if r.lang == lang] for lang in langs}
    ordered = [per_lang[langs[i % len(langs)]][i // len(langs)] for i in range(n)]
    return ordered


def _tokens(records: list[dict]) -> int:
    return sum(r["n_response_tokens"] for r in records)


def run_vllm_worker(job: dict, timeout_s: int) -> dict:
    """Run :mod:`benchmarks.perf.vllm_worker` in a fresh process; ``{"error": ...}`` when it fails."""
    with tempfile.TemporaryDirectory(prefix="xlpref-bench-vllm-") as folder:
        job_path, out_path = Path(folder) / "job.json", Path(folder) / "result.json"
        job_path.write_text(json.dumps(job), encoding="utf-8")
        start = time.perf_counter()
        try:
            done = subprocess.run([sys.executable, "-m", "benchmarks.perf.vllm_worker", str(job_path), str(out_path)],
                                  capture_output=True, text=True, timeout=timeout_s,
                                  cwd=Path(__file__).resolve().parents[2])
        except subprocess.TimeoutExpired:
            return {"error": f"vLLM worker exceeded {timeout_s} s"}
        if done.returncode != 0 or not out_path.exists():
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            return {"error": f"vLLM worker exit code {done.returncode}: {' | '.join(tail)}"}
        result = json.loads(out_path.read_text(encoding="utf-8"))
        result["process_seconds"] = time.perf_counter() - start
        return result


def break_even_tokens(startup_s: float, vllm_rate: float, hf_rate: float) -> float | None:
    """Generated tokens from which start-up + work at ``vllm_rate`` beats work at ``hf_rate`` (None: never)."""
    if vllm_rate <= hf_rate:
        return None
    return startup_s / (1.0 / hf_rate - 1.0 / vllm_rate)


def run_sampling(config: SamplingBenchConfig, *, log: Any = print) -> dict:
    """hf batch vs one-at-a-time rates, vLLM's start-up, rates and break-even, vLLM scoring vs ours."""
    from benchmarks.perf.bench_scoring import scoring_items
    from xlpref.logprobs import response_logprobs
    from xlpref.sampling import SamplingParams, make_sampler

    requests = sampling_requests(config.prompts)
    start = time.perf_counter()
    sampler = make_sampler("hf", config.model)
    load_seconds = time.perf_counter() - start
    sampler.sample(requests[:1], SamplingParams(max_new_tokens=4), progress=False)  # warm-up
    settings = {"ours": (requests, config.batch_size), "naive": (requests[: config.baseline_prompts], 1)}
    runs: dict[str, list[tuple[int, float]]] = {"ours": [], "naive": []}
    for name in (["naive", "ours", "ours", "naive"] * config.repeats)[: 2 * config.repeats]:
        todo, batch_size = settings[name]
        params = SamplingParams(n=1, max_new_tokens=config.max_new_tokens, batch_size=batch_size, seed=config.seed)
        tick = time.perf_counter()
        records = sampler.sample(todo, params, progress=False)
        runs[name].append((_tokens(records), time.perf_counter() - tick))
    rates = {name: max(t / s for t, s in values) for name, values in runs.items()}
    log(f"sampling: hf batch {config.batch_size} {rates['ours']:.1f} tok/s, one at a time {rates['naive']:.1f} tok/s")
    result: dict[str, Any] = {
        "model": config.model, "config": dict(config.__dict__), "hf_load_seconds": load_seconds,
        "hf": {"batch_tokens_per_s": rates["ours"], "single_tokens_per_s": rates["naive"],
               "runs": {name: [{"tokens": t, "seconds": s} for t, s in values] for name, values in runs.items()}},
    }
    items = scoring_items(sampler.tokenizer, 1, config.score_k, 32, 192, seed=2)
    score_tokens = sum(len(r) for _, r in items)

    def score_ours() -> list[float]:
        tick = time.perf_counter()
        sums = response_logprobs(sampler.model, items)
        ours_seconds.append(time.perf_counter() - tick)
        return sums

    ours_seconds: list[float] = []
    ours_sums = score_ours()
    result["scoring_one_model"] = {"response_tokens": score_tokens, "ours_seconds": ours_seconds}
    if not config.is_vllm:
        result["scoring_one_model"]["ours_tokens_per_s"] = score_tokens / min(ours_seconds)
        sampler.close()
        result["vllm"] = {"error": "skipped (--no-vllm)"}
        return result
    job = {"model": config.model, "max_new_tokens": config.max_new_tokens, "n": [1, config.vllm_n], "seed": config.seed,
           "requests": [{"id": r.id, "lang": r.lang, "prompt": r.prompt, "prompt_en": r.prompt_en} for r in requests],
           "score_items": items}
    log("sampling: starting the vLLM worker (engine start-up is timed apart)")
    vllm = run_vllm_worker(job, config.vllm_timeout_s)
    score_ours()  # ours again after vLLM, so both sides saw the machine at two moments; the best counts
    result["scoring_one_model"]["ours_tokens_per_s"] = score_tokens / min(ours_seconds)
    sampler.close()
    result["vllm"] = vllm
    if "error" in vllm:
        log(f"sampling: vLLM not measured: {vllm['error']}")
        return result
    for row in vllm["sampling"]:
        row["tokens_per_s"] = row["tokens"] / row["seconds"]
    first = vllm["sampling"][0]
    vllm["break_even_tokens_vs_hf_batch"] = break_even_tokens(vllm["startup_seconds"], first["tokens_per_s"],
                                                              rates["ours"])
    for variant in vllm.get("scoring", {}).values():
        variant["tokens_per_s"] = score_tokens / variant["seconds"]
        variant["max_abs_difference_vs_ours"] = max(abs(a - b) for a, b in zip(variant.pop("sums"), ours_sums))
    log(f"sampling: vLLM start-up {vllm['startup_seconds']:.0f} s, {first['tokens_per_s']:.1f} tok/s at n=1")
    return result
