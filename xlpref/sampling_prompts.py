"""Sampling requests from prompt files: training prompts, X-AlpacaEval instructions, or one JSONL file.

Every request pairs the target-language instruction (what the model sees) with the English instruction
of the same id (``prompt_en``, what the cross-lingual reward conditions on).

Example::

    from xlpref.sampling_prompts import requests_from_prompts
    requests = requests_from_prompts("../shared/data/train_prompts/random_100", ["es", "de"], limit=5)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from xlpref.errors import InputError
from xlpref.sampling import RECORD_FIELDS, SampleRequest, check_unique


def requests_from_prompts(path: str | Path, langs: Sequence[str], *, limit: int | None = None) -> list[SampleRequest]:
    """Requests for ``langs`` (in that order, then prompt order) from a prompts folder or a JSONL file.

    ``path`` is a folder of training prompts ``{lang}.jsonl`` (``instruction_id`` ids), an X-AlpacaEval
    instructions folder ``{lang}.json`` (integer ids), or one JSONL file of ``lang``, ``id``,
    ``instruction`` (and optionally ``instruction_en``; other fields go to ``meta``). ``prompt_en`` is the
    English instruction with the same id, so English must be present even when ``en`` is not in ``langs``.
    ``limit`` keeps the first ``limit`` prompts of each language.
    """
    from xlpref.languages import check_languages

    path = Path(path)
    langs = check_languages(list(langs))
    if not langs:
        raise InputError("no languages given; expected e.g. en,es", field="langs")
    if limit is not None and limit < 1:
        raise InputError(f"got {limit}; expected an integer >= 1", field="limit")
    if path.is_file():
        return _requests_from_jsonl(path, langs, limit)
    if not path.is_dir():
        raise InputError("prompts not found; expected a folder of {lang}.jsonl / {lang}.json files or a JSONL file",
                         path=path)
    for suffix in (".jsonl", ".json"):
        if any(path.glob(f"*{suffix}")):
            if not (path / f"en{suffix}").exists():
                raise InputError(f"no en{suffix}; expected the English prompts, which give every record its "
                                 "prompt_en", path=path)
            return _requests_from_folder(path, suffix, langs, limit)
    raise InputError("no {lang}.jsonl training prompts or {lang}.json X-AlpacaEval instructions", path=path)


def _requests_from_folder(folder: Path, suffix: str, langs: list[str], limit: int | None) -> list[SampleRequest]:
    from xlpref.data import load_instructions, load_train_prompts

    wanted = ["en", *[lang for lang in langs if lang != "en"]]
    if suffix == ".jsonl":
        by_lang = load_train_prompts(folder, wanted, limit=limit)
        english = {p.instruction_id: p.instruction for p in by_lang["en"]}
        return [SampleRequest(p.instruction_id, lang, p.instruction, english[p.instruction_id],
                              {"is_translation_task": p.is_translation_task})
                for lang in langs for p in by_lang[lang]]
    by_lang = load_instructions(folder, wanted)
    ids = sorted(ins.id for ins in by_lang["en"])[:limit]
    english = {ins.id: ins.instruction for ins in by_lang["en"]}
    requests = []
    for lang in langs:
        index = {ins.id: ins for ins in by_lang[lang]}
        requests += [SampleRequest(i, lang, index[i].instruction, english[i], {"dataset": index[i].dataset})
                     for i in ids]
    return requests


def _requests_from_jsonl(path: Path, langs: list[str], limit: int | None) -> list[SampleRequest]:
    from xlpref.jsonio import iter_jsonl
    from xlpref.languages import check_language_code

    rows = []
    for line, obj in iter_jsonl(path):
        for name in ("lang", "id", "instruction"):
            if name not in obj:
                raise InputError("missing field; expected lang, id and instruction in every record", path=path,
                                 line=line, field=name)
        check_language_code(obj["lang"], path=path, line=line, field="lang")
        if isinstance(obj["id"], bool) or not isinstance(obj["id"], (int, str)) or obj["id"] == "":
            raise InputError(f"got {obj['id']!r}; expected an integer or a non-empty string", path=path, line=line,
                             field="id")
        for name in ("instruction", "instruction_en"):
            if name in obj and (not isinstance(obj[name], str) or not obj[name].strip()):
                raise InputError("expected a non-empty string", path=path, line=line, field=name)
        rows.append((line, obj))
    english = {obj["id"]: obj["instruction"] for _, obj in rows if obj["lang"] == "en"}
    requests = []
    for lang in langs:
        chosen = [(line, obj) for line, obj in rows if obj["lang"] == lang][:limit]
        if not chosen:
            raise InputError(f"no records for language {lang!r}; expected some", path=path, field="lang")
        for line, obj in chosen:
            prompt_en = obj.get("instruction_en", english.get(obj["id"]))
            if prompt_en is None:
                raise InputError(f"no English instruction for id {obj['id']!r}; expected an 'instruction_en' field "
                                 "or an 'en' record with the same id", path=path, line=line, field="instruction_en")
            meta = {k: v for k, v in obj.items() if k not in ("lang", "id", "instruction", "instruction_en")}
            clash = sorted(set(meta) & set(RECORD_FIELDS))
            if clash:
                raise InputError(f"fields {clash} are written by the sampler; expected other names", path=path,
                                 line=line)
            requests.append(SampleRequest(obj["id"], lang, obj["instruction"], prompt_en, meta))
    check_unique(requests)
    return requests
