"""The run configuration: one YAML file validated into typed objects before any work starts.

Every default is visible here. Unknown keys, wrong types and missing files are refused with one
message naming the file, the key path and what was expected. The resolved config (defaults filled
in, paths made absolute) is saved in the run's manifest.

Example::

    from harness.config import load_config
    config = load_config("configs/demo.yaml")
    print(config.models.policy, config.languages)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from xlpref.errors import InputError
from xlpref.languages import LANGUAGE_NAMES


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelsConfig(_Strict):
    policy: str = Field(description="pi_0: the English DPO model (spec, folder or hub id)")
    reference: str = Field(description="pi_ref: the model the English DPO model was trained from")
    reward_pair: Literal["original", "current"] = Field(
        "original",
        description="reward at t >= 1: 'original' = (pi_0, pi_ref); 'current' = (pi_t, pi_ref)")


class DataConfig(_Strict):
    train_prompts: Path = Field(description="folder of {lang}.jsonl training prompts")
    prompt_limit: Optional[int] = Field(None, ge=1, description="first N prompt ids per language")
    eval_instructions: Path = Field(description="folder of X-AlpacaEval {lang}.json instructions")
    eval_limit: Optional[int] = Field(None, ge=1, description="first N evaluation ids per language")
    reference_outputs: Path = Field(description="folder of reference {lang}.json outputs (AlpacaEval format)")
    instruction_difficulty: Optional[Path] = Field(None, description="CSV index,instruction_difficulty")


class SamplingConfig(_Strict):
    backend: Literal["hf", "vllm"] = "hf"
    n: int = Field(10, ge=1)
    temperature: float = Field(0.9, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(2400, ge=1)
    batch_size: int = Field(8, ge=1)
    tensor_parallel_size: int = Field(1, ge=1)
    data_parallel_size: int = Field(1, ge=1)
    is_seeded_per_request: bool = Field(True, description="vllm: a seed per request (resumable); false: one "
                                        "engine seed, faster sampling (docs/scaling.md)")


class AnnotatorConfig(_Strict):
    name: Literal["implicit-reward", "lidr"] = "implicit-reward"
    reward: Literal["cross-lingual", "multilingual", "translate-to-english"] = "cross-lingual"
    length_control: bool = True
    alpha_step: float = Field(0.001, gt=0, lt=1)
    upper_bound: Optional[float] = None
    max_batch_tokens: int = Field(4096, ge=16)
    max_new_tokens: int = Field(256, ge=1, description="LIDR answers and translations")


class TrainingConfig(_Strict):
    loss: Literal["sigmoid", "ipo", "kto"] = "sigmoid"
    beta: float = Field(0.1, gt=0)
    nll_weight: float = Field(1.0, ge=0)
    lora: bool = False
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    learning_rate: float = Field(5e-6, gt=0)
    epochs: float = Field(1.0, gt=0)
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_length: int = Field(1024, ge=8)
    precompute_ref_log_probs: bool = True  # speed settings; false for both = trl's defaults
    completion_only_head: bool = True
    gradient_checkpointing: Optional[bool] = Field(None, description="recompute activations; null: on with CUDA, off on CPU")
    languages: Optional[list[str]] = Field(None, description="train only on these languages' pairs (e.g. [en])")
    report_to: list[str] = Field(default_factory=list)
    launcher: Literal["none", "accelerate", "torchrun"] = "none"
    num_processes: int = Field(1, ge=1)
    deepspeed: Optional[Literal["zero2", "zero3"]] = None


class EvaluationConfig(_Strict):
    is_enabled: bool = True
    judge: str = "local_hf_logprob"
    judge_options: dict[str, Any] = Field(default_factory=dict)
    backend: Literal["hf", "vllm"] = "hf"
    temperature: float = Field(0.6, ge=0)
    top_p: float = Field(0.9, gt=0, le=1)
    max_new_tokens: int = Field(2048, ge=1)
    batch_size: int = Field(8, ge=1)
    n_bootstrap: int = Field(2000, ge=100)
    results_dir: Optional[Path] = Field(None, description="also record each iteration under this results folder")
    capability_tasks: list[str] = Field(default_factory=list,
                                        description="lm-eval tasks run on every iteration's model ('recommended' = per language set)")
    capability_include_path: Optional[Path] = Field(None, description="folder of local lm-eval task YAML")
    capability_limit: Optional[int] = Field(None, ge=1, description="documents per lm-eval task")


class RunConfig(_Strict):
    # A plain folder name (runs/<name>, results/<name>-iter<t>): no '/', and no leading '.' (so no '..').
    name: str = Field(pattern=r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")
    description: str = ""
    run_dir: Optional[Path] = Field(None, description="default: runs/<name>")
    seed: int = 42
    iterations: int = Field(2, ge=0)
    languages: list[str] = Field(min_length=1)
    models: ModelsConfig
    data: DataConfig
    sampling: SamplingConfig = SamplingConfig()
    annotator: AnnotatorConfig = AnnotatorConfig()
    training: TrainingConfig = TrainingConfig()
    evaluation: EvaluationConfig = EvaluationConfig()

    @field_validator("languages")
    @classmethod
    def _known_languages(cls, value: list[str]) -> list[str]:
        unknown = [code for code in value if code not in LANGUAGE_NAMES]
        if unknown:
            raise ValueError(f"unknown language code(s) {unknown}; expected codes from {sorted(LANGUAGE_NAMES)}")
        if len(set(value)) != len(value):
            raise ValueError("duplicate language codes")
        return value

    @model_validator(mode="after")
    def _training_languages(self) -> "RunConfig":
        extra = set(self.training.languages or []) - set(self.languages)
        if extra:
            raise ValueError(f"training.languages {sorted(extra)} are not among languages {self.languages}")
        return self

    def resolved(self) -> dict:
        """The config as plain data (defaults filled in, paths as strings) for the manifest."""
        return self.model_dump(mode="json")


def _format_loc(loc: tuple) -> str:
    return ".".join(str(part) for part in loc)


def _absolute(path: Path | None, base: Path) -> Path | None:
    if path is None:
        return None
    path = path.expanduser()
    return path if path.is_absolute() else (base / path)


def _deep_merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _with_base(raw: dict, path: Path, seen: tuple[Path, ...]) -> dict:
    """Resolve ``extends: other.yaml`` (relative to this file): the other file, overridden by this one."""
    base_name = raw.pop("extends", None)
    if base_name is None:
        return raw
    base_path = (path.parent / str(base_name)).resolve()
    if base_path in seen:
        raise InputError(f"'extends' forms a cycle through {base_path}", path=path, field="extends")
    if not base_path.is_file():
        raise InputError(f"base config {base_path} not found", path=path, field="extends")
    base = yaml.safe_load(base_path.read_text(encoding="utf-8"))
    if not isinstance(base, dict):
        raise InputError("expected a mapping at the top level", path=base_path)
    return _deep_merge(_with_base(base, base_path, (*seen, base_path)), raw)


def _check_judge(evaluation: EvaluationConfig, path: Path) -> None:
    """Resolve the judge now (unknown judge or option fails before any work; an ``api_key`` option is refused:
    keys come only from the environment variable the judge config names)."""
    from harness.judges.base import load_judge_config

    try:
        load_judge_config(evaluation.judge, **evaluation.judge_options)
    except InputError as exc:
        raise InputError(exc.message, path=path, field="evaluation.judge_options" if evaluation.judge_options
                         else "evaluation.judge") from None


def load_config(path: str | Path, *, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read, validate and resolve a run config; relative paths are taken from the working directory.

    A config may start with ``extends: base.yaml`` (relative to itself): the base's keys, deep-merged
    with this file's. ``overrides`` (nested dict) are merged last.

    Raises:
        InputError: unreadable YAML, unknown key, wrong type, bad value or a missing data path.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("config file not found; expected a YAML file", path=path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise InputError(f"invalid YAML: {getattr(exc, 'problem', exc)}", path=path,
                         line=mark.line + 1 if mark else None) from exc
    except UnicodeDecodeError as exc:
        raise InputError("not valid UTF-8; expected a UTF-8 YAML file", path=path) from exc
    if not isinstance(raw, dict):
        raise InputError(f"expected a mapping at the top level, found {type(raw).__name__}", path=path)
    raw = _with_base(raw, path, seen=(path.resolve(),))
    raw = _deep_merge(raw, overrides or {})
    try:
        config = RunConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = _format_loc(err["loc"])
        if err["type"] == "extra_forbidden":
            message = "unknown key; check the spelling (see harness/config.py for the keys)"
        elif err["type"] == "missing":
            message = "missing required key"
        else:
            message = f"{err['msg']} (got {err.get('input')!r})"
        raise InputError(message, path=path, field=loc or None) from None
    base = Path.cwd()
    data = config.data
    resolved_data = data.model_copy(update={
        name: _absolute(getattr(data, name), base)
        for name in ("train_prompts", "eval_instructions", "reference_outputs", "instruction_difficulty")
    })
    for name in ("train_prompts", "eval_instructions", "reference_outputs", "instruction_difficulty"):
        value = getattr(resolved_data, name)
        if value is not None and not value.exists():
            raise InputError(f"path does not exist: {value}", path=path, field=f"data.{name}")
    if config.evaluation.is_enabled:
        _check_judge(config.evaluation, path)
    run_dir = _absolute(config.run_dir, base) or (base / "runs" / config.name)
    evaluation = config.evaluation.model_copy(update={
        "results_dir": _absolute(config.evaluation.results_dir, base),
        "capability_include_path": _absolute(config.evaluation.capability_include_path, base)})
    return config.model_copy(update={"data": resolved_data, "run_dir": run_dir, "evaluation": evaluation})
