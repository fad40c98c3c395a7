"""Judge configs read from ``benchmarks/x_alpacaeval/annotators/<name>/configs.yaml``, and judges built from them.

A config is alpaca-eval's layout (one top-level key, the annotator's name: ``fn_completions``,
``prompt_template``, ``completions_kwargs``, ``fn_completion_parser``, ``completion_parser_kwargs``)
plus one ``xlpref`` block of options per judge kind (:data:`OPTION_DEFAULTS`). The kind picks the class
through :data:`JUDGES`, a table of lazy ``"module:attr"`` strings.

Example::

    from harness.judges.base import JudgeItem
    from harness.judges.loading import load_judge
    judge = load_judge("local_hf_logprob", model="tiny-random-llama")
    print(judge.preferences([JudgeItem("Say hi in Spanish.", "Hola.", "Hello.")]))   # e.g. [1.49]
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from benchmarks.x_alpacaeval import ANNOTATORS_DIR
from harness.judges.base import LABEL_KEYS, Judge, JudgeConfig
from xlpref.errors import InputError
from xlpref.registry import import_target

#: alpaca-eval's ``fn_completions`` value -> the judge kind that answers it.
JUDGE_KINDS = {"openai_completions": "openai_compatible", "local_hf_logprob": "local_hf_logprob"}
#: The judge class of each kind, as a lazy ``"module:attr"`` string: listing kinds or reading a config
#: imports neither openai nor torch.
JUDGES = {"openai_compatible": "harness.judges.api:OpenAICompatibleJudge",
          "local_hf_logprob": "harness.judges.local:LocalHFLogprobJudge"}

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
_NAME_PATTERN = re.compile(r"[^A-Za-z0-9._-]+")




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
    config = load_judge_config(name_or_path, **overrides)
    return import_target(JUDGES[config.kind]).from_config(config)


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
