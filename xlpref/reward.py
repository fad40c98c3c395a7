"""The implicit reward ``r = log pi_policy(y | x) - log pi_reference(y | x)``, and scoring sample records.

Decisions (METHOD.md step 2, made exact):

- Token ids, from the policy's tokenizer (policy and reference must share it):
  ``prompt_ids = tokenizer.apply_chat_template([{"role": "user", "content": conditioning}],
  add_generation_prompt=True, tokenize=True)["input_ids"]`` (transformers 5 returns a BatchEncoding)
  and ``response_ids = tokenizer(text, add_special_tokens=False).input_ids``. Only response tokens
  count; prompt and padding add nothing; no end-of-turn token is appended, so none is counted.
- ``reward`` = sum over response positions of ``log p_policy - log p_reference`` (no mean, no beta);
  the log-probabilities come from :func:`xlpref.logprobs.paired_response_logprobs` (fp32, float64 sums;
  both models on one pass plan).
  When policy and reference are the same object the reference pass is skipped: reward 0.
- Conditioning (:class:`RewardFunction`, registry kind ``reward``):
  ``cross-lingual`` = METHOD.md's prefix with the English language name + ``prompt_en``, plain
  ``prompt_en`` for ``en``; ``multilingual`` = ``prompt``; ``translate-to-english`` = the policy first
  translates the response greedily (:data:`TRANSLATION_INSTRUCTION`, the hf sampler at temperature 0;
  field ``translation``), then the translation, being English, is scored under the plain ``prompt_en``
  (the cross-lingual conditioning of an English text; METHOD.md: "scores the translation under the
  English instruction"; the authors' code conditions it on the plain instruction too).
- Output: the input record plus ``reward``, ``logp_policy``, ``logp_reference``, ``n_response_tokens``
  (the scored token count; it replaces a sampler's count) and ``reward_type``.
- Resumable: with a :class:`xlpref.records.RecordLog` keyed ``(lang, id, sample_index)``, records already
  scored are kept, new ones are appended block by block and the log is finished in input order.
  Blocks (whole prompt groups) are planned from the full record list; a block with a missing record
  is translated again in full (greedy batches depend on their composition) and its missing records
  are scored. Rewards do not depend on batches (1e-4), so a resumed run equals an uninterrupted one.

Example::

    from xlpref.models import build_tiny_model
    from xlpref.reward import score_records
    policy, tok = build_tiny_model("tiny-random-llama", seed=1)
    reference, _ = build_tiny_model("tiny-random-llama", seed=2)
    samples = [{"lang": "es", "id": 1, "sample_index": 0, "prompt": "Escribe un poema.",
                "prompt_en": "Write a poem.", "response": "El mar está tranquilo."}]
    print(score_records(samples, policy, reference, tok, "cross-lingual", progress=False)[0]["reward"])
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Protocol

from xlpref.errors import InputError
from xlpref.languages import LANGUAGE_NAMES, cross_lingual_instruction
from xlpref.logprobs import Item, paired_response_logprobs, response_logprobs

__all__ = [
    "TRANSLATION_INSTRUCTION",
    "CrossLingualReward",
    "MultilingualReward",
    "RewardFunction",
    "RewardScore",
    "TranslateToEnglishReward",
    "check_same_tokenizer",
    "check_sample_record",
    "implicit_rewards",
    "make_reward_function",
    "prompt_token_ids",
    "response_logprobs",
    "response_token_ids",
    "score_records",
    "translate_to_english",
]


@dataclass(frozen=True)
class RewardScore:
    """One response's implicit reward and its parts (log-probabilities summed over response tokens)."""

    reward: float
    logp_policy: float
    logp_reference: float
    n_response_tokens: int


def prompt_token_ids(tokenizer: Any, conditioning: str) -> list[int]:
    """The conditioning as one user turn of the chat template, ready for the assistant's answer."""
    encoded = tokenizer.apply_chat_template([{"role": "user", "content": conditioning}],
                                            add_generation_prompt=True, tokenize=True)
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def response_token_ids(tokenizer: Any, text: str) -> list[int]:
    """The response's own tokens: no BOS, no end-of-turn."""
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def check_same_vocabulary(policy: Any, reference: Any) -> None:
    """Policy and reference must index the same vocabulary (their token ids are shared)."""
    sizes = [m.get_input_embeddings().num_embeddings for m in (policy, reference)]
    if sizes[0] != sizes[1]:
        raise InputError(f"policy has {sizes[0]} token embeddings, reference {sizes[1]}; expected models "
                         "sharing one tokenizer", field="reference")


def check_same_tokenizer(policy_tokenizer: Any, reference_tokenizer: Any) -> None:
    """Both tokenizers must map text to the same ids (compared by size, then by vocabulary)."""
    if policy_tokenizer is reference_tokenizer:
        return
    sizes = len(policy_tokenizer), len(reference_tokenizer)
    if sizes[0] != sizes[1] or policy_tokenizer.get_vocab() != reference_tokenizer.get_vocab():
        raise InputError(f"tokenizers differ ({sizes[0]} vs {sizes[1]} tokens); expected a reference sharing the "
                         "policy's tokenizer", field="reference")


def implicit_rewards(policy: Any, reference: Any, items: list[Item], **kw: Any) -> list[RewardScore]:
    """Implicit rewards of (prompt ids, response ids) items; ``kw`` goes to :func:`response_logprobs`."""
    check_same_vocabulary(policy, reference)
    if reference is policy:
        logp_policy = logp_reference = response_logprobs(policy, items, **kw)
    else:  # one pass plan for both models, and one output projection when theirs are equal
        logp_policy, logp_reference = paired_response_logprobs(policy, reference, items, **kw)
    scores = []
    for index, ((_, response), lp, lr) in enumerate(zip(items, logp_policy, logp_reference)):
        if not (math.isfinite(lp) and math.isfinite(lr)):
            raise InputError(f"non-finite log-probability (policy {lp}, reference {lr}); expected finite values "
                             "(a model in a low-precision dtype may overflow)", record=index)
        scores.append(RewardScore(reward=lp - lr, logp_policy=lp, logp_reference=lr,
                                  n_response_tokens=len(response)))
    return scores


# -- what a response is conditioned on ------------------------------------------------------------

#: The instruction the policy answers to translate a response for the translate-to-english reward.
TRANSLATION_INSTRUCTION = "Translate the following text into English. Output only the translation.\n\n{response}"


class RewardFunction(Protocol):
    """Which text is scored, under which conditioning; ``prepare`` (optional) adds fields first."""

    name: str
    required_fields: tuple[str, ...]

    def conditioning(self, record: dict) -> str: ...

    def scored_text(self, record: dict) -> str: ...


class CrossLingualReward:
    """METHOD.md's default R_c: the English instruction, prefixed for L != en."""

    name = "cross-lingual"
    required_fields = ("prompt_en", "response")

    def conditioning(self, record: dict) -> str:
        return cross_lingual_instruction(record["prompt_en"], record["lang"])

    def scored_text(self, record: dict) -> str:
        return record["response"]


class MultilingualReward:
    """The ablation R_m: the target-language instruction."""

    name = "multilingual"
    required_fields = ("prompt", "response")

    def conditioning(self, record: dict) -> str:
        return record["prompt"]

    def scored_text(self, record: dict) -> str:
        return record["response"]


class TranslateToEnglishReward:
    """The ablation R_t: the policy's greedy English translation, under the English instruction.

    Records that already carry a ``translation`` keep it (e.g. translations made elsewhere).
    """

    name = "translate-to-english"
    required_fields = ("prompt_en", "response")

    def __init__(self, *, max_new_tokens: int = 1024, batch_size: int = 8) -> None:
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size

    def conditioning(self, record: dict) -> str:
        return record["prompt_en"]

    def scored_text(self, record: dict) -> str:
        return record["translation"]

    def prepare(self, records: list[dict], policy: Any, tokenizer: Any, *, progress: bool = True) -> list[dict]:
        """The records with a ``translation`` field, translated by ``policy`` where missing."""
        todo = [i for i, r in enumerate(records) if not isinstance(r.get("translation"), str)]
        texts = translate_to_english(policy, tokenizer, [records[i]["response"] for i in todo],
                                     max_new_tokens=self.max_new_tokens, batch_size=self.batch_size,
                                     progress=progress)
        out = list(records)
        for index, text in zip(todo, texts):
            out[index] = {**records[index], "translation": text}
        return out


def translate_to_english(model: Any, tokenizer: Any, texts: list[str], *, max_new_tokens: int = 1024,
                         batch_size: int = 8, progress: bool = True) -> list[str]:
    """Greedy English translations of ``texts`` by ``model`` (the hf sampler, temperature 0)."""
    from xlpref.sampling import SampleRequest, SamplingParams, make_sampler

    wanted = [i for i, text in enumerate(texts) if text.strip()]  # an empty response translates to ""
    if not wanted:
        return [""] * len(texts)
    requests = [SampleRequest(id=i, lang="en", prompt=TRANSLATION_INSTRUCTION.format(response=texts[i]),
                              prompt_en=TRANSLATION_INSTRUCTION.format(response=texts[i])) for i in wanted]
    params = SamplingParams(n=1, temperature=0, max_new_tokens=max_new_tokens, batch_size=batch_size)
    sampler = make_sampler("hf", (model, tokenizer))
    try:
        records = sampler.sample(requests, params, progress=progress)
    finally:
        sampler.close()
    out = [""] * len(texts)
    for record in records:
        out[record["id"]] = record["response"]
    return out


# -- scoring sample records -----------------------------------------------------------------------

#: The key of a scored record (the samples' key).
SCORE_KEY = ("lang", "id", "sample_index")
#: Fields :func:`score_records` adds to each sample record.
SCORE_FIELDS = ("reward", "logp_policy", "logp_reference", "n_response_tokens", "reward_type")


def make_reward_function(reward: str | RewardFunction) -> RewardFunction:
    """A reward function by registry name (``cross-lingual``, ``multilingual``, ``translate-to-english``)."""
    if isinstance(reward, str):
        from xlpref.registry import resolve

        return resolve("reward", reward)()
    return reward


def check_sample_record(record: dict, reward: RewardFunction, *, path: Any = None, line: int | None = None,
                        index: int | None = None, needs_key: bool = True) -> None:
    """Raise :class:`InputError` naming the record and field when a sample record cannot be scored."""
    where = {"path": path, "line": line, "record": None if line is not None else index}
    key_fields = ("lang", "id", "sample_index") if needs_key else ("lang",)
    for name in (*key_fields, *reward.required_fields):
        if name not in record:
            raise InputError(f"missing field; expected {', '.join((*key_fields, *reward.required_fields))}",
                             field=name, **where)
    for name in ("lang", *reward.required_fields):
        if not isinstance(record[name], str):
            raise InputError(f"got {type(record[name]).__name__}; expected a string", field=name, **where)
    if "id" in record and (isinstance(record["id"], bool) or not isinstance(record["id"], (int, str))):
        raise InputError(f"got {record['id']!r}; expected an integer or a string", field="id", **where)
    index_value = record.get("sample_index", 0)
    if isinstance(index_value, bool) or not isinstance(index_value, int) or index_value < 0:
        raise InputError(f"got {index_value!r}; expected an integer >= 0", field="sample_index", **where)
    if isinstance(reward, (CrossLingualReward, TranslateToEnglishReward)) and record["lang"] not in LANGUAGE_NAMES:
        raise InputError(f"unknown language code {record['lang']!r}; expected one of {sorted(LANGUAGE_NAMES)}",
                         field="lang", **where)


def _prompt_blocks(conditionings: list[str], sizes: list[int], block_size: int) -> list[list[int]]:
    """Record indices in blocks of whole prompt groups (first-appearance order) of about ``block_size``."""
    groups: dict[str, list[int]] = {}
    for index, text in enumerate(conditionings):
        groups.setdefault(text, []).append(index)
    blocks: list[list[int]] = []
    filled = block_size
    for members in groups.values():
        if filled >= block_size:
            blocks.append([])
            filled = 0
        blocks[-1].extend(members)
        filled += sum(sizes[i] for i in members)
    return blocks


def _resume(records: list[dict], log: Any, reward_name: str) -> tuple[list[tuple], dict[tuple, dict]]:
    """The records' keys and the log's finished records (checked for duplicates and reward type)."""
    keys = [tuple(r[k] for k in SCORE_KEY) for r in records]
    seen: set[tuple] = set()
    for index, key in enumerate(keys):
        if key in seen:
            raise InputError(f"duplicate key {key}; expected one record per (lang, id, sample_index)", record=index)
        seen.add(key)
    where = log.final_path if log.is_finished else log.partial_path
    for record in log.records:
        if record.get("reward_type") != reward_name:
            raise InputError(f"holds records scored with reward {record.get('reward_type')!r}; expected "
                             f"{reward_name!r} to resume, or another output path", path=where)
    done = {log.key_of(r): r for r in log.records}
    if log.is_finished and not seen <= set(done):
        missing = next(k for k in keys if k not in done)
        raise InputError(f"is finished but lacks requested records (e.g. {missing}); expected another output path",
                         path=where)
    return keys, done


def score_records(records: list[dict], policy: Any, reference: Any, tokenizer: Any,
                  reward: str | RewardFunction = "cross-lingual", *, log: Any = None, progress: bool = True,
                  max_batch_tokens: int = 4096) -> list[dict]:
    """Each sample record plus ``reward``, ``logp_policy``, ``logp_reference``, ``n_response_tokens``, ``reward_type``.

    Work goes in blocks of whole prompt groups planned from the full record list, so a resumed run
    prepares (translates) and scores the same blocks as an uninterrupted one; a block with any
    record missing from ``log`` is prepared again in full and its missing records are scored.

    Args:
        reward: a registered reward name or a :class:`RewardFunction`.
        log: a :class:`xlpref.records.RecordLog` keyed ``lang, id, sample_index`` to resume from and append to.

    Raises:
        InputError: a record lacks a field or has a wrong type, duplicate keys, a log scored with another reward.
    """
    from xlpref.sampling import advance, progress_bar

    reward_fn = make_reward_function(reward)
    for index, record in enumerate(records):
        check_sample_record(record, reward_fn, index=index, needs_key=log is not None)
    keys, done = _resume(records, log, reward_fn.name) if log is not None else ([], {})
    if log is not None and log.is_finished:
        return [done[k] for k in keys]
    conditionings = [reward_fn.conditioning(r) for r in records]
    blocks = _prompt_blocks(conditionings, [len(r["response"]) for r in records], block_size=16 * max_batch_tokens)
    missing = [[i for i in block if log is None or keys[i] not in done] for block in blocks]
    prompt_ids: dict[str, list[int]] = {}  # each prompt is tokenized once for all its responses
    scored: dict[int, dict] = {}
    description = f"scoring ({reward_fn.name})"
    with progress_bar(sum(map(len, missing)), progress and any(missing), description) as bar:
        for block, todo in zip(blocks, missing):
            if not todo:
                continue
            start = time.perf_counter()
            if hasattr(reward_fn, "prepare"):
                # progress=False: one live progress display at a time (this one counts the block's records)
                prepared = dict(zip(block, reward_fn.prepare([records[i] for i in block], policy, tokenizer,
                                                             progress=False)))
            # The whole block is scored even when part of it is done: the same batches as an
            # uninterrupted run, so a resumed run's rewards are equal to the last bit, not just to 1e-6.
            ready = {i: (prepared[i] if hasattr(reward_fn, "prepare") else records[i]) for i in block}
            for i in block:
                if conditionings[i] not in prompt_ids:
                    prompt_ids[conditionings[i]] = prompt_token_ids(tokenizer, conditionings[i])
            items = [(prompt_ids[conditionings[i]], response_token_ids(tokenizer, reward_fn.scored_text(ready[i])))
                     for i in block]
            block_scores = dict(zip(block, implicit_rewards(policy, reference, items, max_batch_tokens=max_batch_tokens)))
            scores = [block_scores[i] for i in todo]
            out = [{**ready[i], "reward": s.reward, "logp_policy": s.logp_policy, "logp_reference": s.logp_reference,
                    "n_response_tokens": s.n_response_tokens, "reward_type": reward_fn.name}
                   for i, s in zip(todo, scores)]
            if log is not None:
                log.append(out)
            scored.update(zip(todo, out))
            advance(bar, len(todo), sum(s.n_response_tokens for s in scores), time.perf_counter() - start)
    if log is not None:
        return log.finish(order=keys)
    return [scored[i] for i in range(len(records))]
