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

from xlpref.cluster import ComputeConfig
from xlpref.distributed import DEEPSPEED_STAGES, LAUNCHERS
from xlpref.errors import InputError
from xlpref.languages import is_language_code
from xlpref.registry import names
from xlpref.training import TrainConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _registered(kind: str, field: str) -> Any:
    """A field validator accepting the names registered for ``kind`` in :mod:`xlpref.registry`."""
    def check(cls: type, value: str) -> str:
        if value not in names(kind):
            raise ValueError(f"unknown {kind} {value!r}; expected one of {names(kind)}")
        return value

    return field_validator(field)(check)


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
    backend: str = Field("hf", description=f"sampler: one of {names('sampler')}")
    n: int = Field(10, ge=1)
    temperature: float = Field(0.9, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(2400, ge=1)
    batch_size: int = Field(8, ge=1)
    tensor_parallel_size: int = Field(1, ge=1)
    is_seeded_per_request: bool = Field(True, description="vllm: a seed per request (resumable); false: one "
                                        "engine seed, faster sampling (docs/scaling.md)")

    check_backend = _registered("sampler", "backend")


class AnnotatorConfig(_Strict):
    name: str = Field("implicit-reward", description=f"one of {names('annotator')}")
    reward: str = Field("cross-lingual", description=f"one of {names('reward')}")
    token_span: Literal["authors", "response", "response+eot"] = Field(
        "authors", description="tokens the reward sums: 'authors' = y_2..y_m + end-of-turn (the authors' code), "
                               "'response' = y_1..y_m, 'response+eot' = y_1..y_m + end-of-turn")
    length_control: bool = True
    alpha_step: float = Field(0.001, gt=0, lt=1)
    upper_bound: Optional[float] = None
    max_batch_tokens: int = Field(4096, ge=16)
    max_new_tokens: int = Field(256, ge=1, description="LIDR answers and translations")
    translation_max_new_tokens: int = Field(8192, ge=1, description="translate-to-english reward: greedy translation "
                                                                    "limit (the authors' 8192)")

    check_name = _registered("annotator", "name")
    check_reward = _registered("reward", "reward")


class TrainingConfig(TrainConfig):
    """The training stage's settings (:class:`xlpref.training.TrainConfig`, the same fields and defaults as
    ``xlpref train``), plus the run's own: which languages' pairs, and how the training processes start.

    ``seed`` is the run's top-level one (iteration t trains with ``seed + t``), so it is not set here.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    languages: Optional[list[str]] = Field(None, description="train only on these languages' pairs (e.g. [en])")
    launcher: str = Field("none", description=f"'none' (this process) or one of {list(LAUNCHERS)}")
    deepspeed: Optional[str] = Field(None, description=f"one of {list(DEEPSPEED_STAGES)} (with launcher accelerate)")

    @field_validator("launcher")
    @classmethod
    def _known_launcher(cls, value: str) -> str:
        if value != "none" and value not in LAUNCHERS:
            raise ValueError(f"unknown launcher {value!r}; expected one of {['none', *LAUNCHERS]}")
        return value

    @field_validator("deepspeed")
    @classmethod
    def _known_deepspeed(cls, value: str | None) -> str | None:
        if value is not None and value not in DEEPSPEED_STAGES:
            raise ValueError(f"unknown DeepSpeed stage {value!r}; expected one of {list(DEEPSPEED_STAGES)}")
        return value

    @field_validator("seed", mode="before")
    @classmethod
    def _seed_is_the_runs(cls, value: Any) -> Any:
        # Runs only for a value given in the YAML (defaults are not validated).
        raise ValueError("set the run's top-level seed instead; iteration t trains with seed + t")

    def for_iteration(self, seed: int) -> TrainConfig:
        """The training stage's config for one iteration (run-only fields left out)."""
        return TrainConfig.model_validate({**self.settings(), "seed": seed})


class EvaluationConfig(_Strict):
    is_enabled: bool = True
    judge: str = Field("local_hf_logprob", description="a folder name under benchmarks/x_alpacaeval/annotators")
    judge_options: dict[str, Any] = Field(default_factory=dict)
    backend: str = Field("hf", description=f"sampler: one of {names('sampler')}")
    temperature: float = Field(0.6, ge=0)
    top_p: float = Field(0.9, gt=0, le=1)
    max_new_tokens: int = Field(2048, ge=1)
    batch_size: int = Field(8, ge=1)
    n_bootstrap: int = Field(2000, ge=100)
    switch_seed: int = Field(0, description="seed of the judge's output-order switch (AlpacaEval's and the "
                                            "authors' is 0), independent of the run's seed")
    results_dir: Optional[Path] = Field(None, description="also record each iteration under this results folder")
    capability_tasks: list[str] = Field(default_factory=list,
                                        description="lm-eval tasks run on every iteration's model ('recommended' = per language set)")
    capability_include_path: Optional[Path] = Field(None, description="folder of local lm-eval task YAML")
    capability_limit: Optional[int] = Field(None, ge=1, description="documents per lm-eval task")
    drift_check: int = Field(0, ge=0, description="re-ask the judge this many cached pairs at the start of each "
                             "evaluation and record judge_drift in metrics.json (0: off; harness/evaluation/drift.py)")
    drift_threshold: float = Field(0.1, gt=0, le=1, description="mean |preference difference| above which the "
                                   "judge is said to have drifted")

    check_backend = _registered("sampler", "backend")


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
    compute: ComputeConfig = ComputeConfig()

    @field_validator("languages")
    @classmethod
    def _known_languages(cls, value: list[str]) -> list[str]:
        unknown = [code for code in value if not is_language_code(code)]
        if unknown:
            raise ValueError(f"unknown language code(s) {unknown}; expected ISO 639-1 codes (two lowercase letters "
                             "naming a language, e.g. en, pt, it)")
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
        return self.model_dump(mode="json", exclude={"training": {"seed"}})


#: Keys that moved, and where their setting lives now.
MOVED_KEYS = {"sampling.data_parallel_size": "expected compute.workers (one vLLM engine per Ray worker, "
              "each with sampling.tensor_parallel_size GPUs; docs/scaling.md)"}


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
    from harness.judges.loading import load_judge_config

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
        if err["type"] == "extra_forbidden" and loc in MOVED_KEYS:
            message = f"unknown key; {MOVED_KEYS[loc]}"
        elif err["type"] == "extra_forbidden":
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
    try:  # values and names (trackers are checked when the run starts, after its data)
        config.training.validate(is_tracker_checked=False)
    except InputError as exc:
        raise InputError(exc.message, path=path, field=f"training.{exc.field}") from None
    if config.evaluation.is_enabled:
        _check_judge(config.evaluation, path)
    run_dir = _absolute(config.run_dir, base) or (base / "runs" / config.name)
    evaluation = config.evaluation.model_copy(update={
        "results_dir": _absolute(config.evaluation.results_dir, base),
        "capability_include_path": _absolute(config.evaluation.capability_include_path, base)})
    return config.model_copy(update={"data": resolved_data, "run_dir": run_dir, "evaluation": evaluation})
