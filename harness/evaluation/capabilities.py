"""Capability retention: lm-eval tasks on a model, their scores beside X-AlpacaEval on the leaderboard.

The paper checked that ICR keeps the policy's general abilities: multilingual ARC, HellaSwag, MMLU
and TruthfulQA stayed flat across iterations. lm-eval 0.4.13 ships these as the Okapi tasks
(``arc_<lang>``, ``hellaswag_<lang>``, ``m_mmlu_<lang>``, ``truthfulqa_<lang>_mc2``); their data
comes from the Hugging Face hub (``alexandrainst/m_*``), so they need network access once. The paper
does not publish which variants or shot counts it used: :func:`recommended_tasks` picks the Okapi
tasks at lm-eval's defaults (0-shot) and says so. Run configs name them under
``evaluation.capability_tasks`` (a list of task names, or ``["recommended"]``).

Offline, a local task folder (lm-eval YAML + JSONL data) works the same way; tests use
``tests/fixtures/lm_eval_tasks``.

Each task's score is its primary metric: ``acc_norm`` when the task reports it, else ``acc``, else its
first higher-is-better metric (the Open LLM Leaderboard's choice for ARC and HellaSwag: length-normalised
accuracy). The leaderboard stores fractions such as accuracy as percentages, like the win rates.

Written here by hand, and why: only glue around lm-eval. (1) lm-eval passes a local task's
``dataset_kwargs.data_files`` to ``datasets.load_dataset`` as written, which resolves relative paths
against the working directory; a task folder is therefore copied with those paths made absolute
(relative to each YAML file) before lm-eval reads it. (2) Indexing lm-eval's ~14,700 built-in task
configs takes ~15 s of CPU (measured), so a folder of local tasks is indexed alone and the built-ins
only when a requested name is not found there.

Example::

    from harness.evaluation.capabilities import record_capabilities, run_capability_suite
    scores = run_capability_suite("tiny-random-llama", ["xlpref_toy_mc"],
                                  include_path="tests/fixtures/lm_eval_tasks", limit=4)
    print(scores)  # {"xlpref_toy_mc": {"metric": "acc_norm", "value": ..., "stderr": ..., "n_docs": 4, ...}}
    record_capabilities("results/demo-iter1", scores)   # `xlpref leaderboard` shows a column per task
"""

from __future__ import annotations

import difflib
import math
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from xlpref.errors import InputError

SUITES = ("lm-eval",)
#: ``--tasks recommended`` / ``capability_tasks: [recommended]`` expands to :func:`recommended_tasks`.
RECOMMENDED = "recommended"
#: The paper's main setting; its low-resource languages sw and th have no Okapi tasks (bn has).
RECOMMENDED_LANGUAGES = ("en", "es", "de", "fr", "ru")
#: English equivalents of the Okapi tasks (Okapi has English only for MMLU).
ENGLISH_TASKS = ("arc_challenge", "hellaswag", "m_mmlu_en", "truthfulqa_mc2")
#: Languages with all four Okapi tasks in lm-eval 0.4.13 (read from lm_eval/tasks/okapi/).
OKAPI_LANGUAGES = ("ar", "bn", "ca", "da", "de", "es", "eu", "fr", "gu", "hi", "hr", "hu", "hy", "id", "it",
                   "kn", "ml", "mr", "ne", "nl", "pt", "ro", "ru", "sk", "sr", "sv", "ta", "te", "uk", "vi")
#: Preferred primary metrics, best first.
PRIMARY_METRICS = ("acc_norm", "acc")
#: Metrics lm-eval reports as fractions in [0, 1]: shown and stored on the leaderboard as percentages.
FRACTION_METRICS = frozenset({"acc", "acc_norm", "acc_mutual_info", "exact_match", "f1", "mc1", "mc2"})
_LOCAL_PATH_KEYS = ("data_files", "data_dir")


def recommended_tasks(langs: Sequence[str] = RECOMMENDED_LANGUAGES) -> list[str]:
    """ARC, HellaSwag, MMLU and TruthfulQA (mc2) per language, as lm-eval 0.4.13 names them."""
    tasks = []
    for lang in langs:
        if lang == "en":
            tasks += ENGLISH_TASKS
        elif lang in OKAPI_LANGUAGES:
            tasks += [f"arc_{lang}", f"hellaswag_{lang}", f"m_mmlu_{lang}", f"truthfulqa_{lang}_mc2"]
        else:
            raise InputError(f"no multilingual ARC/HellaSwag/MMLU/TruthfulQA tasks for {lang!r} in lm-eval 0.4.13; "
                             f"expected en or one of {list(OKAPI_LANGUAGES)}", field="langs")
    return tasks


def expand_tasks(names: Sequence[str], langs: Sequence[str] = RECOMMENDED_LANGUAGES) -> list[str]:
    """Task names with ``recommended`` expanded; duplicates dropped, order kept."""
    tasks = []
    for name in (n.strip() for n in names if n.strip()):
        tasks += recommended_tasks(langs) if name == RECOMMENDED else [name]
    if not tasks:
        raise InputError("no tasks; expected lm-eval task names or 'recommended'", field="tasks")
    return list(dict.fromkeys(tasks))


# -- local task folders ----------------------------------------------------------------------------

class _Tagged(str):
    """A YAML scalar with a custom tag (lm-eval's ``!function utils.f``), kept as written."""

    tag = "!"


def _yaml_loader() -> type:
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def construct(loader: Any, tag_suffix: str, node: Any) -> _Tagged:
        value = _Tagged(loader.construct_scalar(node))
        value.tag = "!" + tag_suffix
        return value

    Loader.add_multi_constructor("!", construct)
    return Loader


def _yaml_dumper() -> type:
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    Dumper.add_representer(_Tagged, lambda dumper, value: dumper.represent_scalar(value.tag, str(value)))
    return Dumper


def _absolute(value: Any, base: Path) -> Any:
    """``value`` (a path, a list or a {split: path} map) with relative local paths made absolute."""
    if isinstance(value, dict):
        return {key: _absolute(item, base) for key, item in value.items()}
    if isinstance(value, list):
        return [_absolute(item, base) for item in value]
    if isinstance(value, str) and "://" not in value and not Path(value).is_absolute():
        return str((base / value).resolve())
    return value


def _with_absolute_paths(config: Any, base: Path) -> Any | None:
    """The task config with local data paths made absolute, or None when there is nothing to change."""
    if not isinstance(config, dict):
        return None
    kwargs = config.get("dataset_kwargs")
    changed = dict(config)
    if isinstance(kwargs, dict):
        changed["dataset_kwargs"] = {key: _absolute(value, base) if key in _LOCAL_PATH_KEYS else value
                                     for key, value in kwargs.items()}
    path = config.get("dataset_path")
    if isinstance(path, str) and path.startswith(("./", "../")):
        changed["dataset_path"] = str((base / path).resolve())
    return changed if changed != config else None


def check_task_folder(include_path: str | Path) -> Path:
    """``include_path`` as a Path, when it is a folder."""
    source = Path(include_path).expanduser()
    if not source.is_dir():
        raise InputError("task folder not found; expected a folder of lm-eval task YAML files",
                         path=source, field="include_path")
    return source


def resolve_local_tasks(include_path: str | Path, workdir: str | Path) -> Path:
    """The task folder lm-eval should read: ``include_path`` itself, or a copy with absolute data paths.

    Only task configs (``*.yaml``, ``*.yml``, include files such as ``_arc_yaml``) and Python helpers
    (``!function``) are copied; data files stay where they are and are referred to by absolute path.
    """
    import yaml

    source = check_task_folder(include_path)
    rewrites = {}
    for path in sorted(p for p in source.rglob("*") if p.is_file() and p.name.endswith(("yaml", "yml"))):
        try:
            config = yaml.load(path.read_text(encoding="utf-8"), Loader=_yaml_loader())
        except yaml.YAMLError:
            continue  # lm-eval reports its own parse error when the task is requested
        changed = _with_absolute_paths(config, path.parent.resolve())
        if changed is not None:
            rewrites[path.relative_to(source)] = changed
    if not rewrites:
        return source
    target = Path(workdir) / "tasks"
    shutil.copytree(source, target, ignore=lambda folder, names: [
        n for n in names if (Path(folder) / n).is_file() and not n.endswith(("yaml", "yml", ".py"))])
    for relative, config in rewrites.items():
        (target / relative).write_text(yaml.dump(config, Dumper=_yaml_dumper(), allow_unicode=True,
                                                 sort_keys=False), encoding="utf-8")
    return target


# -- lm-eval ---------------------------------------------------------------------------------------

def task_manager(names: Sequence[str], include_path: Path | None) -> Any:
    """An lm-eval TaskManager that knows every name (local folder first, built-ins only when needed)."""
    from lm_eval.tasks import TaskManager

    if include_path is not None:
        local = TaskManager(include_path=str(include_path), include_defaults=False)
        if all(_is_known(local, name) for name in names):
            return local
    manager = TaskManager(include_path=str(include_path) if include_path else None)
    unknown = [name for name in names if not _is_known(manager, name)]
    if unknown:
        hints = {name: difflib.get_close_matches(name, manager.all_tasks, n=3) for name in unknown}
        raise InputError("unknown lm-eval task(s): " + "; ".join(
            f"{name!r}" + (f" (did you mean {', '.join(hint)}?)" if hint else "") for name, hint in hints.items())
            + "; expected names from `lm-eval ls tasks` or a task in --include-path", field="tasks")
    return manager


def _is_known(manager: Any, name: str) -> bool:
    return name in manager.task_index or Path(name).suffix in (".yaml", ".yml") and Path(name).is_file()


def load_tasks(manager: Any, names: Sequence[str]) -> list[Any]:
    """lm-eval Task / Group objects for ``names`` (reads their datasets: fails early, with the task named)."""
    loaded = []
    for name in names:
        try:
            found = manager.load(name)
        except OSError as exc:  # ConnectionError offline, FileNotFoundError for missing local data
            raise InputError(f"cannot read the data of task {name!r}: {exc}; expected network access to the "
                             "hub (unset HF_DATASETS_OFFLINE / HF_HUB_OFFLINE) or local data files",
                             field="tasks") from exc
        # A group stands for itself; a task or a tag stands for its (leaf) tasks.
        loaded += [found["groups"][name]] if name in found["groups"] else list(found["tasks"].values())
    return loaded


def lm_eval_batch_size(batch_size: int | str | None, device: str) -> int | str:
    """lm-eval's batch size: as given, else ``"auto"`` on CUDA (lm-eval finds the largest batch that fits)
    and 1 on CPU (its search runs full-length forwards from batch 64 down: minutes on a CPU)."""
    if batch_size is None:
        return "auto" if device.startswith("cuda") else 1
    if batch_size == "auto" or (isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size >= 1):
        return batch_size
    raise InputError(f"got {batch_size!r}; expected an integer >= 1 or 'auto'", field="batch_size")


def _load_lm(model_spec: str, *, batch_size: int | str | None, device: str | None) -> tuple[Any, dict]:
    """lm-eval's HF model for one of our specs (built-in, folder, LoRA folder, hub id)."""
    from lm_eval.models.huggingface import HFLM

    from xlpref.models import _adapter_base, default_device, resolve_model_path

    path = resolve_model_path(model_spec)
    device = device or default_device()
    batch_size = lm_eval_batch_size(batch_size, device)
    base = _adapter_base(path)
    args = {"pretrained": base or path, "dtype": "bfloat16" if device.startswith("cuda") else "float32"}
    if base:
        args["peft"] = path
    try:
        lm = HFLM(**args, device=device, batch_size=batch_size)
    except OSError as exc:
        raise InputError(f"cannot load model {model_spec!r} for lm-eval: {exc}") from exc
    return lm, {**args, "device": device, "batch_size": batch_size}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        else None


def primary_metric(task_results: Mapping[str, Any], higher_is_better: Mapping[str, bool] | None = None,
                   ) -> tuple[str, float, float | None] | None:
    """(metric, value, stderr) from one entry of lm-eval's ``results``; None without a higher-is-better metric.

    lm-eval keys read ``<metric>,<filter>`` (``acc,none``) and ``<metric>_stderr,<filter>``;
    ``higher_is_better`` is lm-eval's {metric: bool} for the task (unlisted metrics count as higher-is-better,
    lm-eval's default). Lower-is-better metrics (perplexity) stay in lm-eval's results only: the
    leaderboard marks the highest value of a column as the best.
    """
    values = {}
    for key, value in task_results.items():
        metric, sep, filter_name = key.partition(",")
        if (sep and not metric.endswith("_stderr") and _number(value) is not None
                and (higher_is_better or {}).get(metric, True)):
            name = metric if filter_name == "none" else key
            values[name] = (float(value), _number(task_results.get(f"{metric}_stderr,{filter_name}")))
    if not values:
        return None
    name = next((m for m in PRIMARY_METRICS if m in values), next(iter(values)))
    return (name, *values[name])


def _finite(value: Any) -> Any:
    """``value`` with NaN / infinity replaced by None (JSON has neither)."""
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _score_names(loaded: Sequence[Any], results: Mapping[str, Any], higher_is_better: Mapping[str, Any]) -> list[str]:
    """The names to report: each requested task, each group with an aggregate score, else its tasks."""
    from lm_eval.api.group import Group

    names = []
    for item in loaded:
        if isinstance(item, Group):
            scored = (item.name in results
                      and primary_metric(results[item.name], higher_is_better.get(item.name)) is not None)
            names += [item.name] if scored else [t.task_name for t in item.get_all_tasks()]
        else:
            names.append(item.task_name)
    return list(dict.fromkeys(names))


def evaluate_suite(model_spec: str, tasks: str | Sequence[str], *, include_path: str | Path | None = None,
                   limit: int | None = None, batch_size: int | str | None = None, seed: int = 42,
                   device: str | None = None) -> dict:
    """Run lm-eval's tasks on a model; returns the scores and lm-eval's results trimmed to what matters.

    Args:
        tasks: lm-eval task, group or tag names (a list or "a,b"); ``recommended`` expands to
            :func:`recommended_tasks`.
        include_path: a folder of local task YAML files, searched before lm-eval's own tasks.
        limit: the first N documents of each task (smoke tests); None for all.
        batch_size: see :func:`lm_eval_batch_size` (default: "auto" on CUDA, 1 on CPU).

    Returns:
        {"scores": {task: score}, "results", "versions", "n-shot", "n-samples", "higher_is_better"
        (lm-eval's, as it reports them), "config": model, tasks, limit, seeds, versions}.
    Raises:
        InputError: unknown task, missing task folder, unreadable dataset (e.g. a hub dataset offline),
        unknown model.
    """
    import lm_eval

    tasks = expand_tasks(tasks.split(",") if isinstance(tasks, str) else tasks)
    # The temporary folder holds the local task configs with absolute data paths (see the module docstring).
    with tempfile.TemporaryDirectory(prefix="xlpref-lm-eval-") as workdir:
        local = resolve_local_tasks(include_path, workdir) if include_path is not None else None
        manager = task_manager(tasks, local)
        loaded = load_tasks(manager, tasks)
        lm, model_args = _load_lm(model_spec, batch_size=batch_size, device=device)
        output = lm_eval.simple_evaluate(
            model=lm, tasks=loaded, task_manager=manager, limit=limit, log_samples=False,
            random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
    results, higher_is_better = output["results"], output.get("higher_is_better", {})
    scores = {}
    for name in _score_names(loaded, results, higher_is_better):
        found = primary_metric(results.get(name, {}), higher_is_better.get(name))
        if found is None:
            continue
        metric, value, stderr = found
        samples = output.get("n-samples", {}).get(name, {})
        scores[name] = {"metric": metric, "value": value, "stderr": stderr,
                        "n_docs": samples.get("effective"), "n_docs_total": samples.get("original"),
                        "version": output.get("versions", {}).get(name)}
    config = {"suite": "lm-eval", "model": model_spec, "model_args": model_args, "tasks": tasks,
              "include_path": str(include_path) if include_path is not None else None, "limit": limit,
              "seed": seed, "lm_eval_version": output.get("lm_eval_version"),
              "transformers_version": output.get("transformers_version"),
              "model_num_parameters": output["config"].get("model_num_parameters")}
    raw = {key: _finite(output.get(key, {})) for key in ("results", "versions", "n-shot", "n-samples",
                                                          "higher_is_better")}
    return {"scores": scores, **raw, "config": config}


def run_capability_suite(model_spec: str, tasks: str | Sequence[str], *, include_path: str | Path | None = None,
                         limit: int | None = None, batch_size: int | str | None = None, seed: int = 42,
                         device: str | None = None) -> dict[str, dict]:
    """{task: {"metric", "value", "stderr", "n_docs", ...}} for one model: what the ICR loop calls per iteration."""
    return evaluate_suite(model_spec, tasks, include_path=include_path, limit=limit, batch_size=batch_size,
                          seed=seed, device=device)["scores"]


# -- leaderboard -----------------------------------------------------------------------------------

def leaderboard_score(score: Mapping[str, Any]) -> float:
    """A score as the leaderboard shows it: fractions (accuracy, ...) as percentages, others as reported."""
    return 100.0 * score["value"] if score["metric"] in FRACTION_METRICS else score["value"]


def record_capabilities(row_dir: str | Path, scores: Mapping[str, Mapping[str, Any]]) -> Path:
    """Add these scores to a results row's capabilities.json (other tasks already there are kept)."""
    from harness.results.rows import read_row, write_capabilities

    row = read_row(row_dir)
    if row.is_published:
        raise InputError("a published row holds the paper's numbers; expected one of our rows", path=row_dir)
    merged = {**row.capabilities, **{task: leaderboard_score(score) for task, score in scores.items()}}
    return write_capabilities(row_dir, merged)
