"""Measure the language identification backends on X-AlpacaEval: accuracy per language, mixed rate, speed.

Texts whose language is known from their file: the instructions ``x_alpacaeval/instructions/{lang}.json``
(13 languages) and GPT-4 Turbo's reference outputs ``x_alpacaeval/reference_outputs/
gpt-4-turbo-2024-04-09/{lang}.json`` (9 languages). Per backend and language: accuracy (percent of
the non-empty texts identified as the file's language, :func:`xlpref.language_id.identify`), the
mixed rate of the reference outputs (:func:`xlpref.language_id.is_mixed`; the references are written
in one language, so this approximates the rule's false-alarm rate, apart from answers that quote or
translate other languages) and texts per second. A few instructions ask for another language or
are code, so 100% is not the ceiling for every language.

Without the shared data (``--data-dir``, default ``xlpref.data.default_data_dir()``) it says so and
exits 0.

Example::

    python -m benchmarks.x_alpacaeval.language_id_accuracy --out /tmp/language_id.json
    python -m benchmarks.x_alpacaeval.language_id_accuracy --limit 100 --identifiers lingua
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from xlpref.data import default_data_dir
from xlpref.jsonio import read_json, write_json_atomic
from xlpref.language_id import IDENTIFIERS, identify, is_mixed, load_identifier
from xlpref.languages import LANGUAGE_NAMES

REFERENCE_GENERATOR = "gpt-4-turbo-2024-04-09"


def load_texts(data_dir: Path, limit: int | None) -> dict[str, dict[str, list[str]]]:
    """{"instructions" | "references": {lang: texts}} for the languages with a file."""
    root = data_dir / "x_alpacaeval"
    sets: dict[str, dict[str, list[str]]] = {"instructions": {}, "references": {}}
    for lang in LANGUAGE_NAMES:
        for kind, path, key in (("instructions", root / "instructions" / f"{lang}.json", "instruction"),
                                ("references", root / "reference_outputs" / REFERENCE_GENERATOR / f"{lang}.json",
                                 "output")):
            if path.is_file():
                sets[kind][lang] = [record[key] for record in read_json(path)][:limit]
    return sets


def measure(name: str, sets: dict[str, dict[str, list[str]]], *, with_mixed: bool) -> dict:
    """Accuracy per set and language, the references' mixed rate, and speed, for one backend."""
    identifier = load_identifier(name)
    out: dict = {"identifier": name, "accuracy": {}, "mixed_rate": {}}
    n_texts, seconds, characters = 0, 0.0, 0
    for kind, by_lang in sets.items():
        out["accuracy"][kind] = {}
        for lang, texts in by_lang.items():
            start = time.perf_counter()
            found = [identify(text, identifier) for text in texts]
            seconds += time.perf_counter() - start
            n_texts += len(texts)
            characters += sum(len(t) for t in texts)
            counted = [code for code in found if code is not None]
            out["accuracy"][kind][lang] = (100.0 * sum(c == lang for c in counted) / len(counted)
                                           if counted else None)
            if kind == "references" and with_mixed:
                out["mixed_rate"][lang] = 100.0 * sum(is_mixed(t, identifier) for t in texts) / len(texts)
    out.update(texts=n_texts, seconds=round(seconds, 3), texts_per_second=round(n_texts / seconds, 1),
               characters_per_second=round(characters / seconds))
    return out


def render(results: list[dict], sets: dict[str, dict[str, list[str]]]) -> Table:
    table = Table(title="language identification on X-AlpacaEval (accuracy in %, of non-empty texts)")
    table.add_column("set")
    table.add_column("lang")
    table.add_column("n", justify="right")
    for result in results:
        table.add_column(result["identifier"], justify="right")
    for kind, by_lang in sets.items():
        for lang in by_lang:
            cells = [f"{r['accuracy'][kind][lang]:.1f}" for r in results]
            table.add_row(kind, lang, str(len(by_lang[lang])), *cells)
    for kind, by_lang in sets.items():
        cells = [f"{sum(r['accuracy'][kind].values()) / len(by_lang):.2f}" for r in results]
        table.add_row(kind, "mean", "", *cells, end_section=kind == "instructions")
    table.add_row("speed", "texts/s", "", *[f"{r['texts_per_second']:.0f}" for r in results], end_section=True)
    for lang in sets["references"]:
        table.add_row("references", f"{lang} mixed", str(len(sets["references"][lang])),
                      *[f"{r['mixed_rate'][lang]:.1f}" if lang in r["mixed_rate"] else "—" for r in results])
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=None, help="The shared data (default: default_data_dir()).")
    parser.add_argument("--identifiers", default=",".join(IDENTIFIERS), help="Comma-separated backends.")
    parser.add_argument("--limit", type=int, default=None, help="First N texts of each file (default: all).")
    parser.add_argument("--out", type=Path, default=None, help="Write the results as JSON here.")
    args = parser.parse_args(argv)
    data_dir = args.data_dir or default_data_dir()
    if data_dir is None or not (Path(data_dir) / "x_alpacaeval" / "instructions").is_dir():
        print(f"no X-AlpacaEval data under {data_dir}; nothing measured", file=sys.stderr)
        return 0
    sets = load_texts(Path(data_dir), args.limit)
    names = [n.strip() for n in args.identifiers.split(",") if n.strip()]
    results = [measure(name, sets, with_mixed=True) for name in names]
    Console(width=140).print(render(results, sets))
    if args.out:
        write_json_atomic(args.out, {"command": "python -m benchmarks.x_alpacaeval.language_id_accuracy "
                                                + " ".join(argv if argv is not None else sys.argv[1:]),
                                     "limit": args.limit, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
