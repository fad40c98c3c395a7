"""Scale: hf sampling and scoring on 2 Ray workers of 1 thread against 1 worker of 1 thread.

Each worker is a process with one torch thread and its own copy of the model(s)
(:mod:`xlpref.ray_stages`). Timed apart: Ray's start-up, each worker's model loading (the stage
clock starts once every worker has loaded), and the stage itself. The per-shard overhead is the time
workers spent not computing, per shard: ``(wall x workers - sum of in-worker seconds) / shards``
(dispatch, (de)serialisation, the driver's appends, and a worker idling at the end of the queue).
Both worker counts must write the same samples and log-probabilities, as the tests check. Scoring
uses the model as policy and reference (one forward pass per item, reward 0): the rate is that of
one model; the real stage runs two.

Example::

    from benchmarks.perf.bench_scale import ScaleConfig, run_scale
    print(run_scale(ScaleConfig(model="tiny-random-llama", prompts=4, max_new_tokens=8)))
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from benchmarks.perf.bench_sampling import sampling_requests


@dataclass
class ScaleConfig:
    model: str = "gemma-3-270m"
    prompts: int = 16
    n: int = 2
    max_new_tokens: int = 48
    batch_size: int = 2
    max_batch_tokens: int = 32  # small scoring blocks (a prompt group or two): enough shards for two workers
    worker_counts: tuple[int, ...] = (1, 2)

    @classmethod
    def quick(cls, model: str = "gemma-3-270m") -> "ScaleConfig":
        return cls(model=model, prompts=8, max_new_tokens=16)


def _timed_stage(pool: Any, run: Any) -> dict:
    """Wait for every worker's models, then time ``run()``; the pool's report with wall and overhead."""
    load = pool.worker_info()
    start = time.perf_counter()
    result = run()
    wall = time.perf_counter() - start
    report = pool.report
    busy = sum(worker["seconds"] for worker in report["per_worker"])
    shards = sum(worker["shards"] for worker in report["per_worker"])
    return {"result": result, "wall_seconds": wall, "shards": shards,
            "load_seconds": [worker["load_seconds"] for worker in load],
            "overhead_ms_per_shard": 1000 * (wall * len(load) - busy) / max(shards, 1),
            "per_worker": report["per_worker"]}


def run_scale(config: ScaleConfig, *, log: Any = print) -> dict:
    import ray

    from xlpref.cluster import ComputeConfig
    from xlpref.ray_stages import RaySampler, RayScorer
    from xlpref.reward import score_records
    from xlpref.sampling import SamplingParams

    requests = sampling_requests(config.prompts)
    params = SamplingParams(n=config.n, max_new_tokens=config.max_new_tokens, batch_size=config.batch_size, seed=1)
    start = time.perf_counter()
    ray.init(address="local", num_cpus=max(config.worker_counts), include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    out: dict[str, Any] = {"config": config.__dict__ | {"worker_counts": list(config.worker_counts)},
                           "ray_startup_seconds": time.perf_counter() - start, "sampling": {}, "scoring": {}}
    try:
        samples: list[dict] | None = None
        for workers in config.worker_counts:
            compute = ComputeConfig(engine="ray", workers=workers, cpus_per_worker=1)
            log(f"scale: hf sampling on {workers} worker(s)")
            sampler = RaySampler("hf", config.model, compute)
            try:
                run = _timed_stage(sampler.pool, lambda: sampler.sample(requests, params, progress=False))
            finally:
                sampler.close()
            records = run.pop("result")
            samples = samples or records
            run["tokens"] = sum(r["n_response_tokens"] for r in records)
            run["equal_to_first"] = records == samples
            out["sampling"][str(workers)] = run

            log(f"scale: scoring on {workers} worker(s)")
            scorer = RayScorer(compute, config.model, config.model, "multilingual", token_span="authors",
                               max_batch_tokens=config.max_batch_tokens)
            try:
                run = _timed_stage(scorer.pool, lambda: score_records(
                    samples, None, None, None, "multilingual", progress=False, scorer=scorer,
                    max_batch_tokens=config.max_batch_tokens))
            finally:
                scorer.close()
            scored = run.pop("result")
            run["tokens"] = sum(r["n_response_tokens"] for r in scored)
            run["rewards"] = [r["logp_policy"] for r in scored]
            out["scoring"][str(workers)] = run
    finally:
        ray.shutdown()
    first, last = str(config.worker_counts[0]), str(config.worker_counts[-1])
    for stage in ("sampling", "scoring"):
        runs = out[stage]
        runs["speedup"] = runs[first]["wall_seconds"] / runs[last]["wall_seconds"]
    rewards = [out["scoring"][str(w)].pop("rewards") for w in config.worker_counts]
    out["scoring"]["max_logp_difference"] = max(abs(a - b) for a, b in zip(rewards[0], rewards[-1]))
    return out
