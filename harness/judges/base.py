"""Pairwise judges: AlpacaEval 2's weighted annotator, through an OpenAI-compatible API or a local model.

A judge reads one AlpacaEval prompt per pair (instruction, output_1 = reference, output_2 = model)
and answers with one token, ``m`` (output_1) or ``M`` (output_2); the preference is alpaca-eval's
``logprob_parser`` on the two tokens' log-probabilities: ``2 - P(m) / (P(m) + P(M))``, in [1, 2],
2 when the model's output wins. Configs live in ``benchmarks/x_alpacaeval/annotators/<name>/configs.yaml``
(alpaca-eval's keys plus one ``xlpref`` block):

- ``weighted_gpt4_turbo_multilingual``: the paper's judge (OpenAI API, key from ``$OPENAI_API_KEY``);
- ``weighted_vllm_multilingual``: the same prompt on a self-hosted OpenAI-compatible server (vLLM);
- ``local_hf_logprob``: a local transformers model, the CPU demo judge (always labelled a demo).

Reused from alpaca-eval: the prompt template text (copied, with METHOD.md's sentence on the answer's
language added), its prompt formatting (``utils.make_prompts``, ``utils.prompt_to_chatml``), its parser
(``completion_parsers.logprob_parser``) and its order randomisation (``RandomSwitchTwoColumnsProcessor``,
applied in :mod:`harness.evaluation.judging`; the judges see pairs in the order given).

Why not alpaca-eval's ``PairwiseAnnotator`` end to end: its cache is keyed by the annotator's *name*
(a changed judge model or prompt silently reuses old answers) and is rewritten as one JSON file per
128 rows (a crash loses finished answers); its OpenAI decoder takes keys from ``OPENAI_API_KEY`` or
client-config files rather than the variable our config names, retries only on rate-limit messages with
a fixed sleep, and after its last retry returns an empty completion that is silently dropped from the
win rate; and it has no local decoder that returns token probabilities. Importing it also sets the
root logger to INFO (undone in :func:`alpaca_eval_modules`) and loads a ``.env`` file if one exists
above the package (alpaca-eval's documented behaviour).

This module holds what every judge shares: the :class:`Judge` protocol, the items and answers, the
resolved :class:`JudgeConfig` and alpaca-eval's pieces. Reading configs and choosing the judge class
is :mod:`harness.judges.loading`; the judges are :mod:`harness.judges.api` and :mod:`harness.judges.local`.

Example::

    from harness.judges.base import JudgeItem, format_messages
    from harness.judges.loading import load_judge_config
    config = load_judge_config("local_hf_logprob")
    print(format_messages(config.prompt_template, [JudgeItem("Say hi in Spanish.", "Hola.", "Hello.")])[0][-1])
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace
from typing import Mapping, Protocol, Sequence

log = logging.getLogger(__name__)

#: Settings that do not change a judge's answers, left out of its config hash (and so of cache keys).
#: The server's address is one: the same judge model restarted elsewhere resumes from its answers.
RUNTIME_KEYS = frozenset({"description", "is_demo", "base_url", "api_key_env", "is_api_key_required",
                          "max_concurrency", "timeout_s", "max_retries", "retry_backoff_s", "batch_size", "device",
                          "price_per_million_prompt_tokens", "price_per_million_completion_tokens"})
#: What a judge is (a demo or not, and its description): read from its config only, never overridden,
#: so a number cannot lose its demo-judge tag by an option on the command line.
LABEL_KEYS = frozenset({"is_demo", "description"})


@dataclass(frozen=True)
class JudgeItem:
    """One pair to judge; AlpacaEval's convention: output_1 = reference, output_2 = the model."""

    instruction: str
    output_1: str
    output_2: str


@dataclass(frozen=True)
class Judgement:
    """A preference in [1, 2] (NaN when the judge named neither output) and the raw completion."""

    preference: float
    raw_completion: dict | None = None


class Judge(Protocol):
    """A pairwise judge. ``preferences`` keeps the given order; order randomisation is the caller's."""

    name: str
    config_hash: str
    is_demo: bool
    description: str
    counters: dict  # calls, failed_calls, prompt_tokens, completion_tokens, cost_usd

    def preferences(self, items: Sequence[JudgeItem]) -> list[float]:
        """1 + P(output_2 better) per item, in [1, 2]; NaN when unparsable."""
        ...


def new_counters() -> dict:
    return {"calls": 0, "failed_calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0}


# -- alpaca-eval's pieces ---------------------------------------------------------------------------

@lru_cache(maxsize=1)
def alpaca_eval_modules() -> SimpleNamespace:
    """alpaca-eval's ``utils``, ``completion_parsers`` and ``processors``, without its logging side effect."""
    root = logging.getLogger()
    level = root.level
    from alpaca_eval import completion_parsers, processors, utils

    root.setLevel(level)  # alpaca_eval.annotators sets the root logger to INFO on import
    return SimpleNamespace(utils=utils, completion_parsers=completion_parsers, processors=processors)


def format_messages(template: str, items: Sequence[JudgeItem]) -> list[list[dict]]:
    """Chat messages per item: alpaca-eval's ``make_prompts`` then ``prompt_to_chatml``, as its OpenAI decoder does."""
    import pandas as pd

    if not items:
        return []
    ae = alpaca_eval_modules()
    frame = pd.DataFrame([{"instruction": i.instruction, "output_1": i.output_1, "output_2": i.output_2}
                          for i in items])
    prompts, _ = ae.utils.make_prompts(frame, template=template, batch_size=1)
    return [ae.utils.prompt_to_chatml(prompt.strip()) for prompt in prompts]


def parse_preference(completion: Mapping, parser_kwargs: Mapping) -> float:
    """alpaca-eval's ``logprob_parser`` on one completion; NaN when neither choice token is among the logprobs."""
    choices = {parser_kwargs["numerator_token"], *parser_kwargs["denominator_tokens"]}
    top = completion["logprobs"]["content"][0]["top_logprobs"]
    if not choices & {entry["token"] for entry in top}:
        return math.nan  # the parser's own NaN case, without its warning that prints the whole completion
    value = alpaca_eval_modules().completion_parsers.logprob_parser(dict(completion), **parser_kwargs)[0]
    return float(value)


# -- configs ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class JudgeConfig:
    """A judge config resolved from ``configs.yaml`` and overrides (the template is read in)."""

    name: str
    kind: str
    prompt_template: str
    completions_kwargs: dict
    parser_kwargs: dict
    options: dict
    source: Path | None = None
    base_name: str = ""
    pretty_name: str = ""

    @property
    def model(self) -> str:
        return str(self.completions_kwargs["model_name"])

    @property
    def hash(self) -> str:
        """sha256 of what decides the judge's answers (prompt, model, decoding, parser)."""
        from harness.store import config_hash

        answer_options = {k: v for k, v in self.options.items() if k not in RUNTIME_KEYS}
        return config_hash({
            "kind": self.kind, "prompt_template": self.prompt_template, "parser": self.parser_kwargs,
            "completions_kwargs": {k: v for k, v in self.completions_kwargs.items() if k not in RUNTIME_KEYS},
            "options": answer_options,
        })
