"""``xlpref data``: validate a data folder and summarise it; fetch X-AlpacaEval from the hub.

``check`` loads everything it finds with the validating loaders of :mod:`xlpref.data` (the first
problem stops it with one message naming file, line or record, field and expectation: exit 2),
then compares file checksums with ``benchmarks/x_alpacaeval/benchmark.yaml``. The summary is plain
data (:class:`DataReport`); :func:`render_report` turns it into rich tables.

Example::

    xlpref data check                                  # the shared data (xlpref.data.default_data_dir())
    xlpref data check --mini                           # the bundled demo set
    xlpref data check --data-dir ../shared/data --summary-json /tmp/data.json
    xlpref data fetch --out /tmp/xae --langs en,es     # needs network access to the hub
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
from rich.console import Console, Group
from rich.table import Table

from benchmarks.x_alpacaeval import load_benchmark, verify_checksums
from xlpref import data as xdata
from xlpref.errors import InputError
from xlpref.jsonio import write_json_atomic
from xlpref.languages import LANGUAGE_NAMES, parse_languages


@dataclass
class DataReport:
    """What a data folder holds, after validation (counts only)."""

    data_dir: str
    instructions: dict[str, int]                                      # lang -> instructions
    references: dict[str, dict[str, int]] = field(default_factory=dict)  # generator -> lang -> outputs
    train_prompts: dict[str, dict[str, int]] = field(default_factory=dict)  # subset -> lang -> prompts
    translation_tasks: dict[str, int] = field(default_factory=dict)   # subset -> prompts marked
    preference_pairs: int | None = None
    checksums: dict[str, str] = field(default_factory=dict)          # relative path -> match/differs/absent

    @property
    def checksum_counts(self) -> dict[str, int]:
        counts = {"match": 0, "differs": 0, "absent": 0}
        for status in self.checksums.values():
            counts[status] += 1
        return counts


def check_data(data_dir: str | Path) -> DataReport:
    """Validate every X-AlpacaEval, reference, training-prompt and preference file under ``data_dir``.

    Raises:
        InputError: the first problem found (missing folder, bad JSON, missing field, duplicate id,
            differing id sets, empty instruction, unknown language code, unaligned references).
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise InputError("data folder not found; expected a folder with x_alpacaeval/instructions/{lang}.json "
                         "(pass --data-dir DIR, set XLPREF_DATA_DIR, or use --mini)", path=data_dir)
    instructions_dir = data_dir / "x_alpacaeval" / "instructions"
    if not instructions_dir.is_dir():
        raise InputError("folder not found; expected X-AlpacaEval instructions as {lang}.json files here",
                         path=instructions_dir)
    instructions = xdata.load_instructions(instructions_dir)
    report = DataReport(data_dir=str(data_dir), instructions={lang: len(v) for lang, v in instructions.items()})

    for generator, langs in xdata.reference_generators(data_dir).items():
        folder = data_dir / "x_alpacaeval" / "reference_outputs" / generator
        for lang in langs:
            if lang not in instructions:
                raise InputError(f"no instructions for language '{lang}'; expected "
                                 f"{instructions_dir / (lang + '.json')} to align these outputs with",
                                 path=folder / f"{lang}.json")
            outputs = xdata.load_reference_outputs(folder / f"{lang}.json", instructions[lang])
            report.references.setdefault(generator, {})[lang] = len(outputs)

    prompts_root = data_dir / "train_prompts"
    if prompts_root.is_dir():
        for subset in sorted(p for p in prompts_root.iterdir() if p.is_dir()):
            prompts = xdata.load_train_prompts(subset)
            report.train_prompts[subset.name] = {lang: len(v) for lang, v in prompts.items()}
            anchor = prompts.get("en") or next(iter(prompts.values()))
            report.translation_tasks[subset.name] = sum(p.is_translation_task for p in anchor)

    pairs_path = data_dir / "preference_pairs" / "en.jsonl"
    if pairs_path.exists():
        report.preference_pairs = len(xdata.load_preference_pairs(pairs_path))

    # The mini set reuses X-AlpacaEval's file names for other content: comparing would only say "differs".
    if data_dir.resolve() != xdata.MINI_DIR.resolve():
        report.checksums = verify_checksums(load_benchmark(), data_dir)
    return report


def _lang_order(langs) -> list[str]:
    order = list(LANGUAGE_NAMES)
    return sorted(langs, key=order.index)


def _one_or_all(by_lang: dict[str, int]) -> str:
    sizes = set(by_lang.values())
    return str(sizes.pop()) if len(sizes) == 1 else ", ".join(f"{k}={v}" for k, v in by_lang.items())


def render_report(report: DataReport) -> Group:
    """Rich tables for a :class:`DataReport`: languages x counts, references, training subsets, checksums."""
    langs = _lang_order(report.instructions)
    counts = set(report.instructions.values())
    per_lang = f"{counts.pop()}" if len(counts) == 1 else "varying"
    table = Table(title=f"X-AlpacaEval: {len(langs)} languages x {per_lang} instructions")
    table.add_column("lang")
    table.add_column("language")
    table.add_column("instructions", justify="right")
    table.add_column("reference generators", justify="right")
    table.add_column("sha256")
    for lang in langs:
        n_refs = sum(lang in by_lang for by_lang in report.references.values())
        sha = report.checksums.get(f"x_alpacaeval/instructions/{lang}.json", "-")
        table.add_row(lang, LANGUAGE_NAMES[lang], str(report.instructions[lang]), str(n_refs), sha)
    parts: list = [f"Data folder: {report.data_dir}", table]

    if report.references:
        refs = Table(title="Reference outputs (AlpacaEval format, aligned to the instructions)")
        refs.add_column("generator", overflow="fold")
        refs.add_column("languages", overflow="fold")
        refs.add_column("outputs per language", justify="right")
        for gen, by_lang in report.references.items():
            refs.add_row(gen, ",".join(_lang_order(by_lang)), _one_or_all(by_lang))
        parts.append(refs)

    if report.train_prompts:
        subsets = Table(title="Training prompts (aligned by instruction_id)")
        subsets.add_column("subset", overflow="fold")
        subsets.add_column("languages", overflow="fold")
        subsets.add_column("prompts per language", justify="right")
        subsets.add_column("translation tasks", justify="right")
        for name, by_lang in report.train_prompts.items():
            subsets.add_row(name, ",".join(_lang_order(by_lang)), _one_or_all(by_lang),
                            str(report.translation_tasks.get(name, 0)))
        parts.append(subsets)

    if report.preference_pairs is not None:
        parts.append(f"English preference pairs: {report.preference_pairs}")
    n = report.checksum_counts
    listed = len(report.checksums)
    if not report.checksums:
        parts.append("Checksums: not compared (the bundled mini set is not X-AlpacaEval; git versions it).")
    elif n["absent"] == listed:
        parts.append("Checksums: none of the files listed in benchmark.yaml is here (not the benchmark's data).")
    else:
        line = f"Checksums vs benchmark.yaml: {n['match']}/{listed} match"
        if n["differs"]:
            differing = [p for p, s in report.checksums.items() if s == "differs"]
            more = f" and {len(differing) - 3} more" if len(differing) > 3 else ""
            line += f", [yellow]{n['differs']} differ[/yellow] ({', '.join(differing[:3])}{more})"
        if n["absent"]:
            line += f", {n['absent']} absent"
        parts.append(line)
    return Group(*parts)


@click.group()
def data() -> None:
    """Validate and summarise data."""


@data.command("check")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Data folder (default: $XLPREF_DATA_DIR or ../shared/data beside the repository).")
@click.option("--mini", is_flag=True, help="Check the bundled demo set (benchmarks/x_alpacaeval/mini).")
@click.option("--summary-json", type=click.Path(path_type=Path), default=None,
              help="Also write the summary as JSON here (only when the data is valid).")
@click.option("--strict", is_flag=True, help="Exit 1 when a file differs from benchmark.yaml's checksum.")
def check(data_dir: Path | None, mini: bool, summary_json: Path | None, strict: bool) -> None:
    """Validate all data found in a folder and print a summary."""
    if mini and data_dir is not None:
        raise click.UsageError("pass either --data-dir or --mini, not both")
    folder = xdata.MINI_DIR if mini else (data_dir or xdata.default_data_dir())
    report = check_data(folder)
    Console().print(render_report(report))
    if summary_json is not None:
        write_json_atomic(summary_json, {**asdict(report), "checksum_counts": report.checksum_counts})
    if strict and report.checksum_counts["differs"]:
        raise click.exceptions.Exit(1)


@data.command("fetch")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Data folder to create; files go to OUT/x_alpacaeval/instructions/{lang}.json.")
@click.option("--langs", default=",".join(xdata.HUB_FILES), show_default=True,
              help="Languages of the original release to fetch.")
@click.option("--revision", default=xdata.HUB_REVISION, show_default=True, help="Pinned hub revision.")
def fetch(out_dir: Path, langs: str, revision: str) -> None:
    """Download X-AlpacaEval (en, zh, ko, it, es) from the hub at a pinned revision."""
    target = xdata.download_x_alpacaeval(out_dir / "x_alpacaeval" / "instructions", parse_languages(langs),
                                         revision=revision)
    click.echo(f"wrote {target}; check it with: xlpref data check --data-dir {out_dir}")
