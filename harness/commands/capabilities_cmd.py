"""``xlpref capabilities --suite lm-eval``: capability tasks (lm-eval) on a model, scores onto a results row.

Example::

    # offline, a local task folder (YAML + JSONL)
    xlpref capabilities --suite lm-eval --model tiny-random-llama --tasks xlpref_toy_mc \\
        --include-path tests/fixtures/lm_eval_tasks --limit 8 --row demo-iter1 --results-dir results -o caps.json
    xlpref leaderboard --results-dir results          # one column per task beside X-AlpacaEval
    # with network access: the multilingual ARC / HellaSwag / MMLU / TruthfulQA set of the paper
    xlpref capabilities --model runs/demo/iter1/policy --tasks recommended --langs en,es,de,fr,ru --batch-size 8
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from harness.commands import global_seed
from harness.evaluation.capabilities import FRACTION_METRICS, RECOMMENDED_LANGUAGES, SUITES


def render_scores(scores: Mapping[str, Mapping[str, Any]], *, title: str) -> Table:
    """One line per task: metric, value ± standard error (percent for accuracies), documents, version."""
    table = Table(title=title, caption="fractions (acc, acc_norm, ...) in percent · ± standard error",
                  caption_justify="left")
    for name, justify in [("task", "left"), ("metric", "left"), ("score", "right"), ("docs", "right"),
                          ("version", "right")]:
        table.add_column(name, justify=justify)
    for task, score in scores.items():
        scale = 100.0 if score["metric"] in FRACTION_METRICS else 1.0
        text = f"{scale * score['value']:.2f}"
        if score["stderr"] is not None and not math.isnan(score["stderr"]):
            text += f" ± {scale * score['stderr']:.2f}"
        docs = "" if score.get("n_docs") is None else f"{score['n_docs']}"
        if score.get("n_docs_total") not in (None, score.get("n_docs")):
            docs += f" of {score['n_docs_total']}"
        table.add_row(task, score["metric"], text, docs, str(score.get("version", "")))
    return table


def is_rows_model(row: Any, model_spec: str) -> bool:
    """Whether ``model_spec`` names the model a results row was evaluated on.

    A row records its model as given (a spec, a folder) or, for a run's own checkpoints, relative to
    the run folder (``iter_0/model``); such a folder is the row's when it is ``<...>/<run>/iter_0/model``.
    """
    if model_spec == row.model:
        return True
    recorded, given = Path(row.model).parts, Path(model_spec).resolve().parts
    return (not Path(row.model).is_absolute() and row.run is not None and len(given) > len(recorded)
            and given[-len(recorded):] == recorded and given[-len(recorded) - 1] == row.run)


def _split(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


@click.command()
@click.option("--suite", type=click.Choice(SUITES), default="lm-eval", show_default=True,
              help="Capability suite (only lm-eval for now).")
@click.option("--model", "model_spec", required=True,
              help="Model spec: folder, hub id, gemma-3-270m, tiny-random-llama, tiny-random-gemma3.")
@click.option("--tasks", required=True,
              help="Comma-separated lm-eval task / group / tag names, or 'recommended' (see --langs).")
@click.option("--langs", default=",".join(RECOMMENDED_LANGUAGES), show_default=True,
              help="Languages for --tasks recommended.")
@click.option("--include-path", type=click.Path(path_type=Path), default=None,
              help="Folder of local lm-eval task YAML files (data_files relative to each YAML).")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="First N documents per task (tests, smoke runs).")
@click.option("--batch-size", default=None,
              help="Documents per forward: N or auto (default: auto on CUDA, lm-eval's search; 1 on CPU).")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available).")
@click.option("--row", default=None, help="Results row id (or folder) whose capabilities.json gets the scores.")
@click.option("--results-dir", type=click.Path(path_type=Path), default=Path("results"), show_default=True)
@click.option("-o", "--out", type=click.Path(path_type=Path), default=None,
              help="JSON file for the scores, lm-eval's results (trimmed), versions and config.")
@click.pass_obj
def capabilities(obj: Any, suite: str, model_spec: str, tasks: str, langs: str, include_path: Path | None,
               limit: int | None, batch_size: str | None, device: str | None, row: str | None, results_dir: Path,
               out: Path | None) -> None:
    """Run a capability suite on MODEL; print the scores, write -o OUT.json and the row's capabilities.json."""
    from harness.evaluation.capabilities import (
        check_task_folder,
        evaluate_suite,
        expand_tasks,
        record_capabilities,
    )
    from harness.results.rows import resolve_row
    from xlpref.errors import InputError
    from xlpref.jsonio import write_json_atomic

    if batch_size is not None and batch_size != "auto":
        if not batch_size.isdigit() or int(batch_size) < 1:
            raise InputError(f"got {batch_size!r}; expected an integer >= 1 or 'auto'", field="--batch-size")
        batch_size = int(batch_size)
    names = expand_tasks(_split(tasks), _split(langs))
    if include_path is not None:
        check_task_folder(include_path)
    # Check the row before a long evaluation, not after.
    target = resolve_row(row, results_dir) if row else None
    if target is not None and target.is_published:
        raise InputError("a published row holds the paper's numbers; expected one of our rows", path=target.path)
    stderr = Console(stderr=True)
    if target is not None and not is_rows_model(target, model_spec):
        raise InputError(f"row {target.row_id!r} holds the scores of model {target.model!r}, not {model_spec!r}; "
                         "expected the row's own model (a row's numbers come from one model)", field="--model")
    report = evaluate_suite(model_spec, names, include_path=include_path, limit=limit, batch_size=batch_size,
                            seed=global_seed(obj), device=device)
    if not report["scores"]:
        raise InputError(f"lm-eval reported no score for {names}; expected tasks with a metric", field="tasks")
    Console().print(render_scores(report["scores"], title=f"{suite}: {model_spec}"))
    if out is not None:
        write_json_atomic(out, report)
        stderr.print(f"wrote {out}")
    if target is not None:
        path = record_capabilities(target.path, report["scores"])
        stderr.print(f"wrote {path} (`xlpref leaderboard --results-dir {results_dir}` shows it)")
