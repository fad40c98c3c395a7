"""``xlpref metrics`` and ``xlpref difficulty``: AlpacaEval metrics from annotation files.

``metrics`` prints AlpacaEval's columns (``win_rate``, ``standard_error``, ``n_wins``, ``n_wins_base``,
``n_draws``, ``n_total``, ``discrete_win_rate``, ``avg_length``, ``length_controlled_winrate``,
``lc_standard_error``) plus ``lc_difficulty`` (official-csv / fitted / none) and
``lc_gamed_regularisation``; with ``--json`` exactly one JSON object on stdout. ``difficulty`` fits a
per-instruction difficulty jointly over a folder of models' annotations (see
:func:`harness.metrics.length_controlled.fit_instruction_difficulty`) and writes ``index,instruction_difficulty``.

Example::

    xlpref metrics ../shared/data/alpaca_eval_annotations/vicuna-7b.json \\
        --instruction-difficulty ../shared/data/alpaca_eval_lc/instruction_difficulty.csv --json
    xlpref difficulty ../shared/data/alpaca_eval_annotations -o /tmp/difficulty.csv \\
        --instructions ../shared/data/x_alpacaeval/instructions/en.json
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from xlpref.errors import InputError
from xlpref.jsonio import dumps, read_json


def _instruction_list(path: Path | None) -> list[dict] | None:
    if path is None:
        return None
    items = read_json(path)
    if not isinstance(items, list) or not all(isinstance(i, dict) and "id" in i and "instruction" in i
                                              for i in items):
        raise InputError("expected a JSON list of {id, instruction} records", path=path)
    return items


def _load(path: Path, instructions: list[dict] | None):
    from harness.metrics.annotations import assign_ids_by_instruction, load_annotations

    frame = load_annotations(path)
    return assign_ids_by_instruction(frame, instructions, path=path) if instructions is not None else frame


def _number(value: Any, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def render_metrics(metrics: dict[str, Any], *, title: str = "") -> Table:
    """One model's metrics as a two-column rich table."""
    table = Table(title=title or f"{metrics.get('generator') or 'model'} vs {metrics.get('reference') or 'reference'}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    lc_note = {"official-csv": "difficulty from CSV", "fitted": "fitted difficulty",
               "none": "no difficulty term"}[metrics["lc_difficulty"]]
    lc_note += ", gamed-baseline regularisation" if metrics["lc_gamed_regularisation"] else ", no gamed regularisation"
    rows = [
        ("win rate", f"{_number(metrics['win_rate'])} ± {_number(metrics['standard_error'])}"),
        ("LC win rate", "— (not estimable†)" if metrics.get("lc_not_estimable") else
         f"{_number(metrics['length_controlled_winrate'])} ± {_number(metrics['lc_standard_error'])}"),
        ("LC features", lc_note),
        ("discrete win rate", _number(metrics["discrete_win_rate"])),
        ("wins / losses / draws", f"{metrics['n_wins']} / {metrics['n_wins_base']} / {metrics['n_draws']}"),
        ("n_total", str(metrics["n_total"])),
        ("avg_length (chars)", str(metrics.get("avg_length", "—"))),
        ("annotator", str(metrics.get("annotator") or "—")),
    ]
    for name, value in rows:
        table.add_row(name, value)
    if metrics.get("lc_not_estimable"):
        table.caption = f"† LC not estimable: {metrics['lc_not_estimable']}"
    return table


@click.command("metrics")
@click.argument("annotations", type=click.Path(path_type=Path))
@click.option("--instruction-difficulty", "difficulty_csv", type=click.Path(path_type=Path), default=None,
              help="CSV index,instruction_difficulty (AlpacaEval's table, or `xlpref difficulty` output); default, "
                   "as `xlpref evaluate`: DATA/alpaca_eval_lc/instruction_difficulty.csv when present.")
@click.option("--no-instruction-difficulty", "no_difficulty", is_flag=True,
              help="LC without the difficulty term (lc_difficulty: none; its standard error is 0, so LC is "
                   "reported as not estimable).")
@click.option("--gamed-annotations", "gamed_paths", type=click.Path(path_type=Path), multiple=True,
              help="Annotations of gamed baselines (the reference made verbose / concise) against the same "
                   "reference; repeatable. Without them LC is not regularised (lc_gamed_regularisation: false).")
@click.option("--instructions", "instructions_path", type=click.Path(path_type=Path), default=None,
              help="Instruction list (JSON of {id, instruction}) giving records without an id the id of "
                   "their instruction text; default: a record's position is its index.")
@click.option("--annotator", default=None, help="Annotator name (default: the records' 'annotator').")
@click.option("--reference", default=None, help="Reference generator (default: the records' 'generator_1').")
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object on stdout.")
def metrics(annotations: Path, difficulty_csv: Path | None, no_difficulty: bool, gamed_paths: tuple[Path, ...],
            instructions_path: Path | None, annotator: str | None, reference: str | None, as_json: bool) -> None:
    """Win rate and length-controlled win rate of one annotations file (AlpacaEval format)."""
    import pandas as pd

    from harness.metrics.difficulty import load_instruction_difficulty
    from harness.metrics.winrate import compute_metrics
    from xlpref.data import default_data_dir

    if no_difficulty and difficulty_csv is not None:
        raise click.UsageError("pass either --instruction-difficulty or --no-instruction-difficulty, not both")
    default_difficulty = default_data_dir() / "alpaca_eval_lc" / "instruction_difficulty.csv"
    if difficulty_csv is None and not no_difficulty and default_difficulty.is_file():
        difficulty_csv = default_difficulty  # the default of `xlpref evaluate`, so both print the same LC
    instructions = _instruction_list(instructions_path)
    frame = _load(annotations, instructions)
    difficulty = load_instruction_difficulty(difficulty_csv) if difficulty_csv is not None else None
    gamed = None
    if gamed_paths:
        parts = []
        for path in gamed_paths:
            part = _load(path, instructions)
            if "generator_2" not in part.columns:
                part = part.assign(generator_2=path.stem)  # one gamed baseline per file
            parts.append(part)
        gamed = pd.concat(parts, ignore_index=True)
    result = compute_metrics(frame, instruction_difficulty=difficulty, gamed_annotations=gamed,
                             annotator=annotator, reference=reference)
    if as_json:
        sys.stdout.write(dumps(result) + "\n")
    else:
        Console().print(render_metrics(result, title=str(annotations)))


@click.command("difficulty")
@click.argument("annotations_dir", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="CSV to write (index,instruction_difficulty); a .provenance.json is written beside it.")
@click.option("--instructions", "instructions_path", type=click.Path(path_type=Path), default=None,
              help="Instruction list (JSON of {id, instruction}) giving records without an id the id of "
                   "their instruction text; default: a record's position is its index.")
def difficulty(annotations_dir: Path, output: Path, instructions_path: Path | None) -> None:
    """Fit instruction difficulty jointly over a folder of models' annotation files (*.json, *.jsonl)."""
    import alpaca_eval

    from harness.metrics.difficulty import fit_instruction_difficulty, write_instruction_difficulty

    if not annotations_dir.is_dir():
        raise InputError("not a folder; expected a folder of annotation files", path=annotations_dir)
    paths = sorted(p for p in annotations_dir.iterdir() if p.suffix in (".json", ".jsonl") and p.is_file())
    instructions = _instruction_list(instructions_path)
    by_model: dict[str, Any] = {}
    for path in paths:
        frame = _load(path, instructions)
        names = set(frame["generator_2"].dropna().astype(str)) if "generator_2" in frame.columns else set()
        model = names.pop() if len(names) == 1 else path.stem
        if model in by_model:
            model = path.stem  # two files of one generator (e.g. 'example'): keep both, named by file
        by_model[model] = frame
    err = Console(stderr=True)
    with err.status(f"fitting the joint GLM on {len(by_model)} models' annotations"):
        fitted = fit_instruction_difficulty(by_model)
    write_instruction_difficulty(fitted, output, {
        "models": sorted(by_model), "n_instructions": len(fitted), "formula": fitted.attrs.get("formula"),
        "glm_C": fitted.attrs.get("glm_C"), "alpaca_eval": alpaca_eval.__version__,
        "source": str(annotations_dir)})
    err.print(f"wrote {output} ({len(fitted)} instructions, {len(by_model)} models)")
