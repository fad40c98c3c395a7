"""The implicit reward ``r = log pi_policy(y | x) - log pi_reference(y | x)``, and scoring sample records.

Decisions (METHOD.md step 2, made exact):

- Token ids, from the policy's tokenizer (policy and reference must share it):
  ``prompt_ids = tokenizer.apply_chat_template([{"role": "user", "content": conditioning}],
  add_generation_prompt=True, tokenize=True)["input_ids"]`` (transformers 5 returns a BatchEncoding)
  and ``response_ids = tokenizer(text, add_special_tokens=False).input_ids``; prompt and padding add
  nothing.
- Which tokens count (``token_span``, :data:`TOKEN_SPANS`), with y_1..y_m the response and EOT the
  token the chat template closes an assistant turn with (:func:`end_of_turn_token_id`):
  ``authors`` (the default) = y_2..y_m + EOT, what the authors' ``compute_reward_score.py`` sums (it
  scores prompt + response + EOT as one right-padded row and multiplies the shifted label
  log-probabilities by the *unshifted* response mask, so y_1 is never counted and EOT always is,
  also after a response cut at the token limit; an empty response counts nothing). Kept as the
  default so the paper's pairs and numbers are reproduced; the off-by-one barely moves a reward
  (one token of hundreds) but it does move near-ties, see docs/fidelity.md.
  ``response`` = y_1..y_m; ``response+eot`` = y_1..y_m + EOT (DPO's own definition: the trained
  completion ends with the end-of-turn token). For ``authors``, log p(y_1) is scored as a one-token
  item under the same prompt and subtracted: putting y_1 into the prompt instead would split each
  prompt's responses by their first token and encode the prompt up to n times.
- ``reward`` = sum over the counted positions of ``log p_policy - log p_reference`` (no mean, no beta);
  the log-probabilities come from :func:`xlpref.logprobs.paired_response_logprobs` (fp32, float64 sums;
  both models on one pass plan).
  When policy and reference are the same object the reference pass is skipped: reward 0.
- Conditioning (:class:`RewardFunction`, registry kind ``reward``):
  ``cross-lingual`` = METHOD.md's prefix with the English language name + ``prompt_en``, plain
  ``prompt_en`` for ``en``; ``multilingual`` = ``prompt``; ``translate-to-english`` = the policy first
  translates the response as the authors do (:data:`TRANSLATION_INSTRUCTION` with ``lang`` = English
  as the user turn of its chat template, the assistant turn primed with :data:`TRANSLATION_PRIMER`,
  greedy, at most 8192 new tokens, the text up to :data:`TRANSLATION_END` kept, surrounding
  whitespace stripped; field ``translation``), then the translation, being English, is scored under
  the plain ``prompt_en`` (METHOD.md: "scores the translation under the English instruction"; the
  authors' code conditions it on the plain instruction too). English responses are not translated
  (their translation is the response), and :func:`xlpref.pairs.build_pairs` makes no English pair
  from them (the authors' ``generate_preference_pair.py`` skips English under this reward).
- Output: the input record plus ``reward``, ``logp_policy``, ``logp_reference``, ``n_response_tokens``
  (the counted token count; it replaces a sampler's count), ``reward_type`` and ``token_span``.
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
from xlpref.languages import check_language_code, cross_lingual_instruction
from xlpref.logprobs import Item, paired_response_logprobs, response_logprobs

__all__ = [
    "TOKEN_SPANS",
    "TRANSLATION_END",
    "TRANSLATION_INSTRUCTION",
    "TRANSLATION_PRIMER",
    "BlockScorer",
    "CrossLingualReward",
    "MultilingualReward",
    "RewardFunction",
    "RewardScore",
    "TranslateToEnglishReward",
    "check_same_tokenizer",
    "check_sample_record",
    "end_of_turn_token_id",
    "implicit_rewards",
    "make_reward_function",
    "prompt_token_ids",
    "response_logprobs",
    "response_token_ids",
    "score_records",
    "span_rewards",
    "translate_to_english",
    "translation_prompt",
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


# -- which tokens count ----------------------------------------------------------------------------

#: ``authors`` = y_2..y_m + EOT (the authors' code; the default), ``response`` = y_1..y_m,
#: ``response+eot`` = y_1..y_m + EOT (DPO's completion).
TOKEN_SPANS = ("authors", "response", "response+eot")
DEFAULT_TOKEN_SPAN = "authors"
_TURN_MARKER = "XLPREF-ASSISTANT-TURN-CONTENT"


def end_of_turn_token_id(tokenizer: Any) -> int:
    """The token the chat template puts right after an assistant turn's content, else the tokenizer's eos.

    Found by rendering a one-turn chat and tokenizing what follows the assistant's text
    (``<end_of_turn>`` for Gemma, ``<|eot_id|>`` for Llama 3).
    """
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"},
                                              {"role": "assistant", "content": _TURN_MARKER}], tokenize=False)
    except Exception:  # noqa: BLE001 - a template without an assistant role: the eos fallback below
        text = ""
    if isinstance(text, str) and _TURN_MARKER in text:
        tail = text[text.index(_TURN_MARKER) + len(_TURN_MARKER):]
        ids = tokenizer(tail, add_special_tokens=False).input_ids if tail.strip() else []
        if ids:
            return int(ids[0])
    if tokenizer.eos_token_id is None:
        raise InputError("the tokenizer's chat template closes no assistant turn and it has no eos token; expected "
                         "one of them to end a scored response", field="token_span")
    return int(tokenizer.eos_token_id)


def check_token_span(token_span: str) -> str:
    if token_span not in TOKEN_SPANS:
        raise InputError(f"unknown token span {token_span!r}; expected one of {list(TOKEN_SPANS)}", field="token_span")
    return token_span


def span_rewards(policy: Any, reference: Any, pairs: list[Item], token_span: str = DEFAULT_TOKEN_SPAN, *,
                 end_of_turn: int | None = None, **kw: Any) -> list[RewardScore]:
    """Implicit rewards of (prompt ids, response ids) over the tokens ``token_span`` counts.

    ``end_of_turn`` (the EOT id) is needed for ``authors`` and ``response+eot``; ``kw`` goes to
    :func:`implicit_rewards`. ``n_response_tokens`` is the number of counted tokens.
    """
    check_token_span(token_span)
    if token_span == "response":
        return implicit_rewards(policy, reference, pairs, **kw)
    if end_of_turn is None:
        raise InputError(f"token span {token_span!r} needs the end-of-turn token id", field="token_span")
    items = [(prompt, [*response, end_of_turn]) for prompt, response in pairs]
    if token_span == "response+eot":
        return implicit_rewards(policy, reference, items, **kw)
    # authors: y_2..y_m + EOT = (y_1..y_m + EOT) - y_1; nothing for an empty response (its mask is all zero).
    firsts = [(prompt, response[:1]) for prompt, response in pairs]
    scores = implicit_rewards(policy, reference, items + firsts, **kw)
    out = []
    for (_, response), whole, first in zip(pairs, scores[: len(pairs)], scores[len(pairs):]):
        if not response:
            out.append(RewardScore(reward=0.0, logp_policy=0.0, logp_reference=0.0, n_response_tokens=0))
            continue
        lp, lr = whole.logp_policy - first.logp_policy, whole.logp_reference - first.logp_reference
        out.append(RewardScore(reward=lp - lr, logp_policy=lp, logp_reference=lr, n_response_tokens=len(response)))
    return out


# -- what a response is conditioned on ------------------------------------------------------------

#: The user turn that asks the policy for a translation (the authors' text; ``lang`` = English, ``text`` = the response).
TRANSLATION_INSTRUCTION = ("Please translate the following sentences into {lang}. The input sentences are wrapped by "
                           "<sentence> and </sentence>:\n\n<sentence>\n{text}\n</sentence>\n\nThe translated result "
                           "should be wrapped by <translated> and </translated>.\n")
#: The start of the assistant turn the translation continues, and the tag that ends it.
TRANSLATION_PRIMER = "<translated>\n"
TRANSLATION_END = "</translated>"
#: The authors' translation limit (greedy, new tokens).
TRANSLATION_MAX_NEW_TOKENS = 8192


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

    Records that already carry a ``translation`` keep it (e.g. translations made elsewhere); English
    records are not translated.
    """

    name = "translate-to-english"
    required_fields = ("prompt_en", "response")

    def __init__(self, *, max_new_tokens: int = TRANSLATION_MAX_NEW_TOKENS, batch_size: int = 8) -> None:
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size

    def conditioning(self, record: dict) -> str:
        return record["prompt_en"]

    def scored_text(self, record: dict) -> str:
        return record["translation"]

    def prepare(self, records: list[dict], policy: Any, tokenizer: Any, *, progress: bool = True,
                generate: Any = None) -> list[dict]:
        """The records with a ``translation`` field, translated by ``policy`` where missing (see
        :func:`translate_to_english` for ``generate``)."""
        out = [{**r, "translation": r["response"]} if r["lang"] == "en" and not isinstance(r.get("translation"), str)
               else r for r in records]
        todo = [i for i, r in enumerate(out) if not isinstance(r.get("translation"), str)]
        texts = translate_to_english(policy, tokenizer, [out[i]["response"] for i in todo],
                                     max_new_tokens=self.max_new_tokens, batch_size=self.batch_size,
                                     progress=progress, generate=generate)
        for index, text in zip(todo, texts):
            out[index] = {**out[index], "translation": text}
        return out


def translation_prompt(tokenizer: Any, text: str, lang: str = "English") -> str:
    """The text the policy continues to translate ``text``: the authors' user turn, then the primed assistant turn."""
    turn = tokenizer.apply_chat_template([{"role": "user", "content": TRANSLATION_INSTRUCTION.format(lang=lang, text=text)}],
                                         tokenize=False, add_generation_prompt=True)
    return turn + TRANSLATION_PRIMER


def cut_translation(continuation: str) -> str:
    """The translation inside a continuation of :func:`translation_prompt`: the text before ``</translated>``."""
    return continuation.split(TRANSLATION_END, 1)[0].strip()


def hf_greedy_continuations(model: Any, tokenizer: Any, prompts: list[str], *, max_new_tokens: int, batch_size: int,
                            progress: bool = True) -> list[str]:
    """Greedy continuations of prompt texts (chat-template text, BOS included) by the hf sampler, stopped at
    ``</translated>`` or the end of turn."""
    from xlpref.sampling import HFSampler, SampleRequest, SamplingParams, advance, plan_batches, progress_bar

    sampler = HFSampler((model, tokenizer))
    params = SamplingParams(n=1, temperature=0, max_new_tokens=max_new_tokens, batch_size=batch_size,
                            stop=(TRANSLATION_END,))
    # The template text already holds BOS where the model wants it: no special tokens added.
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in prompts]
    out = [""] * len(prompts)
    try:
        with progress_bar(len(prompts), progress, "translating") as bar:
            for batch in plan_batches([len(p) for p in ids], batch_size):
                start = time.perf_counter()
                requests = [SampleRequest(id=i, lang="en", prompt=prompts[i], prompt_en=prompts[i]) for i in batch]
                records = sampler.generate_from_ids(requests, [ids[i] for i in batch], params)
                for record in records:
                    out[record["id"]] = record["response"]
                advance(bar, len(batch), sum(r["n_response_tokens"] for r in records), time.perf_counter() - start)
    finally:
        sampler.close()
    return out


def translate_to_english(model: Any, tokenizer: Any, texts: list[str], *,
                         max_new_tokens: int = TRANSLATION_MAX_NEW_TOKENS, batch_size: int = 8, progress: bool = True,
                         generate: Any = None) -> list[str]:
    """Greedy English translations of ``texts`` by ``model``, as the authors make them.

    Args:
        generate: ``generate(prompts, max_new_tokens=..., batch_size=..., progress=...) -> continuations``
            (default: the hf sampler, greedy); it continues each :func:`translation_prompt` text.
    """
    wanted = [i for i, text in enumerate(texts) if text.strip()]  # an empty response translates to ""
    out = [""] * len(texts)
    if not wanted:
        return out
    if generate is None:
        def generate(prompts: list[str], **kw: Any) -> list[str]:
            return hf_greedy_continuations(model, tokenizer, prompts, **kw)
    prompts = [translation_prompt(tokenizer, texts[i]) for i in wanted]
    continuations = generate(prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)
    for index, continuation in zip(wanted, continuations):
        out[index] = cut_translation(continuation)
    return out


# -- scoring sample records -----------------------------------------------------------------------

#: The key of a scored record (the samples' key).
SCORE_KEY = ("lang", "id", "sample_index")
#: Fields :func:`score_records` adds to each sample record.
SCORE_FIELDS = ("reward", "logp_policy", "logp_reference", "n_response_tokens", "reward_type", "token_span")


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
    check_language_code(record["lang"], field="lang", **where)


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


def _resume(records: list[dict], log: Any, reward_name: str,
            token_span: str = DEFAULT_TOKEN_SPAN) -> tuple[list[tuple], dict[tuple, dict]]:
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
        # Records written before spans were recorded counted the response's own tokens.
        if record.get("token_span", "response") != token_span:
            raise InputError(f"holds records scored over token span {record.get('token_span', 'response')!r}; "
                             f"expected {token_span!r} to resume, or another output path", path=where)
    done = {log.key_of(r): r for r in log.records}
    if log.is_finished and not seen <= set(done):
        missing = next(k for k in keys if k not in done)
        raise InputError(f"is finished but lacks requested records (e.g. {missing}); expected another output path",
                         path=where)
    return keys, done


class BlockScorer:
    """Scores one block of whole prompt groups: prepares (translates), tokenizes and scores every record.

    The unit of work of :func:`score_records`, here and on the worker actors of a data-parallel run
    (:mod:`xlpref.ray_stages`): a block's rewards depend only on the block.
    """

    def __init__(self, policy: Any, reference: Any, tokenizer: Any, reward: str | RewardFunction = "cross-lingual", *,
                 token_span: str = DEFAULT_TOKEN_SPAN, max_batch_tokens: int = 4096) -> None:
        self.policy, self.reference, self.tokenizer = policy, reference, tokenizer
        self.reward_fn = make_reward_function(reward)
        self.token_span = check_token_span(token_span)
        self.max_batch_tokens = max_batch_tokens
        self.end_of_turn = None if token_span == "response" else end_of_turn_token_id(tokenizer)
        self._prompt_ids: dict[str, list[int]] = {}  # each prompt is tokenized once for all its responses

    @classmethod
    def load(cls, policy: str, reference: str, reward: str | RewardFunction = "cross-lingual",
             **options: Any) -> "BlockScorer":
        """Load pi_dpo and pi_ref by spec (the same spec once: reward 0) and check they share a tokenizer."""
        from xlpref.models import load_model

        policy_model, tokenizer = load_model(policy)
        reference_model = policy_model
        if reference != policy:
            reference_model, reference_tokenizer = load_model(reference)
            check_same_tokenizer(tokenizer, reference_tokenizer)
        return cls(policy_model, reference_model, tokenizer, reward, **options)

    def map_blocks(self, blocks: list[list[dict]]) -> Any:
        """``(index, scored records)`` for each block, in order."""
        for index, block in enumerate(blocks):
            yield index, self(block)

    def __call__(self, block: list[dict]) -> list[dict]:
        reward_fn = self.reward_fn
        if hasattr(reward_fn, "prepare"):
            # progress=False: one live progress display at a time (the caller's counts the block's records)
            block = reward_fn.prepare(block, self.policy, self.tokenizer, progress=False)
        items = []
        for record in block:
            conditioning = reward_fn.conditioning(record)
            if conditioning not in self._prompt_ids:
                self._prompt_ids[conditioning] = prompt_token_ids(self.tokenizer, conditioning)
            items.append((self._prompt_ids[conditioning],
                          response_token_ids(self.tokenizer, reward_fn.scored_text(record))))
        scores = span_rewards(self.policy, self.reference, items, self.token_span, end_of_turn=self.end_of_turn,
                              max_batch_tokens=self.max_batch_tokens)
        return [{**record, "reward": s.reward, "logp_policy": s.logp_policy, "logp_reference": s.logp_reference,
                 "n_response_tokens": s.n_response_tokens, "reward_type": reward_fn.name,
                 "token_span": self.token_span} for record, s in zip(block, scores)]


def score_records(records: list[dict], policy: Any, reference: Any, tokenizer: Any,
                  reward: str | RewardFunction = "cross-lingual", *, log: Any = None, progress: bool = True,
                  max_batch_tokens: int = 4096, token_span: str = DEFAULT_TOKEN_SPAN, scorer: Any = None) -> list[dict]:
    """Each sample record plus ``reward``, ``logp_policy``, ``logp_reference``, ``n_response_tokens``,
    ``reward_type`` and ``token_span``.

    Work goes in blocks of whole prompt groups planned from the full record list, so a resumed run
    prepares (translates) and scores the same blocks as an uninterrupted one; a block with any
    record missing from ``log`` is prepared again in full and its missing records are scored.

    Args:
        reward: a registered reward name or a :class:`RewardFunction`.
        token_span: which tokens count (:data:`TOKEN_SPANS`; ``authors`` by default).
        log: a :class:`xlpref.records.RecordLog` keyed ``lang, id, sample_index`` to resume from and append to.
        scorer: runs the blocks elsewhere (``map_blocks(blocks)`` yielding ``(index, scored block)`` in any
            order, e.g. :class:`xlpref.ray_stages.RayScorer`); ``policy``, ``reference`` and ``tokenizer``
            are then unused.

    Raises:
        InputError: a record lacks a field or has a wrong type, duplicate keys, a log scored with another reward.
    """
    from xlpref.sampling import advance, progress_bar

    reward_fn = make_reward_function(reward)
    for index, record in enumerate(records):
        check_sample_record(record, reward_fn, index=index, needs_key=log is not None)
    check_token_span(token_span)
    keys, done = _resume(records, log, reward_fn.name, token_span) if log is not None else ([], {})
    if log is not None and log.is_finished:
        return [done[k] for k in keys]
    if scorer is None:
        scorer = BlockScorer(policy, reference, tokenizer, reward_fn, token_span=token_span,
                             max_batch_tokens=max_batch_tokens)
    conditionings = [reward_fn.conditioning(r) for r in records]
    blocks = _prompt_blocks(conditionings, [len(r["response"]) for r in records], block_size=16 * max_batch_tokens)
    # The whole block is scored even when part of it is done: the same batches as an uninterrupted
    # run, so a resumed run's rewards are equal to the last bit, not just to 1e-6.
    work = [(block, [i for i in block if log is None or keys[i] not in done]) for block in blocks]
    work = [(block, todo) for block, todo in work if todo]
    scored: dict[int, dict] = {}
    description = f"scoring ({reward_fn.name})"
    with progress_bar(sum(len(todo) for _, todo in work), progress and bool(work), description) as bar:
        start = time.perf_counter()
        for index, block_records in scorer.map_blocks([[records[i] for i in block] for block, _ in work]):
            block, todo = work[index]
            wanted = set(todo)
            out = [record for i, record in zip(block, block_records) if i in wanted]
            if log is not None:
                log.append(out)
            scored.update(zip(todo, out))
            advance(bar, len(out), sum(r["n_response_tokens"] for r in out), time.perf_counter() - start)
            start = time.perf_counter()
    if log is not None:
        return log.finish(order=keys)
    return [scored[i] for i in range(len(records))]
