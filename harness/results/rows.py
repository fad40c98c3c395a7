"""The results tree: one folder per evaluated model (run + iteration, or a published paper row).

Layout::

    results/
      README.md                      how every file here is regenerated
      leaderboard.csv                written by `xlpref leaderboard` (never edited by hand)
      <row_id>/                      one of our evaluations ("kind": "ours")
        row.json                     {"row_id", "model", "run", "iteration", "label", "kind",
                                      "annotator", "annotator_is_demo", "reference", "source", "created", ...}
        capabilities.json            optional: {task: score} from the lm-eval suites
        <lang>/model_outputs.json    AlpacaEval format (instruction, output, generator, dataset, id)
        <lang>/annotations.json      AlpacaEval format (output_1 = reference, output_2 = model, preference 1..2)
        <lang>/metrics.json          AlpacaEval columns (win_rate, standard_error, n_total, avg_length,
                                      length_controlled_winrate, ...) + "annotator" and "reference"
      published/<row_id>/            a paper's numbers ("kind": "published"): row.json + <lang>/metrics.json
                                      only (no outputs, no annotations), "source" cites the table

Row ids are plain names (``[A-Za-z0-9._-]+``, not starting with a dot); our rows are named
``<run>-iter<t>``. Every row and every metrics.json names its annotator and its reference outputs,
and a metrics.json whose judge differs from its row's is refused: numbers from different judges must
never meet unannounced.

Example::

    from harness.results.rows import import_published, read_rows
    import_published("../shared/data/paper/icr_published_results.json", "results")
    rows = read_rows("results")
    print([(r.row_id, r.languages) for r in rows])
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from harness.store import now_iso, safe_join
from xlpref.errors import InputError
from xlpref.jsonio import new_folder_mode, read_json, write_json_atomic
from xlpref.languages import is_language_code

ROW_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]+")
PUBLISHED_DIR = "published"
ROW_KINDS = ("ours", "published")
REQUIRED_ROW_FIELDS = ("row_id", "model", "kind", "annotator", "reference", "source")
# metrics.json numbers the leaderboard reads; each must be a finite number or null when present.
METRIC_NUMBERS = ("win_rate", "standard_error", "length_controlled_winrate", "lc_standard_error",
                  "n_total", "avg_length", "discrete_win_rate")
LANG_FILES = {"model_outputs": "model_outputs.json", "annotations": "annotations.json", "metrics": "metrics.json"}


@dataclass(frozen=True)
class Row:
    """One leaderboard row as stored: its row.json, metrics per language, optional capability scores."""

    meta: dict
    metrics: dict[str, dict]
    path: Path
    capabilities: dict[str, float] = field(default_factory=dict)

    row_id = property(lambda self: self.meta["row_id"])
    model = property(lambda self: self.meta["model"])
    run = property(lambda self: self.meta.get("run"))
    iteration = property(lambda self: self.meta.get("iteration"))
    label = property(lambda self: self.meta.get("label") or self.meta["row_id"])
    kind = property(lambda self: self.meta["kind"])
    annotator = property(lambda self: self.meta["annotator"])
    reference = property(lambda self: self.meta["reference"])
    source = property(lambda self: self.meta["source"])

    @property
    def is_published(self) -> bool:
        return self.kind == "published"

    @property
    def annotator_is_demo(self) -> bool:
        return bool(self.meta.get("annotator_is_demo", False))

    @property
    def judge(self) -> tuple[str, str]:
        """(annotator, reference): numbers are comparable only when both agree."""
        return (self.annotator, self.reference)

    @property
    def published_table(self) -> str:
        """The paper table a published row comes from ("" for our rows)."""
        return self.meta.get("published_table") or ""

    @property
    def group_key(self) -> tuple[bool, str, str, str]:
        """Rows are ranked together only when this agrees: published or ours, judge, paper table."""
        return (self.is_published, self.annotator, self.reference, self.published_table)

    @property
    def languages(self) -> list[str]:
        return list(self.metrics)

    def annotations(self, lang: str) -> list[dict] | None:
        """The stored AlpacaEval annotations of one language, or None (published rows have none)."""
        path = self.path / lang / LANG_FILES["annotations"]
        if not path.exists():
            return None
        records = read_json(path)
        if not isinstance(records, list):
            raise InputError(f"expected a JSON list of annotations, found {type(records).__name__}", path=path)
        return records


# -- validation ------------------------------------------------------------------------------------

def check_row_id(row_id: Any, *, where: str | Path | None = None) -> str:
    """A row id is a plain folder name: letters, digits, '.', '_' and '-', not starting with '.'."""
    if not isinstance(row_id, str) or not ROW_ID_PATTERN.fullmatch(row_id) or row_id.startswith("."):
        raise InputError(f"row id {row_id!r} is not a plain name; expected [A-Za-z0-9._-]+ not starting with '.'",
                         path=where, field="row_id")
    if row_id == PUBLISHED_DIR:
        raise InputError(f"row id {row_id!r} is reserved for the published rows' folder", path=where, field="row_id")
    return row_id


def _check_meta(meta: Any, where: str | Path) -> dict:
    if not isinstance(meta, dict):
        raise InputError(f"expected a JSON object, found {type(meta).__name__}", path=where)
    for name in REQUIRED_ROW_FIELDS:
        value = meta.get(name)
        if not isinstance(value, str) or not value.strip():
            raise InputError("missing or empty; expected a non-empty string", path=where, field=name)
    check_row_id(meta["row_id"], where=where)
    if meta["kind"] not in ROW_KINDS:
        raise InputError(f"unknown kind {meta['kind']!r}; expected one of {list(ROW_KINDS)}", path=where, field="kind")
    iteration = meta.get("iteration")
    if iteration is not None and (not isinstance(iteration, int) or isinstance(iteration, bool) or iteration < 0):
        raise InputError(f"{iteration!r} is not an iteration; expected an integer >= 0 or null", path=where,
                         field="iteration")
    return meta


def _check_metrics(metrics: Any, meta: dict, where: str | Path) -> dict:
    if not isinstance(metrics, dict):
        raise InputError(f"expected a JSON object, found {type(metrics).__name__}", path=where)
    for name in METRIC_NUMBERS:
        value = metrics.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value)):
            raise InputError(f"{value!r} is not a number; expected a finite number or null", path=where, field=name)
    if metrics.get("win_rate") is None and metrics.get("length_controlled_winrate") is None:
        raise InputError("neither win_rate nor length_controlled_winrate is present; expected at least one",
                         path=where)
    for name in ("annotator", "reference"):
        # Metrics from another judge under this row's name would be ranked under the wrong caption.
        if metrics.get(name) is not None and metrics[name] != meta[name]:
            raise InputError(f"{metrics[name]!r} differs from the row's {name} {meta[name]!r}; expected the same "
                             "judge and reference for every language of a row", path=where, field=name)
    return {**metrics, "annotator": meta["annotator"], "reference": meta["reference"]}


def _check_language(lang: str, where: str | Path) -> str:
    if not is_language_code(lang):
        raise InputError(f"unknown language folder {lang!r}; expected an ISO 639-1 code (e.g. en, pt)", path=where)
    return lang


def _check_capabilities(scores: Any, where: str | Path) -> dict[str, float]:
    if not isinstance(scores, dict):
        raise InputError(f"expected a JSON object {{task: score}}, found {type(scores).__name__}", path=where)
    for task, score in scores.items():
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            raise InputError(f"{score!r} is not a score; expected a finite number", path=where, field=task)
    return {task: float(score) for task, score in sorted(scores.items())}


# -- reading ---------------------------------------------------------------------------------------

def read_row(folder: str | Path) -> Row:
    """Read one row folder (row.json, <lang>/metrics.json, optional capabilities.json)."""
    folder = Path(folder)
    meta = _check_meta(read_json(folder / "row.json"), folder / "row.json")
    if meta["row_id"] != folder.name:
        raise InputError(f"row_id {meta['row_id']!r} differs from its folder name {folder.name!r}",
                         path=folder / "row.json", field="row_id")
    metrics = {}
    for lang_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        lang = _check_language(lang_dir.name, lang_dir)
        metrics[lang] = _check_metrics(read_json(lang_dir / LANG_FILES["metrics"]), meta, lang_dir / "metrics.json")
    capabilities_path = folder / "capabilities.json"
    capabilities = (_check_capabilities(read_json(capabilities_path), capabilities_path)
                    if capabilities_path.exists() else {})
    return Row(meta=meta, metrics=metrics, path=folder, capabilities=capabilities)


def row_folders(results_dir: str | Path) -> list[Path]:
    """Every row folder: results/<row_id>/ and results/published/<row_id>/, in sorted order."""
    root = Path(results_dir)
    if not root.is_dir():
        raise InputError("results folder not found; expected a folder of row folders (see harness/results/rows.py)",
                         path=root)
    found = (sorted(p.parent for p in root.glob("*/row.json"))
             + sorted(p.parent for p in root.glob(f"{PUBLISHED_DIR}/*/row.json")))
    return [p for p in found if not p.name.startswith(".")]


def read_rows(results_dir: str | Path, *, include_published: bool = True) -> list[Row]:
    """Read every row under ``results_dir``; duplicate row ids are refused."""
    rows = [read_row(folder) for folder in row_folders(results_dir)]
    seen: dict[str, Path] = {}
    for row in rows:
        if row.row_id in seen:
            raise InputError(f"row id {row.row_id!r} appears twice ({seen[row.row_id]} and {row.path}); "
                             "expected unique row ids", path=results_dir)
        seen[row.row_id] = row.path
    return [r for r in rows if include_published or not r.is_published]


def resolve_row(name: str | Path, results_dir: str | Path = "results") -> Row:
    """A row by id (looked up in ``results_dir`` and its published/ folder) or by the path of its folder."""
    path = Path(name)
    if (path / "row.json").exists():
        return read_row(path)
    if path.exists() or "/" in str(name) or "\\" in str(name):
        raise InputError("not a row folder (no row.json); expected a row id or results/<row_id> (an evaluated "
                         "folder becomes a row with `xlpref evaluate OUTPUTS --judge J --row NAME`)", path=path)
    row_id = check_row_id(str(name))
    for candidate in (safe_join(results_dir, row_id), safe_join(results_dir, PUBLISHED_DIR, row_id)):
        if (candidate / "row.json").exists():
            return read_row(candidate)
    known = [p.name for p in row_folders(results_dir)] if Path(results_dir).is_dir() else []
    raise InputError(f"no row {row_id!r}; expected a row folder or one of {known}", path=results_dir)


def read_judge_agreement(annotator: str, annotators_dir: str | Path | None = None) -> dict | None:
    """The judge's measured agreement with GPT-4 Turbo (annotators/<name>/agreement.json), or None."""
    if annotators_dir is None:
        from benchmarks.x_alpacaeval import ANNOTATORS_DIR as annotators_dir
    if not ROW_ID_PATTERN.fullmatch(annotator) or annotator.startswith("."):
        return None  # not a folder name (e.g. the published judge's description): nothing measured here
    path = Path(annotators_dir) / annotator / "agreement.json"
    if not path.exists():
        return None
    agreement = read_json(path)
    if not isinstance(agreement, dict):
        raise InputError(f"expected a JSON object, found {type(agreement).__name__}", path=path)
    return agreement


# -- writing ---------------------------------------------------------------------------------------

def row_folder(results_dir: str | Path, row: Mapping) -> Path:
    """Where a row lives: results/<row_id>, or results/published/<row_id> for published rows."""
    row_id = check_row_id(row.get("row_id"))
    if row.get("kind") == "published":
        return safe_join(results_dir, PUBLISHED_DIR, row_id)
    return safe_join(results_dir, row_id)


def write_row(results_dir: str | Path, row: dict, per_lang: Mapping[str, Mapping[str, Any]],
              *, capabilities: Mapping[str, float] | None = None) -> Path:
    """Write (or replace) a row folder; returns it.

    Args:
        row: row.json content (see the layout above); "created" is filled in when absent.
        per_lang: {lang: {"model_outputs": list | None, "annotations": list | None, "metrics": dict}}.
        capabilities: optional {task: score}, written as capabilities.json.

    The folder is assembled beside its final place and swapped in, so a replaced row never keeps a
    language folder from its previous version.
    """
    meta = _check_meta({"created": now_iso(), **row}, "row")
    target = row_folder(results_dir, meta)
    if not per_lang:
        raise InputError("a row needs at least one language", record=meta["row_id"])
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        os.chmod(staging, new_folder_mode())  # mkdtemp's 0700 would hide the row from the team
        write_json_atomic(staging / "row.json", meta)
        for lang, files in sorted(per_lang.items()):
            _check_language(lang, f"row {meta['row_id']}")
            metrics = _check_metrics(files.get("metrics"), meta, f"row {meta['row_id']}, language {lang}")
            write_json_atomic(staging / lang / LANG_FILES["metrics"], metrics)
            for key in ("model_outputs", "annotations"):
                if files.get(key) is not None:
                    write_json_atomic(staging / lang / LANG_FILES[key], list(files[key]))
        if capabilities:
            write_json_atomic(staging / "capabilities.json", _check_capabilities(dict(capabilities), "capabilities"))
        _swap_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _swap_into_place(staging: Path, target: Path) -> None:
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, target)


def write_capabilities(row_dir: str | Path, scores: Mapping[str, float]) -> Path:
    """Add (or replace) an existing row's capabilities.json: {task: score} from the lm-eval suites."""
    row_dir = Path(row_dir)
    if not (row_dir / "row.json").exists():
        raise InputError("not a row folder (no row.json); expected results/<row_id>", path=row_dir)
    path = row_dir / "capabilities.json"
    write_json_atomic(path, _check_capabilities(dict(scores), path))
    return path


def record_evaluation(results_dir: str | Path, row: Mapping[str, Any],
                      per_lang_files: Mapping[str, Mapping[str, str | Path]]) -> Path:
    """Copy one evaluation into a row: per language its model_outputs, annotations and metrics files.

    Args:
        row: at least "row_id", "model" and "source"; "annotator" / "reference" default to the metrics' own.
        per_lang_files: {lang: {"model_outputs": path, "annotations": path, "metrics": path}}; a missing
            model_outputs or annotations file is left out, a missing metrics file is an error.
    """
    per_lang = {}
    for lang, files in sorted(per_lang_files.items()):
        per_lang[lang] = {key: (read_json(files[key]) if key in files and (Path(files[key]).exists() or key == "metrics")
                                else None) for key in LANG_FILES}
    first_metrics = next(iter(per_lang.values()), {}).get("metrics") or {}
    meta = {"kind": "ours", "annotator_is_demo": False, "annotator": first_metrics.get("annotator"),
            "reference": first_metrics.get("reference"), **{k: v for k, v in row.items() if v is not None}}
    return write_row(results_dir, meta, per_lang)


def record_run_iteration(results_dir: str | Path, run_name: str, iteration: int,
                         per_lang_dirs: Mapping[str, str | Path], meta: Mapping[str, Any]) -> Path:
    """Copy one iteration's evaluation (per language: model_outputs, annotations, metrics) into a row.

    Args:
        per_lang_dirs: {lang: folder with metrics.json and, when present, model_outputs.json and annotations.json}.
        meta: at least "model" and "source"; "annotator" / "reference" default to the metrics' own.
    Returns:
        The row folder, results/<run_name>-iter<iteration>.
    """
    files = {lang: {key: Path(folder) / name for key, name in LANG_FILES.items()}
             for lang, folder in per_lang_dirs.items()}
    row = {"row_id": f"{run_name}-iter{iteration}", "run": run_name, "iteration": iteration,
           "label": f"{run_name} iteration {iteration}", **meta}
    return record_evaluation(results_dir, row, files)


def judge_agreements(rows: list) -> dict[str, dict]:
    """{annotator: its measured agreement} for the rows' annotators that have one (:func:`read_judge_agreement`)."""
    return {name: agreement for name in sorted({row.annotator for row in rows})
            if (agreement := read_judge_agreement(name)) is not None}
