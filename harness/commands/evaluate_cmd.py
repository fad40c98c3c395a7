"""``xlpref generate``, ``xlpref evaluate``, ``xlpref judge-agreement``: X-AlpacaEval outputs, judging, judges.

Example::

    xlpref generate --model tiny-random-llama --langs en,es --mini --max-new-tokens 32 -o out/tiny
    xlpref evaluate out/tiny --judge local_hf_logprob --judge-option model=tiny-random-llama --mini
    xlpref evaluate my_outputs/es.json --langs es --judge weighted_gpt4_turbo_multilingual   # bring your own
    xlpref judge-agreement --judge local_hf_logprob --n 10 --models vicuna-7b,gpt4_0613_concise
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from harness.commands import compute_options, global_seed, writes_output
from xlpref.errors import InputError
from xlpref.registry import names


def _data_dir(data_dir: Path | None, mini: bool) -> Path:
    from xlpref.data import MINI_DIR, default_data_dir

    if mini and data_dir is not None:
        raise click.UsageError("pass either --data-dir or --mini, not both")
    folder = MINI_DIR if mini else (data_dir or default_data_dir())
    if not (folder / "x_alpacaeval" / "instructions").is_dir():
        raise InputError("no x_alpacaeval/instructions folder; expected the data layout of ../shared/data (pass "
                         "--data-dir DIR, set XLPREF_DATA_DIR, or use --mini)", path=folder)
    return folder


def _judge_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    from harness.judges.loading import parse_option_value

    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InputError(f"got {pair!r}; expected KEY=VALUE, e.g. model=tiny-random-llama", field="--judge-option")
        options[key.strip()] = parse_option_value(value)
    return options


def _judge_caption(judge: Any, agreement: dict | None) -> str:
    caption = f"judge {judge.name}"
    if judge.is_demo:
        caption += " [DEMO judge: mechanics only, not quality]"
    if agreement and agreement.get("agreement_clear") is not None:
        caption += (f"; agreement with GPT-4 Turbo {100 * agreement['agreement_clear']:.1f}% on "
                    f"{agreement['n_clear']} clear pairs")
    else:
        caption += "; agreement with GPT-4 Turbo not measured for this config"
    return caption


# -- generate -------------------------------------------------------------------------------------

@click.command()
@click.option("--model", required=True, help="Model spec: a folder, a hub id, gemma-3-270m, tiny-random-llama.")
@click.option("--langs", required=True, help="Comma-separated language codes, e.g. en,es.")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Folder for {lang}/model_outputs.json (resumable).")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="Data folder (default: shared data).")
@click.option("--mini", is_flag=True, help="Use the bundled demo set (benchmarks/x_alpacaeval/mini).")
@click.option("--limit", type=int, default=None, help="Only the first N instructions of each language.")
@click.option("--generator", default=None, help="Name in the outputs' 'generator' field (default: the model's).")
@click.option("--backend", type=click.Choice(names("sampler")), default="hf", show_default=True)
@click.option("--temperature", type=float, default=None, help="Default: the benchmark's 0.6.")
@click.option("--top-p", type=float, default=None, help="Default: the benchmark's 0.9.")
@click.option("--max-new-tokens", type=int, default=None, help="Default: the benchmark's 2048.")
@click.option("--batch-size", type=int, default=8, show_default=True,
              help="Prompts per batch (hf); vllm takes at least 256 per generate call.")
@compute_options
@click.pass_obj
@writes_output("out_dir", is_folder=True)
def generate(obj: Any, model: str, langs: str, out_dir: Path, data_dir: Path | None, mini: bool, limit: int | None,
             generator: str | None, backend: str, temperature: float | None, top_p: float | None,
             max_new_tokens: int | None, batch_size: int, compute) -> None:
    """Answer every X-AlpacaEval instruction of LANGS once; write AlpacaEval model_outputs.json per language."""
    from harness.evaluation.model_outputs import evaluation_params, generate_outputs
    from xlpref.data import load_instructions
    from xlpref.languages import parse_languages

    if limit is not None and limit < 1:
        raise InputError(f"got {limit}; expected an integer >= 1", field="--limit")
    overrides = {k: v for k, v in (("temperature", temperature), ("top_p", top_p),
                                   ("max_new_tokens", max_new_tokens)) if v is not None}
    params = evaluation_params(seed=global_seed(obj), batch_size=batch_size, **overrides)
    folder = _data_dir(data_dir, mini) / "x_alpacaeval" / "instructions"
    instructions = {lang: rows[:limit] for lang, rows in load_instructions(folder, parse_languages(langs)).items()}
    generator = generator or Path(model).name
    from harness.store import RunStore, check_output_options, record_output_options

    log = RunStore(out_dir).record_log("generation", key=("lang", "id", "sample_index"))
    # Records carry the model and decoding (checked when resuming); the sidecar covers the rest.
    resolved = check_output_options(
        log.final_path, {"model": model, "generator": generator, "instructions": str(folder.resolve()), "limit": limit,
                         "backend": backend, "batch_size": batch_size},
        has_work=log.is_finished or bool(log.done_keys), changeable=("limit",))
    start = time.perf_counter()
    record_output_options(log.final_path, resolved)
    paths = generate_outputs(model, instructions, out_dir, generator=generator, backend=backend, params=params,
                             compute=compute)
    console = Console(stderr=True)
    for lang, path in paths.items():
        console.print(f"{lang}: {len(instructions[lang])} outputs -> {path}")
    console.print(f"decoding: temperature {params.temperature}, top_p {params.top_p}, max_new_tokens "
                  f"{params.max_new_tokens}, seed {params.seed}; {time.perf_counter() - start:.1f} s")


# -- evaluate -------------------------------------------------------------------------------------

def _outputs_by_lang(outputs: Path, langs: list[str] | None) -> dict[str, Path]:
    from xlpref.languages import is_language_code

    if outputs.is_file():
        lang = langs[0] if langs and len(langs) == 1 else (outputs.parent.name if not langs else None)
        if not is_language_code(lang):
            raise InputError("cannot tell the language of this outputs file; expected --langs with one code",
                             path=outputs)
        return {lang: outputs}
    if not outputs.is_dir():
        raise InputError("not found; expected a folder of {lang}/model_outputs.json or a model_outputs.json file",
                         path=outputs)
    found = {p.parent.name: p for p in sorted(outputs.glob("*/model_outputs.json")) if is_language_code(p.parent.name)}
    if langs:
        missing = [lang for lang in langs if lang not in found]
        if missing:
            raise InputError(f"no model_outputs.json for {missing}; expected {outputs}/<lang>/model_outputs.json",
                             path=outputs)
        return {lang: found[lang] for lang in langs}
    if not found:
        raise InputError("no <lang>/model_outputs.json inside; expected the layout `xlpref generate` writes",
                         path=outputs)
    return found


def evaluation_folder(outputs_file: Path, lang: str, judge_name: str, out_dir: Path | None) -> Path:
    """Where the evaluation of one outputs file goes: distinct files never share a folder.

    ``OUT/{lang}`` with ``-o OUT``; else beside the file: ``{lang}/model_outputs.json`` (the layout
    ``xlpref generate`` writes) gets ``{lang}/<judge>/``, any other file ``<judge>/<file stem>/``
    (``es.json`` and ``de.json`` of one folder get ``<judge>/es`` and ``<judge>/de``).
    """
    if out_dir is not None:
        return out_dir / lang
    if outputs_file.name == "model_outputs.json":
        return outputs_file.parent / judge_name
    return outputs_file.parent / judge_name / outputs_file.stem


def _folder_list(folders: Any) -> str:
    folders = [str(f) for f in folders]
    return f"{folders[0]}/" if len(folders) == 1 else "each <folder>/"


def _reference_generator(data_dir: Path, requested: str | None, lang: str) -> str:
    from benchmarks.x_alpacaeval import load_benchmark
    from xlpref.data import reference_generators

    available = reference_generators(data_dir)
    if requested:
        if lang not in available.get(requested, []):
            raise InputError(f"no reference outputs of {requested!r} for {lang}; available: {available}",
                             path=data_dir / "x_alpacaeval" / "reference_outputs")
        return requested
    default = load_benchmark().reference_generator
    if lang in available.get(default, []):
        return default
    candidates = [gen for gen, langs in available.items() if lang in langs]
    if len(candidates) == 1:  # e.g. the mini set's own reference
        return candidates[0]
    raise InputError(f"no reference outputs of {default!r} for {lang}; expected --reference, one of {candidates}",
                     path=data_dir / "x_alpacaeval" / "reference_outputs")


def summary_table(metrics: dict[str, dict], caption: str) -> Table:
    """One line per language: n, win rate +- SE, LC, average length, unparsed."""
    table = Table(title="X-AlpacaEval", caption=caption)
    for name in ("lang", "n", "win rate", "LC win rate", "avg length", "unparsed"):
        table.add_column(name, justify="left" if name == "lang" else "right")

    def number(value: Any, se: Any = None) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        return f"{value:.2f}" + (f" ± {se:.2f}" if isinstance(se, (int, float)) else "")

    not_estimable = []
    for lang, m in metrics.items():
        lc = number(m.get("length_controlled_winrate"))
        if m.get("lc_not_estimable"):
            not_estimable.append(f"{lang}: {m['lc_not_estimable']}")
            lc = "-†"
        table.add_row(lang, str(m.get("n_total", "-")), number(m.get("win_rate"), m.get("standard_error")),
                      lc, str(m.get("avg_length", "-")), str(m.get("n_unparsed", 0)))
    if not_estimable:
        table.caption = "\n".join([caption, "† LC not estimable: " + "; ".join(not_estimable)])
    return table


def language_table(metrics: dict[str, dict]) -> Table:
    """One line per language: outputs in the instruction's language, mixed, the language-gated win rate."""
    table = Table(title="answer language", caption="gated WR: outputs in another language count as losses "
                  "(docs/diagnostics.md)")
    for name in ("lang", "in lang %", "mixed %", "gated WR", "turned to losses"):
        table.add_column(name, justify="left" if name == "lang" else "right")
    for lang, m in metrics.items():
        cells = [m.get(k) for k in ("target_language_rate", "mixed_language_rate", "language_gated_winrate")]
        table.add_row(lang, *("-" if v is None else f"{v:.2f}" for v in cells), str(m.get("n_language_gated", "-")))
    return table


@click.command()
@click.argument("outputs", type=click.Path(path_type=Path))
@click.option("--judge", "judge_name", required=True,
              help="Judge config name or folder (benchmarks/x_alpacaeval/annotators).")
@click.option("--judge-option", "judge_option", multiple=True,
              help="KEY=VALUE judge override, e.g. model=... (repeatable).")
@click.option("--reference", default=None,
              help="Reference generator (default: the benchmark's, gpt-4-turbo-2024-04-09).")
@click.option("--langs", default=None, help="Comma-separated language codes (default: every language found).")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="Data folder (default: shared data).")
@click.option("--mini", is_flag=True, help="Use the bundled demo set's instructions and reference outputs.")
@click.option("-o", "--output", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Folder for {lang}/annotations.json and metrics.json (default: OUTPUTS/{lang}/<judge>/, or "
                   "<judge>/<file stem>/ beside an outputs file with another name).")
@click.option("--instruction-difficulty", type=click.Path(path_type=Path), default=None,
              help="CSV index,instruction_difficulty for LC (default: DATA/alpaca_eval_lc/instruction_difficulty.csv "
                   "when present).")
@click.option("--switch-seed", type=int, default=0, show_default=True, help="Seed of the output-order switch "
              "(AlpacaEval's is 0).")
@click.option("--drift-check", type=click.IntRange(min=0), default=0, show_default=True, metavar="K",
              help="Re-ask the judge K cached pairs first and record judge_drift in metrics.json (0: off).")
@click.option("--drift-threshold", type=click.FloatRange(0, 1, min_open=True), default=0.1, show_default=True,
              help="Mean |preference difference| above which the judge is said to have drifted.")
@click.option("--row", "row_name", default=None, help="Also record the evaluation as leaderboard row NAME "
              "(RESULTS_DIR/NAME: outputs, annotations, metrics), as AlpacaEval's --name does.")
@click.option("--results-dir", type=click.Path(path_type=Path), default=Path("results"), show_default=True,
              help="The results tree the --row goes to.")
@click.pass_obj
def evaluate(obj: Any, outputs: Path, judge_name: str, judge_option: tuple[str, ...], reference: str | None,
             langs: str | None, data_dir: Path | None, mini: bool, out_dir: Path | None,
             instruction_difficulty: Path | None, switch_seed: int, drift_check: int, drift_threshold: float,
             row_name: str | None, results_dir: Path) -> None:
    """Judge OUTPUTS (a folder of {lang}/model_outputs.json, or one file) against reference outputs."""
    from harness.evaluation.drift import drift_message
    from harness.evaluation.judging import evaluate_outputs
    from harness.evaluation.model_outputs import load_model_outputs
    from harness.judges.loading import load_judge, read_agreement
    from harness.store import check_output_options, record_output_options
    from xlpref.data import load_instructions, load_reference_outputs
    from xlpref.languages import parse_languages
    from xlpref.runlock import hold_lock

    if row_name is not None:
        from harness.results.rows import check_row_id

        check_row_id(row_name)  # a bad name fails before any judging
    files = _outputs_by_lang(outputs, parse_languages(langs) if langs else None)
    for path in files.values():  # bad files fail before any judge loads
        load_model_outputs(path)
    folder = _data_dir(data_dir, mini)
    judge = load_judge(judge_name, **_judge_options(judge_option))
    default_difficulty = folder / "alpaca_eval_lc" / "instruction_difficulty.csv"
    difficulty = instruction_difficulty or (default_difficulty if default_difficulty.is_file() else None)
    console = Console(stderr=True)
    metrics, inputs = {}, {}
    targets = {lang: evaluation_folder(path, lang, judge.name, out_dir) for lang, path in files.items()}
    with contextlib.ExitStack() as locks:
        for lang, target in targets.items():  # one writer per evaluation folder, for the whole command
            locks.enter_context(hold_lock(target, is_folder=True))
            # A folder that holds the evaluation of another outputs file is refused, never overwritten.
            inputs[lang] = check_output_options(target / "annotations.json",
                                                {"model_outputs": str(files[lang].resolve())},
                                                has_work=(target / "annotations.json").is_file())
        for lang, path in files.items():
            instructions = load_instructions(folder / "x_alpacaeval" / "instructions", [lang])[lang]
            generator = _reference_generator(folder, reference, lang)
            refs = load_reference_outputs(folder / "x_alpacaeval" / "reference_outputs" / generator / f"{lang}.json",
                                          instructions)
            target = targets[lang]
            metrics[lang] = evaluate_outputs(path, refs, judge, target, instruction_difficulty=difficulty,
                                             seed=switch_seed, lang=lang, drift_check=drift_check,
                                             drift_threshold=drift_threshold)
            record_output_options(target / "annotations.json", inputs[lang])
            console.print(f"{lang}: {target / 'annotations.json'}, {target / 'metrics.json'}")
    if row_name is not None:
        _record_row(row_name, results_dir, files, targets, judge, judge_name, outputs)
    calls = judge.counters
    caption = (_judge_caption(judge, read_agreement(judge)) + f"; reference {next(iter(metrics.values()))['reference']}"
               f"; {calls['calls']} judge calls, ${calls['cost_usd']:.4f} this invocation (all invocations: "
               f"{_folder_list(targets.values())}judge_calls.json)")
    drift = [m for lang, values in metrics.items() if (m := drift_message(lang, values.get("judge_drift")))]
    if drift:
        caption += "\n" + "; ".join(drift)
    Console().print(summary_table(metrics, caption))
    Console().print(language_table(metrics))


def _record_row(row_name: str, results_dir: Path, files: dict[str, Path], targets: dict[str, Path], judge: Any,
                judge_name: str, outputs: Path) -> None:
    """The evaluation as leaderboard row ``row_name``: model named by the outputs' ``generator``."""
    from harness.results.rows import record_evaluation
    from xlpref.jsonio import read_json

    first = read_json(next(iter(files.values())))
    model = next((o.get("generator") for o in first if isinstance(o, dict) and o.get("generator")), None)
    row = {"row_id": row_name, "label": row_name, "model": model or outputs.name, "annotator_is_demo": judge.is_demo,
           "source": f"xlpref evaluate {outputs} --judge {judge_name}"}
    folder = record_evaluation(results_dir, row, {
        lang: {"model_outputs": files[lang], "annotations": targets[lang] / "annotations.json",
               "metrics": targets[lang] / "metrics.json"} for lang in files})
    Console(stderr=True).print(f"row {row_name}: {folder} (see `xlpref leaderboard --results-dir {results_dir}`)")


# -- judge agreement ------------------------------------------------------------------------------

@click.command("judge-agreement")
@click.option("--judge", "judge_name", required=True, help="Judge config name or folder.")
@click.option("--judge-option", "judge_option", multiple=True, help="KEY=VALUE judge override (repeatable).")
@click.option("--n", "n", type=int, default=40, show_default=True, help="Instructions per model (the same for all).")
@click.option("--models", default=None, help="Comma-separated models (default: every <model>.json found).")
@click.option("--annotations-dir", type=click.Path(path_type=Path), default=None,
              help="AlpacaEval 2 annotations as <model>.json (default: DATA/alpaca_eval_annotations).")
@click.option("-o", "--output", "output", type=click.Path(path_type=Path), default=None,
              help="Where to write the result (default: benchmarks/x_alpacaeval/annotators/<judge>/agreement.json).")
@click.pass_obj
def judge_agreement(obj: Any, judge_name: str, judge_option: tuple[str, ...], n: int, models: str | None,
                    annotations_dir: Path | None, output: Path | None) -> None:
    """Measure a judge against GPT-4 Turbo's real AlpacaEval 2 annotations."""
    import shlex

    from harness.judges.agreement import measure_agreement
    from harness.judges.loading import agreement_path, load_judge
    from harness.store import now_iso
    from xlpref.data import default_data_dir
    from xlpref.jsonio import dumps, write_json_atomic

    if n < 1:
        raise InputError(f"got {n}; expected an integer >= 1", field="--n")
    judge = load_judge(judge_name, **_judge_options(judge_option))
    seed = global_seed(obj)
    run_root = (obj.run_dir if obj is not None and obj.run_dir else Path("runs") / "judge_agreement")
    result = measure_agreement(judge, annotations_dir or default_data_dir() / "alpaca_eval_annotations", n=n,
                               models=[m.strip() for m in models.split(",") if m.strip()] if models else None,
                               seed=seed, cache_path=run_root / judge.name / "judge_cache.jsonl")
    words = ["xlpref", "--seed", str(seed), "judge-agreement", "--judge", judge_name, "--n", str(n)]
    words += [w for option in judge_option for w in ("--judge-option", option)]
    words += ["--models", models] if models else []
    result["command"] = " ".join(shlex.quote(w) for w in words)
    result["measured_at"] = now_iso()
    target = output or agreement_path(judge.name)
    write_json_atomic(target, result)
    table = Table(title=f"{judge.name} vs GPT-4 Turbo (AlpacaEval 2 annotations)",
                  caption="DEMO judge: mechanics, not quality" if judge.is_demo else None)
    for name in ("model", "n", "WR judge", "WR GPT-4 Turbo"):
        table.add_column(name, justify="left" if name == "model" else "right")
    for m in result["models"]:
        table.add_row(m["model"], str(m["n"]), *(f"{m[k]:.1f}" if m[k] is not None else "-"
                                                 for k in ("win_rate_judge", "win_rate_gpt4_turbo")))
    Console().print(table)
    click.echo(dumps({k: v for k, v in result.items() if k != "models"}, indent=2))
    Console(stderr=True).print(f"wrote {target}")
