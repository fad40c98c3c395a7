"""The performance suite: run the sections, turn their data into one table, write JSON.

Sections (each in its own module, each comparing against its naive baseline in the same process):
``scoring`` (:mod:`bench_scoring`), ``sampling`` (:mod:`bench_sampling`, vLLM in a subprocess),
``training`` (:mod:`bench_training`), ``judging`` (:mod:`bench_judging`), ``e2e`` (:mod:`bench_e2e`),
``scale`` (:mod:`bench_scale`: Ray workers, 2 against 1; only when asked for).
A section that fails is recorded with its error and the others still run.

Computation and rendering are apart: :func:`summary_rows` turns the results into plain rows
(section, measure, ours, naive, ratio, target, met); :func:`summary_table` renders them with rich.

Run it as ``python -m benchmarks.perf.suite [--quick] [--sections scoring,judging] [-o out.json]``
(or ``xlpref bench``, which imports this module only when it runs).

Example::

    from benchmarks.perf.suite import run_suite, summary_table
    from rich.console import Console
    results = run_suite(["judging"], quick=True, model="tiny-random-llama")
    Console().print(summary_table(results))
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any, Callable

from rich.table import Table

SECTIONS = ("scoring", "sampling", "training", "judging", "e2e", "scale")
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "bench.json"


def _section_runner(name: str, *, quick: bool, model: str, repeats: int | None, options: dict) -> Callable:
    """The section's run function with its config (quick or default size, then the caller's overrides)."""
    if name == "scoring":
        from benchmarks.perf.bench_scoring import ScoringConfig, run_scoring

        config = ScoringConfig.quick(model) if quick else ScoringConfig(model=model)
        return lambda log: run_scoring(_override(config, repeats, options.get("scoring")), log=log)
    if name == "sampling":
        from benchmarks.perf.bench_sampling import SamplingBenchConfig, run_sampling

        config = SamplingBenchConfig.quick(model) if quick else SamplingBenchConfig(model=model)
        return lambda log: run_sampling(_override(config, repeats, options.get("sampling")), log=log)
    if name == "training":
        from benchmarks.perf.bench_training import TrainingBenchConfig, run_training

        config = TrainingBenchConfig.quick(model) if quick else TrainingBenchConfig(model=model)
        return lambda log: run_training(_override(config, None, options.get("training")), log=log)
    if name == "judging":
        from benchmarks.perf.bench_judging import JudgingConfig, run_judging

        config = JudgingConfig.quick(model) if quick else JudgingConfig(model=model)
        return lambda log: run_judging(_override(config, repeats, options.get("judging")), log=log)
    if name == "e2e":
        from benchmarks.perf.bench_e2e import E2EConfig, run_e2e

        config = E2EConfig.quick() if quick else E2EConfig()
        return lambda log: run_e2e(_override(config, None, options.get("e2e")), log=log)
    if name == "scale":
        from benchmarks.perf.bench_scale import ScaleConfig, run_scale

        config = ScaleConfig.quick(model) if quick else ScaleConfig(model=model)
        return lambda log: run_scale(_override(config, None, options.get("scale")), log=log)
    raise ValueError(f"unknown section {name!r}; expected one of {SECTIONS}")


def _override(config: Any, repeats: int | None, values: dict | None) -> Any:
    if repeats is not None and hasattr(config, "repeats"):
        config.repeats = repeats
    for key, value in (values or {}).items():
        setattr(config, key, value)
    return config


def run_suite(sections: list[str], *, quick: bool = False, model: str = "gemma-3-270m", repeats: int | None = None,
              options: dict | None = None, log: Callable[[str], None] = print) -> dict:
    """Every requested section's results, with the machine's facts and each section's wall time."""
    from benchmarks.perf.machine import machine_info

    results: dict[str, Any] = {"machine": machine_info(), "quick": quick, "model": model, "sections": {}}
    for name in sections:
        runner = _section_runner(name, quick=quick, model=model, repeats=repeats, options=options or {})
        start = time.perf_counter()
        try:
            data = runner(log)
        except Exception as exc:  # one section's failure must not lose the others' numbers
            log(f"{name}: failed: {exc!r}")
            data = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=8)}
        data["section_seconds"] = time.perf_counter() - start
        results["sections"][name] = data
    results["machine"]["load_average_1m_end"] = machine_info()["load_average_1m"]
    results["rows"] = summary_rows(results)
    return results


# -- rows: the results as plain data ----------------------------------------------------------------

def _row(section: str, measure: str, ours: Any, naive: Any = None, *, target: str = "", met: bool | None = None,
         unit: str = "", has_ratio: bool = True) -> dict:
    is_number = isinstance(ours, (int, float)) and isinstance(naive, (int, float)) and naive
    ratio = ours / naive if has_ratio and is_number else None
    return {"section": section, "measure": measure, "ours": ours, "naive": naive, "unit": unit, "ratio": ratio,
            "target": target, "met": met}


def _median(values: list | None) -> str:
    return "?" if not values else str(sorted(values)[len(values) // 2])


def _scoring_rows(data: dict) -> list[dict]:
    rows = []
    for k in data["per_k"]:
        tps, peak = k["tokens_per_s"], k["peak_mib"]
        is_target = k["k"] == 10 and not k.get("is_short_prompts")
        ratio = tps["ours"] / tps["naive"]
        where = "short prompts, " if k.get("is_short_prompts") else ""
        rows.append(_row("scoring", f"K={k['k']} response tokens/s (2 models; {where}prompt "
                         f"{_median(k.get('prompt_tokens'))} tokens)", tps["ours"], tps["naive"],
                         unit="tok/s", target=">= 2x" if is_target else "",
                         met=ratio >= 2.0 if is_target else None))
        if k.get("is_short_prompts"):
            continue
        rows.append(_row("scoring", f"K={k['k']} useful-FLOP utilisation (of {k['matmul_gflops']:.0f} GFLOP/s)",
                         k["utilisation"]["ours"], k["utilisation"]["naive"], unit="%",
                         target=">= 60%" if is_target else "", met=k["utilisation"]["ours"] >= 0.6 if is_target else None))
        rows.append(_row("scoring", f"K={k['k']} peak memory above the models", peak["ours"], peak["naive"],
                         unit="MiB"))
        relative = k["max_relative_reward_difference"]
        rows.append(_row("scoring", f"K={k['k']} max |reward - naive's| / |log p| (abs "
                         f"{k['max_abs_reward_difference']:.1e} nats)", relative, unit="rel", target="<= 1e-4",
                         met=relative <= 1e-4, has_ratio=False))
    growth = data["memory_growth"]
    short, long = sorted(growth["ours"], key=int)
    # Peak memory added per response token, in fp32 vocabulary rows: a tensor of vocab x length adds >= 1.
    per_token = {name: (growth[name][long] - growth[name][short]) / (int(long) - int(short)) / growth["vocab_row_mib"]
                 for name in ("ours", "naive")}
    rows.append(_row("scoring", f"peak memory added per response token, {short} -> {long} tokens, in vocab rows "
                     f"({growth['vocab_row_mib']:.2f} MiB)", per_token["ours"], per_token["naive"], unit="rows",
                     target="ours < 0.25", met=per_token["ours"] < 0.25, has_ratio=False))
    if "rounding" in data:
        error = data["rounding"]
        rows.append(_row("scoring", f"|log p - float64 log-softmax of the same logits|, one response of "
                         f"{error['response_tokens']} tokens", abs(error["ours_minus_float64"]),
                         abs(error["naive_minus_float64"]), unit="nats", has_ratio=False))
    bf16 = data["bf16"]
    rows.append(_row("scoring", "bf16 matmul rate vs fp32 (decision: " + bf16["decision"] + ")",
                     bf16["bf16_matmul_gflops"], bf16["fp32_matmul_gflops"], unit="GFLOP/s"))
    return rows


def _sampling_rows(data: dict) -> list[dict]:
    hf = data["hf"]
    batch = data["config"]["batch_size"]
    rows = [_row("sampling", f"hf batch {batch} vs one prompt at a time", hf["batch_tokens_per_s"],
                 hf["single_tokens_per_s"], unit="tok/s", target=">= 4x",
                 met=hf["batch_tokens_per_s"] / hf["single_tokens_per_s"] >= 4)]
    vllm = data.get("vllm", {})
    if "error" in vllm:
        rows.append(_row("sampling", f"vLLM not measured: {vllm['error']}", None))
        return rows
    for run in vllm["sampling"]:
        rate = run["tokens_per_s"]
        rows.append(_row("sampling", f"vLLM {run['sequences']} sequences (n={run['n']}) vs one prompt at a time",
                         rate, hf["single_tokens_per_s"], unit="tok/s", target=">= 4x",
                         met=rate / hf["single_tokens_per_s"] >= 4))
    even = vllm.get("break_even_tokens_vs_hf_batch")
    rows.append(_row("sampling", "vLLM engine start-up (pays off vs hf batch after "
                     + (f"{even:,.0f} generated tokens)" if even else "never at these rates)"),
                     vllm["startup_seconds"], unit="s"))
    ours = data["scoring_one_model"]["ours_tokens_per_s"]
    for name, variant in vllm.get("scoring", {}).items():
        rows.append(_row("sampling", f"scoring 1 model: ours vs vLLM prompt_logprobs ({name}); max |diff| "
                         f"{variant['max_abs_difference_vs_ours']:.1e}", ours, variant["tokens_per_s"], unit="tok/s"))
    return rows


def _training_rows(data: dict) -> list[dict]:
    rows = [_row("training", f"pairs/s, {data['setup']}", data["pairs_per_s"]["ours"], data["pairs_per_s"]["naive"],
                 unit="pairs/s", target=">= 1.3x",
                 met=data["pairs_per_s"]["ours"] / data["pairs_per_s"]["naive"] >= 1.3)]
    difference = data["first_loss_difference"]
    rows.append(_row("training", "first-step loss |ours - trl defaults|", difference, unit="abs", target="<= 1e-4",
                     met=None if difference is None else difference <= 1e-4, has_ratio=False))
    return rows


def _judging_rows(data: dict) -> list[dict]:
    rows = [_row("judging", f"local judge batch {data['batch_size']} vs one at a time", data["items_per_s"]["ours"],
                 data["items_per_s"]["naive"], unit="items/s")]
    cached = data["cached"]
    rows.append(_row("judging", "fully cached re-evaluation: model calls", cached["cached_calls"],
                     cached["first_calls"], unit="calls", target="0", met=cached["cached_calls"] == 0, has_ratio=False))
    return rows


def _e2e_rows(data: dict) -> list[dict]:
    rows = []
    for source in ("fresh_run", "existing_run"):
        run = data.get(source)
        if run is None:
            continue
        label = "reduced demo iteration (fresh)" if source == "fresh_run" else f"run {run.get('run_dir', '')}"
        if "error" in run:
            if source == "fresh_run" or "stages" not in data.get("fresh_run", {}):
                rows.append(_row("e2e", f"{label}: not available: {run['error']}", None))
            continue
        stages = {row["stage"]: row["seconds"] for row in run["stages"]}
        parts = ", ".join(f"{name} {seconds:.0f}s" for name, seconds in stages.items() if name != "total")
        rows.append(_row("e2e", f"{label}: {parts}", stages["total"], unit="s"))
    return rows


def _scale_rows(data: dict) -> list[dict]:
    rows = [_row("scale", "Ray start-up (local instance, once per command)", data["ray_startup_seconds"], unit="s")]
    counts = [str(c) for c in data["config"]["worker_counts"]]
    one, many = counts[0], counts[-1]
    for stage in ("sampling", "scoring"):
        runs = data[stage]
        rate = {c: runs[c]["tokens"] / runs[c]["wall_seconds"] for c in counts}
        label = "hf sampling" if stage == "sampling" else "scoring (one model)"
        equal = runs[many]["equal_to_first"] if stage == "sampling" else runs["max_logp_difference"] <= 1e-5
        rows.append(_row("scale", f"{label}: {many} workers x 1 thread vs {one}, tok/s (same output: {equal})",
                         rate[many], rate[one], unit="tok/s", target=">= 1.7x", met=rate[many] / rate[one] >= 1.7))
        loads = [s for c in counts for s in runs[c]["load_seconds"]]
        rows.append(_row("scale", f"{label}: model loading per worker, max of {len(loads)}", max(loads), unit="s"))
        rows.append(_row("scale", f"{label}: per-shard overhead, {many} workers ({runs[many]['shards']} shards)",
                         runs[many]["overhead_ms_per_shard"], unit="ms", has_ratio=False))
    return rows


ROW_BUILDERS = {"scoring": _scoring_rows, "sampling": _sampling_rows, "training": _training_rows,
                "judging": _judging_rows, "e2e": _e2e_rows, "scale": _scale_rows}


def summary_rows(results: dict) -> list[dict]:
    """One row per measure (a failed section gives one row with its error)."""
    rows = []
    for name, data in results["sections"].items():
        if "error" in data:
            rows.append(_row(name, f"section failed: {data['error']}", None))
            continue
        try:
            rows.extend(ROW_BUILDERS[name](data))
        except (KeyError, TypeError, ZeroDivisionError) as exc:
            rows.append(_row(name, f"incomplete results: {type(exc).__name__}: {exc}", None))
    return rows


# -- rendering --------------------------------------------------------------------------------------

def _format(value: Any, unit: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if unit == "%":
        return f"{value:.0%}"
    if unit in ("rel", "abs") or (isinstance(value, float) and 0 < abs(value) < 1e-2):
        return f"{value:.1e}"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def summary_table(results: dict) -> Table:
    """The rows as a rich table: section, measure, ours, naive, ratio, target, met?"""
    machine = results["machine"]
    title = (f"xlpref bench ({results['model']}{', quick' if results.get('quick') else ''}) on this machine: "
             f"{machine['cpu_model']}, {machine['cores']} cores, torch {machine['torch']}, "
             f"load {machine['load_average_1m']}")
    table = Table(title=title, show_lines=False)
    for column in ("section", "measure", "ours", "naive", "unit", "ratio", "target", "met?"):
        table.add_column(column, justify="left" if column in ("section", "measure", "unit", "target") else "right",
                         overflow="fold")
    for row in results["rows"]:
        met = {True: "[green]yes", False: "[red]no", None: ""}[row["met"]]
        ratio = f"{row['ratio']:.2f}x" if row["ratio"] is not None else ""
        table.add_row(row["section"], row["measure"], _format(row["ours"], row["unit"]),
                      _format(row["naive"], row["unit"]), row["unit"], ratio, row["target"], met)
    return table


def stage_table(results: dict) -> Table | None:
    """The end-to-end stage breakdown (seconds per stage) of each measured run, or None."""
    e2e = results["sections"].get("e2e", {})
    runs = [(source, e2e[source]) for source in ("fresh_run", "existing_run") if "stages" in e2e.get(source, {})]
    if not runs:
        return None
    table = Table(title="End to end: seconds per stage (this machine)")
    table.add_column("stage")
    for source, _ in runs:
        table.add_column(source.replace("_", " "), justify="right")
    names = list(dict.fromkeys(row["stage"] for _, run in runs for row in run["stages"]))
    for name in names:
        cells = []
        for _, run in runs:
            seconds = {row["stage"]: row["seconds"] for row in run["stages"]}.get(name)
            cells.append("" if seconds is None else f"{seconds:.1f}")
        table.add_row(name, *cells)
    return table


def print_and_write(results: dict, output: Path) -> None:
    """Print the summary and stage tables, then write ``results`` as JSON to ``output``."""
    from rich.console import Console

    from xlpref.jsonio import write_json_atomic

    out = Console(width=None if Console().is_terminal else 160)
    out.print(summary_table(results))
    stages = stage_table(results)
    if stages is not None:
        out.print(stages)
    write_json_atomic(output, results)
    Console(stderr=True).print(f"wrote {output}")


def parse_sections(text: str) -> list[str]:
    """A comma-separated subset of :data:`SECTIONS`, in the order given."""
    from xlpref.errors import InputError

    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SECTIONS]
    if unknown or not names:
        raise InputError(f"unknown sections {unknown}; expected a comma-separated subset of {list(SECTIONS)}",
                         field="--sections")
    return names


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.perf.suite``: the options of ``xlpref bench``; returns the exit code."""
    import argparse
    import sys

    from xlpref.errors import InputError

    parser = argparse.ArgumentParser(prog="python -m benchmarks.perf.suite", description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset of the sections")
    parser.add_argument("--quick", action="store_true", help="small sizes (a few minutes)")
    parser.add_argument("--model", default="gemma-3-270m", help="model spec every section uses")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repetitions per comparison")
    parser.add_argument("--no-vllm", action="store_true", help="skip the vLLM engine in the sampling section")
    parser.add_argument("--e2e-run-dir", default="runs/demo", help="an existing run whose stages.json e2e reports")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for the in-process sections")
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_OUTPUT, help="JSON output")
    args = parser.parse_args(argv)
    try:
        names = parse_sections(args.sections)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    options = {"sampling": {"is_vllm": not args.no_vllm},
               "e2e": {"run_dir": args.e2e_run_dir or None, "is_fresh": None, "build_policy": False}}
    results = run_suite(names, quick=args.quick, model=args.model, repeats=args.repeats, options=options,
                        log=lambda message: print(message, file=sys.stderr))
    print_and_write(results, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
