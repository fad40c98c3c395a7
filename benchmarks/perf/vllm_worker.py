"""The vLLM half of the sampling section, run in its own process (vLLM spawns workers and keeps state).

Reads a JSON job, writes a JSON result:

- engine start-up seconds (``xlpref.sampling_vllm.VLLMSampler``, the project's backend);
- sampling: the job's requests with ``n`` samples each, generated tokens and seconds (the first call
  is timed apart as warm-up);
- scoring with ``prompt_logprobs`` (vLLM's candidate scoring path): each (prompt, response) as one
  prompt, ``max_tokens=1``, the actual tokens' log-probabilities summed over the response positions.
  Twice: vLLM's default (a request asking for prompt log-probabilities skips reading the prefix
  cache) and ``skip_reading_prefix_cache=False`` (the cached prompt blocks are reused; vLLM then
  returns log-probabilities only for the uncomputed positions, which still cover the response when
  its prompt is cached, checked per item).

Example::

    python -m benchmarks.perf.vllm_worker job.json result.json
"""

from __future__ import annotations

import json
import sys
import time


def _score(llm, items: list, **extra) -> dict:
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, **extra)
    prompts = [{"prompt_token_ids": p + r} for p, r in items]
    llm.reset_prefix_cache()  # no variant may reuse blocks another run computed
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    sums, uncovered = [], 0
    for (prompt, response), output in zip(items, outputs):
        logprobs = output.prompt_logprobs or []
        # Entries are aligned to the end of the prompt; the first token (and cached blocks) have none.
        tokens = prompt + response
        offset = len(tokens) - len(logprobs)
        total = 0.0
        for position in range(len(prompt), len(tokens)):
            entry = logprobs[position - offset] if position >= offset else None
            if entry is None:
                uncovered += 1
                continue
            total += entry[tokens[position]].logprob
        sums.append(total)
    return {"seconds": seconds, "sums": sums, "uncovered_positions": uncovered}


def main(job_path: str, out_path: str) -> None:
    job = json.loads(open(job_path, encoding="utf-8").read())
    from xlpref.sampling import SampleRequest, SamplingParams
    from xlpref.sampling_vllm import VLLMSampler

    from transformers import AutoConfig

    from xlpref.models import resolve_model_path

    # A bounded context keeps the KV cache small; never above what the model itself allows.
    config = AutoConfig.from_pretrained(resolve_model_path(job["model"])).get_text_config()
    max_model_len = min(job.get("max_model_len", 4096), getattr(config, "max_position_embeddings", None) or 4096)
    result: dict = {}
    start = time.perf_counter()
    sampler = VLLMSampler(job["model"], max_model_len=max_model_len, kv_cache_gib=job.get("kv_cache_gib", 1.0))
    result["startup_seconds"] = time.perf_counter() - start
    requests = [SampleRequest(r["id"], r["lang"], r["prompt"], r["prompt_en"]) for r in job["requests"]]
    warm = SamplingParams(n=1, max_new_tokens=4, batch_size=len(requests))
    tick = time.perf_counter()
    sampler.sample(requests[:1], warm, progress=False)
    result["warmup_seconds"] = time.perf_counter() - tick
    result["sampling"] = []
    for n in job["n"]:
        params = SamplingParams(n=n, max_new_tokens=job["max_new_tokens"], batch_size=len(requests),
                                seed=job.get("seed", 42))
        tick = time.perf_counter()
        records = sampler.sample(requests, params, progress=False)
        result["sampling"].append({"n": n, "sequences": len(records), "seconds": time.perf_counter() - tick,
                                   "tokens": sum(r["n_response_tokens"] for r in records)})
    items = [(list(p), list(r)) for p, r in job.get("score_items", [])]
    if items:
        _score(sampler.llm, items[:1])  # warm-up: the first prompt_logprobs request allocates its buffers
        result["scoring"] = {"default": _score(sampler.llm, items),
                             "prefix_cached": _score(sampler.llm, items, skip_reading_prefix_cache=False)}
    sampler.close()
    with open(out_path, "w", encoding="utf-8") as handle:
        json.dump(result, handle)


if __name__ == "__main__":  # vLLM's engine spawns processes that import this module again
    main(sys.argv[1], sys.argv[2])
