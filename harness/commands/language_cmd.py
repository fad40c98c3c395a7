"""``xlpref language-check``: which languages a file's texts are in, against the language they should be in.

Inputs:

- an AlpacaEval ``model_outputs.json`` (a JSON list; texts: ``output``). The target language is
  ``--lang``, else the name of the file's folder when it is a language code
  (``eval/iter_0/es/model_outputs.json``).
- a SAMPLES or PAIRS JSONL file (texts: ``response``, or both ``chosen`` and ``rejected``). The
  target language is each record's ``lang``, or ``--lang`` for every record.

Prints one line per target language and one for all texts; ``--json`` prints exactly the keys
``n``, ``languages``, ``target_rate``, ``mixed_rate``, ``empty`` for all texts (the rules are in
:mod:`harness.metrics.language` and :mod:`xlpref.language_id`).

Example::

    xlpref language-check runs/demo/eval/iter_1/es/model_outputs.json
    xlpref language-check runs/demo/iter_0/samples.jsonl --json
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from xlpref.errors import InputError


def read_texts(path: Path, lang: str | None) -> tuple[list[str], list[str]]:
    """(texts, target language of each) from a model_outputs.json or a SAMPLES / PAIRS JSONL file."""
    from xlpref.jsonio import iter_jsonl, read_json
    from xlpref.languages import is_language_code

    if path.suffix == ".json":
        from harness.evaluation.model_outputs import load_model_outputs

        records = load_model_outputs(read_json(path), where=str(path))
        target = lang or (path.parent.name if is_language_code(path.parent.name) else None)
        if target is None:
            raise InputError("no target language; expected --lang, or the file in a folder named by a language "
                             "code (e.g. es/model_outputs.json)", path=path)
        return [r["output"] for r in records], [target] * len(records)
    texts, targets = [], []
    for line, record in iter_jsonl(path):
        fields = ["response"] if "response" in record else ["chosen", "rejected"]
        for name in fields + ([] if lang else ["lang"]):
            if not isinstance(record.get(name), str):
                raise InputError("missing or not a string; expected SAMPLES (lang, response) or PAIRS (lang, "
                                 "chosen, rejected) records" + ("" if name != "lang" else ", or --lang"),
                                 path=path, line=line, field=name)
        for name in fields:
            texts.append(record[name])
            targets.append(lang or record["lang"])
    if not texts:
        raise InputError("no records; expected at least one JSON line", path=path)
    return texts, targets


def render_reports(reports: dict[str, dict], title: str) -> Table:
    """One line per target language (and "all"): n, rates, empty, detected languages with counts."""
    table = Table(title=title, caption="in lang %: of the non-empty texts, identified in the target language; mixed "
                                       "%: with confidently identified sentences in two or more languages",
                  caption_justify="left")
    for name in ("target", "n", "in lang %", "mixed %", "empty", "detected languages"):
        table.add_column(name, justify="left" if name in ("target", "detected languages") else "right")

    def rate(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    for lang, report in reports.items():
        detected = ", ".join(f"{code} {count}" for code, count in list(report["languages"].items())[:8])
        table.add_row(lang, str(report["n"]), rate(report["target_rate"]), rate(report["mixed_rate"]),
                      str(report["empty"]), detected, end_section=lang == list(reports)[-2] if len(reports) > 1
                      else False)
    return table


@click.command("language-check")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--lang", default=None, help="Target language for every text (default: per record, or the folder).")
@click.option("--identifier", default=None, help="Language identification backend (default: the project's).")
@click.option("--json", "as_json", is_flag=True, help="Print n, languages, target_rate, mixed_rate, empty as JSON.")
def language_check(path: Path, lang: str | None, identifier: str | None, as_json: bool) -> None:
    """Languages of the texts in PATH (model_outputs.json, SAMPLES or PAIRS JSONL) against their target."""
    from harness.metrics.language import (
        REPORT_KEYS,
        language_report,
        reports_by_language,
    )
    from xlpref.language_id import DEFAULT_IDENTIFIER, load_identifier
    from xlpref.languages import language_name

    if lang is not None:
        language_name(lang)
    backend = load_identifier(identifier or DEFAULT_IDENTIFIER)
    texts, targets = read_texts(path, lang)
    overall = language_report(texts, targets, identifier=backend)
    if as_json:
        click.echo(json.dumps({key: overall[key] for key in REPORT_KEYS}, ensure_ascii=False))
        return
    reports = reports_by_language(texts, targets, identifier=backend)
    if len(reports) > 1:
        reports["all"] = overall
    Console().print(render_reports(reports, f"{path} ({backend.name})"))
