"""A local transformers judge: the probabilities of the two choice tokens after the judge prompt.

The same AlpacaEval prompt as the API judges, turned into chat messages by alpaca-eval and into
tokens by the model's chat template; one forward pass per prompt (batched, left-padded, only the
last position's logits computed) gives log P(``m``) and log P(``M``) over the full vocabulary, which go
through alpaca-eval's ``logprob_parser`` as an API judge's logprobs would. alpaca-eval has no local
decoder that returns token probabilities (its ``huggingface_local_completions`` generates text).

This is the CPU demo judge. With Gemma-3-270M base it agrees with GPT-4 Turbo at chance level
(``benchmarks/x_alpacaeval/annotators/local_hf_logprob/agreement.json``): its numbers show that the
evaluation runs end to end, not which model is better. ``is_demo`` is set by the config (true for
``local_hf_logprob``) and travels into every metrics file and leaderboard row.

Example::

    from harness.judges.base import JudgeItem
    from harness.judges.local import LocalHFLogprobJudge
    judge = LocalHFLogprobJudge("tiny-random-llama")
    print(judge.preferences([JudgeItem("Say hi.", "Hi!", "Hello there!")]))
"""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

from harness.judges.base import JudgeConfig, JudgeItem, Judgement, format_messages, new_counters, parse_preference
from harness.judges.loading import load_judge_config
from xlpref.errors import InputError

log = logging.getLogger(__name__)


class LocalHFLogprobJudge:
    """Choice-token probabilities from a local causal LM (lazy: the model loads on the first uncached pair)."""

    def __init__(self, model_spec: str | None = None, *, config: JudgeConfig | None = None, model: Any = None,
                 tokenizer: Any = None, batch_size: int | None = None) -> None:
        overrides = {"model": model_spec} if model_spec else {}
        if batch_size is not None:
            overrides["batch_size"] = batch_size
        config = config or load_judge_config("local_hf_logprob", **overrides)
        if config.kind != "local_hf_logprob":
            raise InputError(f"judge config '{config.name}' is of kind {config.kind!r}; expected local_hf_logprob")
        self.config = config
        self.name = config.name
        self.config_hash = config.hash
        self.is_demo = bool(config.options["is_demo"])
        self.description = str(config.options["description"])
        self.model_spec = config.model
        self.batch_size = int(config.completions_kwargs.get("batch_size", 1))
        if self.batch_size < 1:
            raise InputError(f"got {self.batch_size}; expected an integer >= 1", field="batch_size")
        self.chunk_size = 4 * self.batch_size
        self.counters = new_counters()
        self._model, self._tokenizer = model, tokenizer
        self._is_model_owned = model is None  # close() drops only a model this judge loaded itself

    @classmethod
    def from_config(cls, config: JudgeConfig) -> LocalHFLogprobJudge:
        return cls(config=config)

    def _load(self) -> tuple[Any, Any]:
        if self._model is None:
            from xlpref.models import load_model

            self._model, self._tokenizer = load_model(self.model_spec, device=self.config.options["device"])
        from xlpref.models import ensure_chat_template

        ensure_chat_template(self._tokenizer)
        return self._model, self._tokenizer

    def close(self) -> None:
        """Drop the model this judge loaded (loaded again on the next uncached pair): the loop frees memory
        between stages."""
        if self._is_model_owned:
            self._model = self._tokenizer = None

    def choice_token_ids(self) -> dict[str, int]:
        """The vocabulary id of each choice token of the parser; each must be one token."""
        _, tokenizer = self._load()
        kwargs = self.config.parser_kwargs
        ids = {}
        for token in dict.fromkeys([kwargs["numerator_token"], *kwargs["denominator_tokens"]]):
            encoded = tokenizer.encode(token, add_special_tokens=False)
            if len(encoded) != 1:
                raise InputError(f"choice token {token!r} is {len(encoded)} tokens for judge model {self.model_spec}; "
                                 "expected exactly one")
            ids[token] = encoded[0]
        return ids

    def _encode(self, messages: list[dict]) -> list[int]:
        import jinja2

        _, tokenizer = self._load()
        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except jinja2.TemplateError:
            # Templates without a system role: the system text goes first in the user turn.
            system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
            user = [m for m in messages if m["role"] != "system"]
            user[0] = {**user[0], "content": f"{system}\n\n{user[0]['content']}"}
            text = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        # The template holds BOS where the model wants it; adding special tokens would double it.
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    # -- judging ------------------------------------------------------------------------------------
    def preferences(self, items: Sequence[JudgeItem]) -> list[float]:
        return [j.preference for j in self.judgements(items)]

    def judgements(self, items: Sequence[JudgeItem]) -> list[Judgement]:
        """One forward pass per item, ``batch_size`` prompts of similar length at a time, in the order given."""
        if not items:
            return []
        model, _ = self._load()
        token_ids = self.choice_token_ids()
        prompts = [self._encode(m) for m in format_messages(self.config.prompt_template, items)]
        limit = getattr(model.config, "max_position_embeddings", None) or math.inf
        results: list[Judgement | None] = [None] * len(items)
        fitting = []
        for index, ids in enumerate(prompts):
            if len(ids) > limit:
                log.warning("judge %s: prompt of %d tokens exceeds the model's %d; no preference", self.name,
                            len(ids), limit)
                results[index] = Judgement(math.nan, {"error": f"prompt of {len(ids)} tokens exceeds {limit}"})
            else:
                fitting.append(index)
        fitting.sort(key=lambda i: -len(prompts[i]))  # similar lengths share a batch: less padding
        for start in range(0, len(fitting), self.batch_size):
            batch = fitting[start:start + self.batch_size]
            for index, logprobs in zip(batch, self._choice_logprobs([prompts[i] for i in batch], token_ids)):
                results[index] = self._judgement(logprobs)
            self.counters["calls"] += len(batch)
            self.counters["prompt_tokens"] += sum(len(prompts[i]) for i in batch)
        return results  # type: ignore[return-value]

    def _choice_logprobs(self, prompts: list[list[int]], token_ids: dict[str, int]) -> list[dict[str, float]]:
        """log P(token) at the position after each prompt, over the full vocabulary."""
        import torch

        model, tokenizer = self._load()
        width = max(len(p) for p in prompts)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, ids in enumerate(prompts):
            input_ids[row, width - len(ids):] = torch.tensor(ids)
            attention_mask[row, width - len(ids):] = 1
        # Left padding: positions must count real tokens only, or a padded row differs from the same row alone.
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            logits = model(input_ids=input_ids.to(model.device), attention_mask=attention_mask.to(model.device),
                           position_ids=position_ids.to(model.device), logits_to_keep=1).logits[:, -1, :]
        logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
        return [{token: float(logprobs[row, tid]) for token, tid in token_ids.items()} for row in range(len(prompts))]

    def _judgement(self, logprobs: dict[str, float]) -> Judgement:
        best = max(logprobs, key=logprobs.get)
        top = [{"token": token, "logprob": lp} for token, lp in sorted(logprobs.items(), key=lambda kv: -kv[1])]
        raw = {"model": self.model_spec, "choice_mass": sum(math.exp(lp) for lp in logprobs.values()),
               "logprobs": {"content": [{"token": best, "logprob": logprobs[best], "top_logprobs": top}]}}
        return Judgement(parse_preference(raw, self.config.parser_kwargs), raw)
