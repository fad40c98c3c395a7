"""``xlpref pairs``: one (chosen, rejected) pair per prompt and language from scored responses.

Writes ``PAIRS.jsonl`` and ``PAIRS.summary.json`` atomically and prints the summary per language.

Example::

    xlpref pairs scored.jsonl -o pairs.jsonl --alpha-step 0.001
"""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console


def summary_path(pairs_path: Path) -> Path:
    """``PAIRS.jsonl`` -> ``PAIRS.summary.json`` beside it."""
    return pairs_path.with_name(pairs_path.stem + ".summary.json")


@click.command()
@click.argument("scored_path", metavar="SCORED.jsonl", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="PAIRS.jsonl to write.")
@click.option("--no-length-control", is_flag=True, help="alpha = 0: chosen/rejected by raw reward.")
@click.option("--alpha-step", type=float, default=0.001, show_default=True, help="Step of the alpha grid on [0, 1).")
@click.option("--upper-bound", type=float, default=None,
              help="Candidates scoring at or above it cannot be chosen.")
@click.pass_obj
def pairs(obj, scored_path: Path, output: Path, no_length_control: bool, alpha_step: float,
          upper_bound: float | None) -> None:
    """One (chosen, rejected) pair per prompt and language from SCORED.jsonl, length-controlled per language."""
    from xlpref.errors import InputError
    from xlpref.jsonio import iter_jsonl, write_json_atomic, write_jsonl_atomic
    from xlpref.pairs import build_pairs, check_scored_record, render_pairs_summary

    if output.resolve() == scored_path.resolve():
        raise InputError("output is the input file; expected another path", path=output)
    records = []
    # NaN / Infinity are read so that the error can name the field ('reward') and its line.
    for line, record in iter_jsonl(scored_path, allow_non_finite=True):
        check_scored_record(record, path=scored_path, line=line)
        records.append(record)
    if not records:
        raise InputError("no records; expected one scored record per line", path=scored_path)
    result = build_pairs(records, length_control=not no_length_control, alpha_step=alpha_step,
                         upper_bound=upper_bound, source=str(scored_path))
    write_jsonl_atomic(output, result.pairs)
    write_json_atomic(summary_path(output), result.summary)
    console = Console()
    console.print(render_pairs_summary(result.summary))
    console.print(f"wrote {len(result.pairs)} pairs to {output} and the summary to {summary_path(output)}")
