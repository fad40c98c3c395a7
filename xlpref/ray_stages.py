"""Data-parallel stages on Ray: worker actors that each load their model(s) once and pull shards.

A stage's work is planned on the driver exactly as a local run plans it: a shard is one sampling
batch (:meth:`xlpref.sampling.HFSampler.plan`, seeded from its first request) or one scoring block
(whole prompt groups, :class:`xlpref.reward.BlockScorer`). :class:`WorkerPool` starts
``compute.workers`` actors and hands each idle one the next shard (a slow worker takes fewer); records
stream back to the driver, which appends them to the stage's own record log. So N workers write what
one worker writes, resume and de-duplication stay in :class:`xlpref.records.RecordLog`, and the
workers need no shared filesystem for records (models are read by hub id or from a path every node
can read).

A worker process that dies mid-shard (killed, out of memory) is restarted by Ray (``max_restarts``),
loads its models again, and its shard is run again (``max_task_retries``); the driver sees the
shard's records once.

Example::

    from xlpref.cluster import ComputeConfig
    from xlpref.ray_stages import make_stage_sampler
    from xlpref.sampling import SamplingParams
    sampler = make_stage_sampler("hf", "tiny-random-llama", ComputeConfig(engine="ray", workers=2))
    records = sampler.sample(requests, SamplingParams(n=2, max_new_tokens=16))
    sampler.close()
    print(sampler.report["per_worker"])
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections import deque
from typing import Any, Callable, Collection, Iterator, Sequence

from xlpref.cluster import ComputeConfig, ray_session
from xlpref.errors import InputError

#: Restarts of a dead worker actor, and reruns of the shard it held, before the stage fails.
MAX_RESTARTS = 3


class ShardWorker:
    """One worker actor: builds its job (loads models) once, then runs shards; ``build()`` returns ``job(shard)``."""

    def __init__(self, build: Callable[[], Callable[[Any], list[dict]]], threads: int) -> None:
        import torch

        # One process per worker: more torch threads than the worker's CPUs only make workers wait on each other.
        torch.set_num_threads(threads)
        start = time.perf_counter()
        self.job = build()
        self.load_seconds = time.perf_counter() - start

    def info(self) -> dict:
        import ray

        return {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                "load_seconds": round(self.load_seconds, 3)}

    def run(self, shard: Any) -> tuple[list[dict], float, str]:
        import ray

        start = time.perf_counter()
        records = self.job(shard)
        return records, time.perf_counter() - start, ray.get_runtime_context().get_node_id()


class WorkerPool:
    """``compute.workers`` :class:`ShardWorker` actors on the Ray cluster of ``compute`` (started or joined).

    Args:
        compute: engine, address, workers and their CPUs/GPUs.
        build: a picklable function, called once in each worker, that loads the models and returns ``job(shard)``.
        stage: the stage's name in :attr:`report`.
    """

    def __init__(self, compute: ComputeConfig, build: Callable[[], Callable[[Any], list[dict]]], *,
                 stage: str) -> None:
        self.compute, self.stage = compute, stage
        self._session = contextlib.ExitStack()
        start = time.perf_counter()
        self._session.enter_context(ray_session(compute))
        import ray

        self._ray = ray
        self.startup_seconds = time.perf_counter() - start
        remote = ray.remote(ShardWorker).options(
            num_cpus=compute.cpus_per_worker, num_gpus=compute.gpus_per_worker, max_restarts=MAX_RESTARTS,
            max_task_retries=MAX_RESTARTS, scheduling_strategy="SPREAD")
        threads = max(1, int(compute.cpus_per_worker))
        self.actors = [remote.remote(build, threads) for _ in range(compute.workers)]
        self.stats = [{"worker": w, "node": None, "shards": 0, "records": 0, "seconds": 0.0}
                      for w in range(compute.workers)]

    def map(self, shards: Sequence[Any]) -> Iterator[tuple[int, list[dict]]]:
        """``(shard index, records)`` as shards finish, each idle worker taking the next shard in the queue."""
        ray = self._ray
        queue = deque(enumerate(shards))
        pending: dict[Any, tuple[int, int]] = {}

        def give(worker: int) -> None:
            if queue:
                index, shard = queue.popleft()
                pending[self.actors[worker].run.remote(shard)] = (worker, index)

        for worker in range(len(self.actors)):
            give(worker)
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            worker, index = pending.pop(ref)
            try:
                records, seconds, node = ray.get(ref)
            except ray.exceptions.RayTaskError as error:
                if isinstance(error.cause, InputError):
                    raise error.cause from None
                raise
            except ray.exceptions.RayActorError as error:
                # Loading failed in the worker, or it died more than MAX_RESTARTS times.
                raise RuntimeError(f"{self.stage}: worker {worker} is gone (shard {index}, restarts allowed: "
                                   f"{MAX_RESTARTS}): {str(error).splitlines()[0]}; see the Ray logs") from error
            stats = self.stats[worker]
            stats.update(node=node, shards=stats["shards"] + 1, records=stats["records"] + len(records),
                         seconds=stats["seconds"] + seconds)
            give(worker)
            yield index, records

    @property
    def report(self) -> dict:
        """Workers, nodes and per-worker shards, records and seconds (for the stage summary)."""
        per_worker = [{**s, "seconds": round(s["seconds"], 3)} for s in self.stats]
        return {"engine": "ray", "workers": len(self.stats), "ray_startup_seconds": round(self.startup_seconds, 3),
                "nodes": len({s["node"] for s in per_worker if s["node"]}), "per_worker": per_worker}

    def worker_info(self) -> list[dict]:
        """Node, process id and model loading seconds of each worker (waits until all have loaded)."""
        return self._ray.get([actor.info.remote() for actor in self.actors])

    def close(self) -> None:
        """Record each worker's process and model loading seconds in the stats, stop the workers, leave the session."""
        if self.actors:
            with contextlib.suppress(Exception):  # a worker that cannot answer has no loading time to report
                for stats, info in zip(self.stats, self.worker_info()):
                    stats.update(pid=info["pid"], load_seconds=info["load_seconds"])
        for actor in self.actors:
            self._ray.kill(actor)
        self.actors = []
        self._session.close()


# -- sampling ----------------------------------------------------------------------------------------

def make_stage_sampler(backend: str, model: Any, compute: ComputeConfig | None = None,
                       **backend_options: Any) -> Any:
    """The sampler a stage runs: :func:`xlpref.sampling.make_sampler` here, or :class:`RaySampler` for
    ``compute.engine == "ray"`` (``compute.workers`` actors, each with its own such sampler)."""
    if compute is not None and compute.engine == "ray":
        return RaySampler(backend, model, compute, **backend_options)
    from xlpref.sampling import make_sampler

    return make_sampler(backend, model, **backend_options)


class _BatchSampler:
    """A worker's job for sampling: its own sampler; a shard is ``(requests of one batch, params)``."""

    def __init__(self, backend: str, model: str, options: dict) -> None:
        from xlpref.sampling import make_sampler

        self.sampler = make_sampler(backend, model, **options)

    def __call__(self, shard: tuple[list, Any]) -> list[dict]:
        requests, params = shard
        return self.sampler.sample_batch(requests, params)


class RaySampler:
    """The :class:`xlpref.sampling.Sampler` interface over worker actors, one sampler (model, vLLM engine) each.

    The batches are the backend's own plan (its ``plan`` on the driver's tokenizer), so the records
    equal the local backend's. ``report`` holds the pool's per-worker summary after :meth:`close`.
    """

    def __init__(self, backend: str, model: Any, compute: ComputeConfig, **backend_options: Any) -> None:
        from xlpref.models import load_tokenizer
        from xlpref.registry import resolve

        if not isinstance(model, str):
            raise InputError("compute.engine 'ray' loads models in its workers; expected a model spec, hub id or "
                             "a folder every node can read, not an in-memory (model, tokenizer) pair",
                             field="compute.engine")
        self.name, self.model_name = backend, model
        self.backend_cls = resolve("sampler", backend)
        self.tokenizer = load_tokenizer(model)  # plans the batches; fails on a bad spec before any worker starts
        self.pool = WorkerPool(compute, functools.partial(_BatchSampler, backend, model, backend_options),
                               stage=f"sampling ({backend})")
        self.report: dict = {}

    def plan(self, tokenizer: Any, requests: Sequence, params: Any, skip: Collection[tuple] = ()) -> list[list[int]]:
        return self.backend_cls.plan(tokenizer, requests, params, skip)

    def sample(self, requests: Sequence, params: Any, *, skip_keys: Collection[tuple] = (),
               on_records: Callable[[list[dict]], None] | None = None, progress: bool = True) -> list[dict]:
        from xlpref.sampling import advance, check_unique, in_request_order, progress_bar

        check_unique(requests)
        skip = set(skip_keys)
        batches = self.plan(self.tokenizer, requests, params, skip)
        out: list[dict] = []
        with progress_bar(sum(len(b) for b in batches) * params.n, progress, f"sampling ({self.name}, ray)") as bar:
            start = time.perf_counter()
            shards = [([requests[i] for i in batch], params) for batch in batches]
            for _, records in self.pool.map(shards):
                new = [rec for rec in records if (rec["lang"], rec["id"], rec["sample_index"]) not in skip]
                advance(bar, len(records), sum(r["n_response_tokens"] for r in records), time.perf_counter() - start)
                start = time.perf_counter()
                if on_records is not None and new:
                    on_records(new)
                out.extend(new)
        self.report = self.pool.report
        return in_request_order(out, requests)

    def close(self) -> None:
        self.pool.close()
        self.report = self.pool.report


# -- scoring -----------------------------------------------------------------------------------------

class RayScorer:
    """Scoring blocks on worker actors, each holding pi_dpo and pi_ref (a :class:`xlpref.reward.BlockScorer`).

    Pass it as ``scorer`` to :func:`xlpref.reward.score_records`; ``report`` after :meth:`close`.
    """

    def __init__(self, compute: ComputeConfig, policy: str, reference: str, reward: Any, *,
                 token_span: str, max_batch_tokens: int) -> None:
        from xlpref.models import load_tokenizer
        from xlpref.reward import BlockScorer, check_same_tokenizer

        if not (isinstance(policy, str) and isinstance(reference, str)):
            raise InputError("compute.engine 'ray' loads models in its workers; expected model specs, hub ids or "
                             "folders every node can read", field="compute.engine")
        if reference != policy:  # before any worker starts: the same check each worker makes
            check_same_tokenizer(load_tokenizer(policy), load_tokenizer(reference))
        build = functools.partial(BlockScorer.load, policy, reference, reward, token_span=token_span,
                                  max_batch_tokens=max_batch_tokens)
        self.pool = WorkerPool(compute, build, stage="scoring")
        self.report: dict = {}

    def map_blocks(self, blocks: list[list[dict]]) -> Iterator[tuple[int, list[dict]]]:
        yield from self.pool.map(blocks)
        self.report = self.pool.report

    def close(self) -> None:
        self.pool.close()
        self.report = self.pool.report
