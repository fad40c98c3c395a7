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

Example::

    from harness.judges.base import JudgeItem, load_judge
    judge = load_judge("local_hf_logprob", model="tiny-random-llama")
    print(judge.preferences([JudgeItem("Say hi in Spanish.", "Hola.", "Hello.")]))   # e.g. [1.49]
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Mapping, Protocol, Sequence

import yaml

from xlpref.errors import InputError

log = logging.getLogger(__name__)

ANNOTATORS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "x_alpacaeval" / "annotators"

#: alpaca-eval's ``fn_completions`` value -> the judge registered under that kind (xlpref.registry "judge").
JUDGE_KINDS = {"openai_completions": "openai_compatible", "local_hf_logprob": "local_hf_logprob"}

#: The ``xlpref`` block's keys and defaults per kind.
OPTION_DEFAULTS: dict[str, dict[str, Any]] = {
    "openai_compatible": {
        "description": "", "is_demo": False, "base_url": None, "api_key_env": None, "is_api_key_required": True,
        "price_per_million_prompt_tokens": 0.0, "price_per_million_completion_tokens": 0.0,
        "max_concurrency": 4, "timeout_s": 60.0, "max_retries": 6, "retry_backoff_s": 1.0,
    },
    "local_hf_logprob": {"description": "", "is_demo": True, "device": None},
}
REQUIRED_OPTIONS = {"openai_compatible": ("base_url", "api_key_env"), "local_hf_logprob": ()}
#: Settings that do not change a judge's answers, left out of its config hash (and so of cache keys).
#: The server's address is one: the same judge model restarted elsewhere resumes from its answers.
RUNTIME_KEYS = frozenset({"description", "is_demo", "base_url", "api_key_env", "is_api_key_required",
                          "max_concurrency", "timeout_s", "max_retries", "retry_backoff_s", "batch_size", "device",
                          "price_per_million_prompt_tokens", "price_per_million_completion_tokens"})
#: What a judge is (a demo or not, and its description): read from its config only, never overridden,
#: so a number cannot lose its demo-judge tag by an option on the command line.
LABEL_KEYS = frozenset({"is_demo", "description"})
_NAME_PATTERN = re.compile(r"[^A-Za-z0-9._-]+")


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


def config_path(name_or_path: str | Path) -> Path:
    """``configs.yaml`` of a judge name (under :data:`ANNOTATORS_DIR`), a folder or a YAML file."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        return path / "configs.yaml"
    candidate = ANNOTATORS_DIR / str(name_or_path) / "configs.yaml"
    if _NAME_PATTERN.search(str(name_or_path)) is None and candidate.is_file():
        return candidate
    raise InputError(f"unknown judge '{name_or_path}'; expected one of {judge_names()}, a config folder or "
                     "a configs.yaml file")


def judge_names() -> list[str]:
    return sorted(p.parent.name for p in ANNOTATORS_DIR.glob("*/configs.yaml"))


def _require(mapping: Any, key: str, kind: type, path: Path, where: str) -> Any:
    if not isinstance(mapping, dict) or key not in mapping:
        raise InputError("missing key; expected it in a judge config", path=path, field=f"{where}.{key}")
    value = mapping[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise InputError(f"got {value!r}; expected a {kind.__name__}", path=path, field=f"{where}.{key}")
    return value


def load_judge_config(name_or_path: str | Path, **overrides: Any) -> JudgeConfig:
    """Read and validate a judge config; ``overrides`` set ``model``, a completions kwarg or an ``xlpref`` option.

    Raises:
        InputError: unknown judge, unreadable YAML, a missing or mistyped key, an unknown override.
    """
    path = config_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InputError(f"invalid YAML: {exc}", path=path) from exc
    if not isinstance(raw, dict) or len(raw) != 1:
        raise InputError("expected one top-level key, the annotator's name (alpaca-eval's layout)", path=path)
    (base_name, body), = raw.items()
    fn = _require(body, "fn_completions", str, path, base_name)
    if fn not in JUDGE_KINDS:
        raise InputError(f"unsupported fn_completions {fn!r}; expected one of {sorted(JUDGE_KINDS)}", path=path,
                         field=f"{base_name}.fn_completions")
    kind = JUDGE_KINDS[fn]
    if _require(body, "fn_completion_parser", str, path, base_name) != "logprob_parser":
        raise InputError("expected 'logprob_parser' (the weighted annotator's parser)", path=path,
                         field=f"{base_name}.fn_completion_parser")
    parser_kwargs = dict(_require(body, "completion_parser_kwargs", dict, path, base_name))
    _require(parser_kwargs, "numerator_token", str, path, f"{base_name}.completion_parser_kwargs")
    _require(parser_kwargs, "denominator_tokens", list, path, f"{base_name}.completion_parser_kwargs")
    if parser_kwargs.get("is_binarize", False):
        raise InputError("expected false: preferences are read as probabilities", path=path,
                         field=f"{base_name}.completion_parser_kwargs.is_binarize")
    completions_kwargs = dict(_require(body, "completions_kwargs", dict, path, base_name))
    _require(completions_kwargs, "model_name", str, path, f"{base_name}.completions_kwargs")
    template_ref = _require(body, "prompt_template", str, path, base_name)
    template_path = path.parent.parent / template_ref  # alpaca-eval: relative to the configs' parent folder
    if not template_path.is_file():
        raise InputError(f"prompt template not found at {template_path}", path=path,
                         field=f"{base_name}.prompt_template")
    options = {**OPTION_DEFAULTS[kind], **(body.get("xlpref") or {})}
    unknown = sorted(set(options) - set(OPTION_DEFAULTS[kind]))
    if unknown:
        raise InputError(f"unknown option(s) {unknown}; expected keys among {sorted(OPTION_DEFAULTS[kind])}",
                         path=path, field=f"{base_name}.xlpref")
    default_model = completions_kwargs["model_name"]
    for key, value in overrides.items():
        if key in LABEL_KEYS:
            raise InputError(f"judge option '{key}' cannot be overridden: a judge's {key} is a property of its "
                             f"config; expected a judge config (a folder or configs.yaml) that says so",
                             path=path, field=f"{base_name}.xlpref.{key}")
        if key == "model":
            completions_kwargs["model_name"] = value
        elif key in completions_kwargs:
            completions_kwargs[key] = value
        elif key in OPTION_DEFAULTS[kind]:
            options[key] = value
        else:
            raise InputError(f"unknown judge option '{key}' for {base_name}; expected model or one of "
                             f"{sorted(set(completions_kwargs) | set(OPTION_DEFAULTS[kind]))}")
    missing = [k for k in REQUIRED_OPTIONS[kind] if not isinstance(options[k], str) or not options[k]]
    if missing:
        raise InputError(f"missing option(s) {missing}", path=path, field=f"{base_name}.xlpref")
    # Another model is another judge: its name says so, so leaderboards never mix the two.
    name = base_name if completions_kwargs["model_name"] == default_model else \
        f"{base_name}.{_NAME_PATTERN.sub('-', str(completions_kwargs['model_name'])).strip('-')}"
    return JudgeConfig(name=name, kind=kind, prompt_template=template_path.read_text(encoding="utf-8"),
                       completions_kwargs=completions_kwargs, parser_kwargs=parser_kwargs, options=options,
                       source=path, base_name=base_name, pretty_name=str(body.get("pretty_name", "")))


def load_judge(name_or_path: str | Path, **overrides: Any) -> Judge:
    """A judge from its config (see :func:`load_judge_config` for ``overrides``, e.g. ``model=``, ``base_url=``)."""
    from xlpref.registry import resolve

    config = load_judge_config(name_or_path, **overrides)
    return resolve("judge", config.kind).from_config(config)


def parse_option_value(text: str) -> Any:
    """A ``--judge-option key=value`` value as YAML (``4`` -> int, ``true`` -> bool, else the string)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (int, float, bool, str)) or value is None else text


# -- measured agreement -------------------------------------------------------------------------------

def agreement_path(judge_name: str) -> Path:
    return ANNOTATORS_DIR / judge_name / "agreement.json"


def read_agreement(judge: Judge) -> dict | None:
    """The judge's measured agreement with GPT-4 Turbo, when it was measured with this very config."""
    from xlpref.jsonio import read_json

    path = agreement_path(judge.name)
    if _NAME_PATTERN.search(judge.name) or not path.is_file():
        return None
    agreement = read_json(path)
    if not isinstance(agreement, dict) or agreement.get("config_hash") != judge.config_hash:
        return None
    keys = ("agreement_clear", "n_clear", "agreement_all", "n_all", "spearman", "n_models", "n_per_model")
    return {k: agreement.get(k) for k in keys}


def __getattr__(name: str) -> Any:
    # The two implementations live in their own modules; importing them here lazily keeps
    # ``harness.judges.base`` light (no openai / torch import) and the registry's targets stable.
    if name == "OpenAICompatibleJudge":
        from harness.judges.api import OpenAICompatibleJudge

        return OpenAICompatibleJudge
    if name == "LocalHFLogprobJudge":
        from harness.judges.local import LocalHFLogprobJudge

        return LocalHFLogprobJudge
    raise AttributeError(f"module 'harness.judges.base' has no attribute {name!r}")
