"""Sample n responses per prompt and language: the first step of an ICR iteration.

The prompt a model sees is the target-language instruction in the model's chat template, one user
turn, no system prompt (METHOD.md). Two backends share one interface (:class:`Sampler`): ``hf``
(transformers ``generate``, here) and ``vllm`` (:mod:`xlpref.sampling_vllm`).

Determinism, so that a resumed run equals an uninterrupted one: the batches are a function of the
full request list only (sorted by prompt length, longest first, ties in request order), each batch is
seeded from ``(params.seed, key of its first request)``, a batch whose records are all done is
skipped and a partly done batch is generated again in full, keeping only the missing records.

Example::

    from xlpref.sampling import SamplingParams, make_sampler
    from xlpref.sampling_prompts import requests_from_prompts
    requests = requests_from_prompts("../shared/data/train_prompts/random_100", ["en", "es"], limit=2)
    sampler = make_sampler("hf", "tiny-random-llama")
    records = sampler.sample(requests, SamplingParams(n=2, max_new_tokens=16))
"""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Mapping, Protocol, Sequence

from xlpref.errors import InputError

#: Record fields every sampler writes; ``meta`` may not use these names.
RECORD_FIELDS = ("id", "lang", "prompt", "prompt_en", "response", "sample_index", "model", "backend", "seed",
                 "temperature", "top_p", "max_new_tokens", "n_response_tokens", "finish_reason")
#: The key of a sample record in the run store.
SAMPLE_KEY = ("lang", "id", "sample_index")


@dataclass(frozen=True)
class SampleRequest:
    """One prompt in one language; ``meta`` is copied into each output record."""

    id: str | int
    lang: str
    prompt: str
    prompt_en: str
    meta: Mapping = field(default_factory=dict)

    def __post_init__(self) -> None:
        clash = sorted(set(self.meta) & set(RECORD_FIELDS))
        if clash:
            raise InputError(f"meta uses reserved record fields {clash}; expected other names",
                             record=f"{self.lang}/{self.id}", field="meta")


@dataclass(frozen=True)
class SamplingParams:
    """Decoding settings. ``temperature == 0`` means greedy; ``batch_size`` counts prompts per batch."""

    n: int = 1
    temperature: float = 0.9
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int = 42
    batch_size: int = 8
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        checks = [
            ("n", isinstance(self.n, int) and self.n >= 1, "an integer >= 1"),
            ("temperature", self.temperature >= 0, "a number >= 0 (0 means greedy)"),
            ("top_p", 0 < self.top_p <= 1, "a number in (0, 1]"),
            ("max_new_tokens", isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1, "an integer >= 1"),
            ("seed", isinstance(self.seed, int) and self.seed >= 0, "an integer >= 0"),
            ("batch_size", isinstance(self.batch_size, int) and self.batch_size >= 1, "an integer >= 1"),
            ("repetition_penalty", self.repetition_penalty > 0, "a number > 0"),
            ("stop", all(isinstance(s, str) and s for s in self.stop), "non-empty strings"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise InputError(f"got {getattr(self, name)!r}; expected {expected}", field=name)

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0


class Sampler(Protocol):
    """A sampling backend: ``n`` responses for each request."""

    name: str
    model_name: str

    def sample(self, requests: Sequence[SampleRequest], params: SamplingParams, *,
               skip_keys: Collection[tuple] = (), on_records: Callable[[list[dict]], None] | None = None,
               progress: bool = True) -> list[dict]:
        """Records for every ``(lang, id, sample_index)`` not in ``skip_keys``, in request order."""
        ...

    def close(self) -> None: ...


def make_sampler(backend: str, model: Any, **backend_options: Any) -> Sampler:
    """A sampler by registry name (``hf``, ``vllm``) for a model spec or a ``(model, tokenizer)`` pair.

    (:func:`xlpref.ray_stages.make_stage_sampler` chooses between this and Ray worker actors.)
    """
    from xlpref.registry import resolve

    return resolve("sampler", backend)(model, **backend_options)


# -- shared by the backends ---------------------------------------------------------------------

def sample_keys(request: SampleRequest, n: int) -> list[tuple]:
    return [(request.lang, request.id, k) for k in range(n)]


def check_unique(requests: Sequence[SampleRequest]) -> None:
    seen = set()
    for request in requests:
        if (request.lang, request.id) in seen:
            raise InputError(f"duplicate request (lang {request.lang!r}, id {request.id!r}); expected unique ids "
                             "per language", record=f"{request.lang}/{request.id}")
        seen.add((request.lang, request.id))


def derived_seed(seed: int, *key: Any) -> int:
    """A 31-bit seed from the global seed and a key (stable across processes and Python versions)."""
    digest = hashlib.sha256(json.dumps([seed, *key], default=str).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def plan_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Request indices grouped into batches of similar prompt length (longest first, ties in order)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def chat_prompt_ids(tokenizer: Any, instruction: str) -> list[int]:
    """Token ids of one user turn in the tokenizer's chat template, ready for the assistant's answer."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": instruction}], tokenize=False,
                                         add_generation_prompt=True)
    # The template already holds BOS where the model wants it; adding special tokens would double it.
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def stop_strings(tokenizer: Any, params: SamplingParams) -> list[str]:
    """The caller's stop strings plus the next user turn of the plain template (base models ramble on)."""
    from xlpref.models import PLAIN_CHAT_TEMPLATE

    stops = list(params.stop)
    if getattr(tokenizer, "chat_template", None) == PLAIN_CHAT_TEMPLATE and "\n\nUser:" not in stops:
        stops.append("\n\nUser:")
    return stops


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the first stop string, and whether one was found."""
    cuts = [text.find(s) for s in stops if s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


def make_record(request: SampleRequest, sample_index: int, response: str, *, n_tokens: int, finish_reason: str,
                sampler: Sampler, params: SamplingParams) -> dict:
    return {
        "id": request.id, "lang": request.lang, "prompt": request.prompt, "prompt_en": request.prompt_en,
        "response": response.strip(), "sample_index": sample_index, "model": sampler.model_name,
        "backend": sampler.name, "seed": params.seed, "temperature": params.temperature, "top_p": params.top_p,
        "max_new_tokens": params.max_new_tokens, "n_response_tokens": n_tokens, "finish_reason": finish_reason,
        **request.meta,
    }


def progress_bar(total: int, is_enabled: bool, description: str) -> Any:
    """A rich progress bar on stderr counting sequences (a no-op context when disabled)."""
    if not is_enabled:
        return nullcontext(None)
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), TextColumn("{task.fields[rate]}"), console=Console(stderr=True))
    bar.add_task(description, total=total, rate="")
    return bar


def advance(bar: Any, steps: int, tokens: int, seconds: float) -> None:
    if bar is not None:
        task = bar.tasks[0]
        task.fields["tokens"] = task.fields.get("tokens", 0) + tokens
        task.fields["seconds"] = task.fields.get("seconds", 0.0) + seconds
        rate = task.fields["tokens"] / max(task.fields["seconds"], 1e-9)
        bar.update(task.id, advance=steps, rate=f"{rate:.1f} tok/s")


def in_request_order(records: list[dict], requests: Sequence[SampleRequest]) -> list[dict]:
    rank = {(r.lang, r.id): i for i, r in enumerate(requests)}
    return sorted(records, key=lambda rec: (rank[(rec["lang"], rec["id"])], rec["sample_index"]))


def sample_in_batches(sampler: Any, requests: Sequence[SampleRequest], params: SamplingParams, *,
                      skip_keys: Collection[tuple] = (), on_records: Callable[[list[dict]], None] | None = None,
                      progress: bool = True) -> list[dict]:
    """A backend's ``sample``: its planned batches (``plan``), one ``sample_batch`` call each, in order.

    The same plan and batch function serve the worker actors of a data-parallel run
    (:mod:`xlpref.ray_stages`), so its records equal a local run's.
    """
    check_unique(requests)
    skip = set(skip_keys)
    batches = sampler.plan(sampler.tokenizer, requests, params, skip)
    out: list[dict] = []
    with progress_bar(sum(len(b) for b in batches) * params.n, progress, f"sampling ({sampler.name})") as bar:
        for batch in batches:
            start = time.perf_counter()
            records = sampler.sample_batch([requests[i] for i in batch], params)
            new = [rec for rec in records if (rec["lang"], rec["id"], rec["sample_index"]) not in skip]
            advance(bar, len(records), sum(r["n_response_tokens"] for r in records), time.perf_counter() - start)
            if on_records is not None and new:
                on_records(new)
            out.extend(new)
    return in_request_order(out, requests)


# -- the transformers backend ------------------------------------------------------------------

class HFSampler:
    """transformers ``generate``: length-bucketed batches with left padding, n rows per prompt.

    Sampling is plain temperature / top-p (``top_k=0``: transformers would otherwise add top-k 50,
    which neither the authors' vLLM settings nor our vLLM backend use).
    """

    name = "hf"

    def __init__(self, model: Any, *, device: str | None = None, dtype: Any = None) -> None:
        if isinstance(model, str):
            from xlpref.models import load_model

            self.model_name = model
            self.model, self.tokenizer = load_model(model, device=device, dtype=dtype)
        else:
            self.model, self.tokenizer = model
            self.model_name = getattr(self.model, "name_or_path", "") or "in-memory"
        from xlpref.models import end_of_turn_token_id, ensure_chat_template

        ensure_chat_template(self.tokenizer)
        eos = self.model.generation_config.eos_token_id
        # The template's end-of-turn token too: a generation config may list only another eos.
        self.eos_ids = (set(eos if isinstance(eos, list) else [eos])
                        | {self.tokenizer.eos_token_id, end_of_turn_token_id(self.tokenizer)})
        self.eos_ids.discard(None)
        self._stop_criteria: dict[tuple[str, ...], Any] = {}

    def sample(self, requests: Sequence[SampleRequest], params: SamplingParams, *,
               skip_keys: Collection[tuple] = (), on_records: Callable[[list[dict]], None] | None = None,
               progress: bool = True) -> list[dict]:
        return sample_in_batches(self, requests, params, skip_keys=skip_keys, on_records=on_records,
                                 progress=progress)

    @staticmethod
    def plan(tokenizer: Any, requests: Sequence[SampleRequest], params: SamplingParams,
             skip: Collection[tuple] = ()) -> list[list[int]]:
        """The batches (request indices) this backend makes, those whose records are all in ``skip`` left out."""
        prompt_ids = [chat_prompt_ids(tokenizer, r.prompt) for r in requests]
        return [b for b in plan_batches([len(p) for p in prompt_ids], params.batch_size)
                if not all(k in skip for i in b for k in sample_keys(requests[i], params.n))]

    def sample_batch(self, batch: Sequence[SampleRequest], params: SamplingParams) -> list[dict]:
        """Every record of one planned batch, seeded from ``(params.seed, key of its first request)``."""
        prompt_ids = [chat_prompt_ids(self.tokenizer, r.prompt) for r in batch]
        return self._generate(list(batch), prompt_ids, params, derived_seed(params.seed, batch[0].lang, batch[0].id))

    def generate_from_ids(self, requests: Sequence[SampleRequest], prompt_ids: Sequence[Sequence[int]],
                          params: SamplingParams, seed: int = 0) -> list[dict]:
        """Records for one batch whose prompts are given as token ids (e.g. an assistant turn already begun)."""
        return self._generate(list(requests), [list(p) for p in prompt_ids], params, seed)

    def _generate(self, batch: list[SampleRequest], prompt_ids: list[list[int]], params: SamplingParams,
                  seed: int) -> list[dict]:
        import torch

        device = self.model.device
        encoded = self.tokenizer.pad({"input_ids": prompt_ids}, padding=True, padding_side="left",
                                     return_tensors="pt")
        # n samples per prompt as n repeated rows (what num_return_sequences does, and it also works greedily).
        input_ids = encoded["input_ids"].repeat_interleave(params.n, dim=0).to(device)
        attention_mask = encoded["attention_mask"].repeat_interleave(params.n, dim=0).to(device)
        stops = stop_strings(self.tokenizer, params)
        decoding: dict[str, Any] = {"do_sample": False} if params.is_greedy else {
            "do_sample": True, "temperature": params.temperature, "top_p": params.top_p, "top_k": 0}
        forked = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=forked), torch.inference_mode():
            torch.manual_seed(seed)
            output = self.model.generate(
                input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=params.max_new_tokens,
                repetition_penalty=params.repetition_penalty, stopping_criteria=self._stopping_criteria(stops),
                pad_token_id=self.tokenizer.pad_token_id, eos_token_id=sorted(self.eos_ids),
                **decoding)
        generated = output[:, input_ids.shape[1]:].tolist()
        records = []
        for row, tokens in enumerate(generated):
            request, sample_index = batch[row // params.n], row % params.n
            n_tokens, finish_reason = self._trim(tokens, params, stops)
            text = self.tokenizer.decode(tokens[:n_tokens], skip_special_tokens=True)
            text, was_stopped = cut_at_stop(text, stops)
            records.append(make_record(request, sample_index, text, n_tokens=n_tokens,
                                       finish_reason="stop" if was_stopped else finish_reason,
                                       sampler=self, params=params))
        return records

    def _stopping_criteria(self, stops: list[str]) -> Any:
        """transformers' stop-string criterion, built once per stop list.

        Passing ``stop_strings=`` to ``generate`` rebuilds it on every call, and its cache misses because
        the key holds the vocabulary in ``get_vocab()`` order, which changes between calls: 10-25 s per
        batch on Gemma's 262k vocabulary. The criterion keeps no state between calls, so one is reused.
        """
        if not stops:
            return None
        from transformers import StoppingCriteriaList, StopStringCriteria

        key = tuple(stops)
        if key not in self._stop_criteria:
            self._stop_criteria[key] = StopStringCriteria(self.tokenizer, stops)
        return StoppingCriteriaList([self._stop_criteria[key]])

    def _trim(self, tokens: list[int], params: SamplingParams, stops: Sequence[str]) -> tuple[int, str]:
        """Response length in tokens (end-of-turn and padding dropped) and why generation ended."""
        for position, token in enumerate(tokens):
            if token in self.eos_ids:
                return position, "stop"
        if len(tokens) < params.max_new_tokens:
            # Shorter than the limit without an end-of-turn: a stop string ended it, then padding followed.
            pad = self.tokenizer.pad_token_id
            end = len(tokens)
            while end > 0 and tokens[end - 1] == pad:
                end -= 1
            return end, "stop"
        return len(tokens), "length"

    def close(self) -> None:
        self.model = None


# -- records out ----------------------------------------------------------------------------------

def sample_to_log(sampler: Sampler, requests: Sequence[SampleRequest], params: SamplingParams, log: Any,
                  progress: bool = True) -> list[dict]:
    """Sample into a :class:`xlpref.records.RecordLog` (key ``lang, id, sample_index``), resumably.

    Skips records already in the log, appends per batch, and finishes the log in request order.

    Raises:
        InputError: the log holds records made with other settings (model, seed, temperature, ...).
    """
    check_unique(requests)
    order = [key for request in requests for key in sample_keys(request, params.n)]
    expected = {"model": sampler.model_name, "backend": sampler.name, "seed": params.seed,
                "temperature": params.temperature, "top_p": params.top_p, "max_new_tokens": params.max_new_tokens}
    for record in log.records:
        differing = [f"{k}={record.get(k)!r} (now {v!r})" for k, v in expected.items() if record.get(k) != v]
        if differing:
            where = log.final_path if log.is_finished else log.partial_path
            raise InputError(f"holds samples made with other settings: {', '.join(differing)}; expected the same "
                             "settings to resume, or another output path", path=where)
    if log.is_finished:
        done = {log.key_of(r): r for r in log.records}
        missing = [k for k in order if k not in done]
        if missing:
            raise InputError(f"is finished but lacks {len(missing)} requested samples (e.g. {missing[0]}); "
                             "expected another output path", path=log.final_path)
        return [done[k] for k in order]
    sampler.sample(requests, params, skip_keys=log.done_keys, on_records=log.append, progress=progress)
    return log.finish(order)
