"""Typed records and validating loaders for X-AlpacaEval, reference outputs and training prompts.

Layouts read (the shared data and the bundled mini set use the same):

- ``x_alpacaeval/instructions/{lang}.json``: list of ``{"id", "dataset", "instruction"}``;
- ``x_alpacaeval/reference_outputs/{generator}/{lang}.json``: AlpacaEval outputs
  (``instruction``, ``output``, ``generator``, ``dataset``, ``id``); without ``id`` they are aligned by
  instruction text, else by position;
- ``train_prompts/{subset}/{lang}.jsonl``: ``{"instruction", "instruction_id"}`` a line;
- ``preference_pairs/en.jsonl`` (mini set): ``{"prompt", "chosen", "rejected"}`` a line.

Every problem raises :class:`xlpref.errors.InputError` naming file, line or record, field and
expectation. The hub dataset ``zhihz0535/X-AlpacaEval`` (pinned revision) is the path for users with
network access (:func:`download_x_alpacaeval`).

Example::

    from xlpref.data import load_instructions, default_data_dir
    by_lang = load_instructions(default_data_dir() / "x_alpacaeval" / "instructions", ["en", "es"])
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from xlpref.errors import InputError
from xlpref.jsonio import iter_jsonl, read_json
from xlpref.languages import check_language_code

#: The hub copy of the original X-AlpacaEval release (en, zh, ko, it, es), pinned.
HUB_DATASET = "zhihz0535/X-AlpacaEval"
#: Commit "Upload 5 files" (the data files; later commits only edit the README).
HUB_REVISION = "03d79e702ac75fc1c7a1fe773b1c168653193c69"
HUB_FILES = {"en": "english.json", "zh": "chinese.json", "ko": "korean.json", "it": "italian.json",
             "es": "spanish.json"}
#: The largest instruction accepted (characters); longer ones are almost surely a broken file.
MAX_INSTRUCTION_CHARS = 100_000

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The benchmark's definition folder (benchmark.yaml, annotators/, the bundled mini set): the one place
#: its path is built; ``benchmarks.x_alpacaeval`` and the harness's judges take it from here.
BENCHMARK_DIR = REPO_ROOT / "benchmarks" / "x_alpacaeval"
MINI_DIR = BENCHMARK_DIR / "mini"


def default_data_dir() -> Path:
    """The shared data folder: ``$XLPREF_DATA_DIR``, else ``../shared/data`` beside the repository."""
    env = os.environ.get("XLPREF_DATA_DIR")
    return Path(env) if env else (REPO_ROOT.parent / "shared" / "data")


@dataclass(frozen=True)
class Instruction:
    """One X-AlpacaEval instruction in one language."""

    id: int
    lang: str
    instruction: str
    dataset: str = ""


@dataclass(frozen=True)
class TrainPrompt:
    """One training prompt in one language; ``instruction_id`` is shared across languages."""

    instruction_id: str
    lang: str
    instruction: str
    is_translation_task: bool = False


@dataclass(frozen=True)
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str


def _require_text(value: Any, *, path: Path, record: int | None = None, line: int | None = None,
                  field: str) -> str:
    if not isinstance(value, str):
        raise InputError(f"expected a string, found {type(value).__name__}", path=path, line=line,
                         record=record, field=field)
    if not value.strip():
        raise InputError("expected a non-empty string", path=path, line=line, record=record, field=field)
    if len(value) > MAX_INSTRUCTION_CHARS:
        raise InputError(f"{len(value)} characters; expected at most {MAX_INSTRUCTION_CHARS}", path=path,
                         line=line, record=record, field=field)
    return value


def _require_field(obj: dict, name: str, *, path: Path, record: int | None = None, line: int | None = None) -> Any:
    if name not in obj:
        raise InputError("missing field; expected it in every record", path=path, line=line, record=record,
                         field=name)
    return obj[name]


def _lang_file(folder: Path, lang: str, suffix: str) -> Path:
    path = folder / f"{lang}{suffix}"
    check_language_code(lang, path=path)
    if not path.exists():
        raise InputError(f"file not found; expected {lang}{suffix} for language '{lang}'", path=path)
    return path


def available_languages(folder: str | Path, suffix: str) -> list[str]:
    """Language codes with a ``{lang}{suffix}`` file in ``folder``; unknown codes raise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("folder not found", path=folder)
    langs = sorted(p.name[: -len(suffix)] for p in folder.iterdir() if p.name.endswith(suffix))
    for lang in langs:
        check_language_code(lang, path=folder / f"{lang}{suffix}")
    return langs


# -- X-AlpacaEval instructions ----------------------------------------------------------------

def load_instruction_file(path: str | Path, lang: str) -> list[Instruction]:
    """Load and validate one ``{lang}.json`` instruction file."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, list):
        raise InputError(f"expected a JSON list of instruction records, found {type(data).__name__}", path=path)
    seen: dict[int, int] = {}
    out = []
    for index, obj in enumerate(data):
        if not isinstance(obj, dict):
            raise InputError(f"expected an object, found {type(obj).__name__}", path=path, record=index)
        raw_id = _require_field(obj, "id", path=path, record=index)
        if isinstance(raw_id, bool) or not isinstance(raw_id, int) or raw_id < 1:
            raise InputError(f"expected a positive integer id, found {raw_id!r}", path=path, record=index,
                             field="id")
        if raw_id in seen:
            raise InputError(f"duplicate id {raw_id} (first at record {seen[raw_id]}); expected unique ids",
                             path=path, record=index, field="id")
        seen[raw_id] = index
        text = _require_text(_require_field(obj, "instruction", path=path, record=index), path=path,
                             record=index, field="instruction")
        out.append(Instruction(id=raw_id, lang=lang, instruction=text, dataset=str(obj.get("dataset", ""))))
    if not out:
        raise InputError("no instructions; expected at least one record", path=path)
    return out


def load_instructions(folder: str | Path, langs: Iterable[str] | None = None) -> dict[str, list[Instruction]]:
    """Load instructions per language from ``folder/{lang}.json``; all languages must share one id set."""
    folder = Path(folder)
    langs = list(langs) if langs is not None else available_languages(folder, ".json")
    if not langs:
        raise InputError("no {lang}.json instruction files found", path=folder)
    by_lang = {lang: load_instruction_file(_lang_file(folder, lang, ".json"), lang) for lang in langs}
    _check_same_ids(by_lang, folder, key=lambda r: r.id, suffix=".json")
    return by_lang


def _check_same_ids(by_lang: dict[str, list], folder: Path, key, suffix: str) -> None:
    first_lang = next(iter(by_lang))
    first = {key(r) for r in by_lang[first_lang]}
    for lang, records in by_lang.items():
        ids = {key(r) for r in records}
        if ids != first:
            only_here = sorted(ids - first, key=str)[:3]
            missing = sorted(first - ids, key=str)[:3]
            raise InputError(
                f"id set differs from {first_lang}{suffix}: {len(ids - first)} extra (e.g. {only_here}), "
                f"{len(first - ids)} missing (e.g. {missing}); expected the same ids in every language",
                path=folder / f"{lang}{suffix}")


# -- reference outputs ---------------------------------------------------------------------------

def load_reference_outputs(path: str | Path, instructions: list[Instruction]) -> list[dict]:
    """Load AlpacaEval-format outputs aligned to ``instructions`` (same order, ``id`` set).

    Alignment: by ``id`` when every record has one; otherwise by instruction text when the texts
    match; otherwise by position (the counts must match).
    """
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, list):
        raise InputError(f"expected a JSON list of AlpacaEval outputs, found {type(data).__name__}", path=path)
    for index, obj in enumerate(data):
        if not isinstance(obj, dict):
            raise InputError(f"expected an object, found {type(obj).__name__}", path=path, record=index)
        if not isinstance(_require_field(obj, "output", path=path, record=index), str):
            raise InputError("expected a string", path=path, record=index, field="output")
        if not isinstance(_require_field(obj, "instruction", path=path, record=index), str):
            raise InputError("expected a string", path=path, record=index, field="instruction")
        if "id" in obj and (isinstance(obj["id"], bool) or not isinstance(obj["id"], int)):
            raise InputError(f"expected an integer id, found {obj['id']!r}", path=path, record=index, field="id")
    wanted = [ins.id for ins in instructions]
    if data and all("id" in obj for obj in data):
        by_id: dict[int, dict] = {}
        for index, obj in enumerate(data):
            if obj["id"] in by_id:
                raise InputError(f"duplicate id {obj['id']}; expected unique ids", path=path, record=index,
                                 field="id")
            by_id[obj["id"]] = obj
        missing = [i for i in wanted if i not in by_id]
        if missing:
            raise InputError(f"{len(missing)} instruction ids have no output (e.g. {missing[:3]}); "
                             "expected one output per instruction", path=path)
        return [{**by_id[i], "id": i} for i in wanted]
    by_text = {obj["instruction"]: obj for obj in data}
    if len(by_text) == len(data) and all(ins.instruction in by_text for ins in instructions):
        return [{**by_text[ins.instruction], "id": ins.id} for ins in instructions]
    if len(data) != len(instructions):
        raise InputError(f"{len(data)} outputs without ids for {len(instructions)} instructions; expected "
                         "ids, matching instruction texts, or the same count to align by position", path=path)
    return [{**obj, "id": ins.id} for obj, ins in zip(data, instructions)]


def reference_generators(data_dir: str | Path) -> dict[str, list[str]]:
    """``{generator: [langs]}`` under ``data_dir/x_alpacaeval/reference_outputs``."""
    root = Path(data_dir) / "x_alpacaeval" / "reference_outputs"
    if not root.is_dir():
        return {}
    return {gen.name: available_languages(gen, ".json") for gen in sorted(root.iterdir()) if gen.is_dir()}


# -- training prompts ----------------------------------------------------------------------------

def load_train_prompt_file(path: str | Path, lang: str) -> list[TrainPrompt]:
    path = Path(path)
    seen: dict[str, int] = {}
    out = []
    for line, obj in iter_jsonl(path):
        iid = _require_field(obj, "instruction_id", path=path, line=line)
        if not isinstance(iid, (str, int)) or isinstance(iid, bool) or str(iid) == "":
            raise InputError(f"expected a non-empty string id, found {iid!r}", path=path, line=line,
                             field="instruction_id")
        iid = str(iid)
        if iid in seen:
            raise InputError(f"duplicate instruction_id {iid!r} (first on line {seen[iid]}); expected unique ids",
                             path=path, line=line, field="instruction_id")
        seen[iid] = line
        text = _require_text(_require_field(obj, "instruction", path=path, line=line), path=path, line=line,
                             field="instruction")
        out.append(TrainPrompt(instruction_id=iid, lang=lang, instruction=text,
                               is_translation_task=bool(obj.get("is_translation_task", False))))
    if not out:
        raise InputError("no prompts; expected at least one JSON line", path=path)
    return out


def load_train_prompts(folder: str | Path, langs: Iterable[str] | None = None,
                       *, limit: int | None = None) -> dict[str, list[TrainPrompt]]:
    """Training prompts per language from ``folder/{lang}.jsonl``, aligned by ``instruction_id``.

    Every language must hold the same id set; the order is the first language's (English when
    present). ``limit`` keeps the first ``limit`` ids.
    """
    folder = Path(folder)
    langs = list(langs) if langs is not None else available_languages(folder, ".jsonl")
    if not langs:
        raise InputError("no {lang}.jsonl prompt files found", path=folder)
    by_lang = {lang: load_train_prompt_file(_lang_file(folder, lang, ".jsonl"), lang) for lang in langs}
    _check_same_ids(by_lang, folder, key=lambda r: r.instruction_id, suffix=".jsonl")
    anchor = "en" if "en" in by_lang else langs[0]
    order = [p.instruction_id for p in by_lang[anchor]][:limit]
    aligned = {}
    for lang, prompts in by_lang.items():
        index = {p.instruction_id: p for p in prompts}
        aligned[lang] = [index[i] for i in order]
    # Translation-task marks live on the English file; carry them to every language.
    if "en" in aligned:
        marks = {p.instruction_id for p in aligned["en"] if p.is_translation_task}
        aligned = {lang: [TrainPrompt(p.instruction_id, p.lang, p.instruction, p.instruction_id in marks)
                          for p in ps] for lang, ps in aligned.items()}
    return aligned


# -- preference pairs (the demo's English DPO data) ------------------------------------------------

def load_preference_pairs(path: str | Path) -> list[PreferencePair]:
    path = Path(path)
    out = []
    for line, obj in iter_jsonl(path):
        fields = {name: _require_text(_require_field(obj, name, path=path, line=line), path=path, line=line,
                                      field=name) for name in ("prompt", "chosen", "rejected")}
        if fields["chosen"] == fields["rejected"]:
            raise InputError("chosen equals rejected; expected two different answers", path=path, line=line)
        out.append(PreferencePair(**fields))
    if not out:
        raise InputError("no pairs; expected at least one JSON line", path=path)
    return out


# -- the hub path (real users) ---------------------------------------------------------------------

def download_x_alpacaeval(target: str | Path, langs: Iterable[str] = tuple(HUB_FILES),
                          *, revision: str = HUB_REVISION) -> Path:
    """Fetch the original X-AlpacaEval release from the hub into ``target/{lang}.json``.

    All files are downloaded and validated (fields, unique ids, one id set) before any is written,
    and each is copied byte for byte (so its sha256 can be checked against benchmark.yaml).
    Needs network access; offline (``HF_HUB_OFFLINE=1``) it raises a clear error and writes nothing.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    from xlpref.jsonio import atomic_open

    target = Path(target)
    langs = list(langs)
    for lang in langs:
        if lang not in HUB_FILES:
            raise InputError(f"language '{lang}' is not in the hub release; expected one of {sorted(HUB_FILES)}")
    fetched: dict[str, Path] = {}
    for lang in langs:
        try:
            fetched[lang] = Path(hf_hub_download(HUB_DATASET, HUB_FILES[lang], repo_type="dataset",
                                                 revision=revision))
        except (OfflineModeIsEnabled, LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
            raise InputError(f"cannot download {HUB_DATASET}/{HUB_FILES[lang]} at revision {revision} "
                             f"({type(exc).__name__}); expected network access to the hub, or use a local "
                             "copy with --data-dir") from exc
    by_lang = {lang: load_instruction_file(path, lang) for lang, path in fetched.items()}
    _check_same_ids(by_lang, target, key=lambda r: r.id, suffix=".json")
    for lang, path in fetched.items():
        with atomic_open(target / f"{lang}.json", "wb") as handle:
            handle.write(path.read_bytes())
    return target
