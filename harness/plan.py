"""The plan of a run, computed from its config and data files without loading a model.

Stages per iteration with their counts, the judge's calls and estimated cost at the judge config's
prices, and where every artifact will go; :func:`render_plan` prints it with the pre-flight findings
(:mod:`harness.preflight`). ``xlpref run CONFIG --dry-run`` shows it.

Example::

    from harness.config import load_config
    from harness.plan import plan, render_plan
    from harness.preflight import preflight
    config = load_config("configs/demo.yaml")
    print(render_plan(plan(config), preflight(config)))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.config import RunConfig
from harness.preflight import CHARS_PER_TOKEN, Finding, _data_files


def _count_lines(path: Path, limit: int | None) -> int | None:
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as handle:
        count = sum(1 for line in handle if line.strip())
    return min(count, limit) if limit else count


def _instruction_chars(instructions: Path, references: Path, limit: int | None) -> list[tuple[int, int]] | None:
    """(instruction, reference output) characters per evaluated instruction (None: a file is missing)."""
    import json

    if not instructions.is_file() or not references.is_file():
        return None
    rows = json.loads(instructions.read_text(encoding="utf-8"))[:limit]
    refs = {r.get("id", i): r for i, r in enumerate(json.loads(references.read_text(encoding="utf-8")))}
    return [(len(row.get("instruction", "")), len(refs.get(row.get("id", i), {}).get("output", "")))
            for i, row in enumerate(rows)]


def _judge_costs(config: RunConfig, chars: dict[str, list[tuple[int, int]] | None]) -> dict[str, Any]:
    """Calls, tokens and cost of one evaluation: expected (model output as long as the reference, within
    max_new_tokens) and at most (every model output max_new_tokens long)."""
    from harness.judges.loading import load_judge_config

    judge = load_judge_config(config.evaluation.judge, **config.evaluation.judge_options)
    template = len(judge.prompt_template)
    items = [item for lang_chars in chars.values() if lang_chars for item in lang_chars]
    calls = len(items)
    longest_output = config.evaluation.max_new_tokens * CHARS_PER_TOKEN
    shown = sum(template + instruction + reference for instruction, reference in items)
    expected_prompt = (shown + sum(min(reference, longest_output) for _, reference in items)) // CHARS_PER_TOKEN
    max_prompt = shown // CHARS_PER_TOKEN + calls * config.evaluation.max_new_tokens
    completion = calls * int(judge.completions_kwargs.get("max_tokens", 1))
    prompt_price = float(judge.options.get("price_per_million_prompt_tokens", 0.0))
    completion_price = float(judge.options.get("price_per_million_completion_tokens", 0.0))

    def cost(prompt_tokens: int) -> float:
        return (prompt_tokens * prompt_price + completion * completion_price) / 1e6

    return {"judge": judge.name, "calls": calls, "prompt_tokens": expected_prompt, "prompt_tokens_max": max_prompt,
            "completion_tokens": completion, "price_per_million_prompt_tokens": prompt_price,
            "price_per_million_completion_tokens": completion_price,
            "cost_usd": cost(expected_prompt), "cost_usd_max": cost(max_prompt)}


def plan(config: RunConfig, *, iterations: int | None = None) -> dict[str, Any]:
    """Stages, counts, judge cost and artifact paths of ``config`` (plain data; see :func:`render_plan`)."""
    from xlpref.registry import resolve

    iterations = config.iterations if iterations is None else iterations
    prompt_files, instruction_files, reference_files = _data_files(config)
    prompts = {lang: _count_lines(prompt_files[lang], config.data.prompt_limit) for lang in config.languages}
    chars = {lang: _instruction_chars(instruction_files[lang], reference_files[lang], config.data.eval_limit)
             for lang in config.languages}
    instructions = {lang: len(c) if c is not None else None for lang, c in chars.items()}
    needs_samples = getattr(resolve("annotator", config.annotator.name), "needs_samples", True)
    training_langs = config.training.languages or config.languages
    known = [n for n in prompts.values() if n is not None]
    n_prompts = sum(known)
    n_outputs = sum(n for n in instructions.values() if n is not None)
    run = Path(config.run_dir)
    evaluation = _judge_costs(config, chars) if config.evaluation.is_enabled else None

    def evaluate(t: int) -> dict:
        return {"stage": f"evaluate pi_{t}", "count": f"{n_outputs} outputs ({_per_lang(instructions)}), "
                f"{evaluation['calls']} judge calls", "artifacts": str(run / "eval" / f"iter_{t}" / "{lang}")}

    stages = []
    for t in range(iterations):
        if evaluation:
            stages.append(evaluate(t))
        folder = run / f"iter_{t}"
        if needs_samples:
            samples = n_prompts * config.sampling.n
            stages.append({"stage": f"sample (iteration {t})", "count": f"{n_prompts} prompts ({_per_lang(prompts)}) "
                           f"x {config.sampling.n} samples = {samples} responses", "artifacts": str(folder / "samples.jsonl")})
            stages.append({"stage": f"score (iteration {t})", "count": f"{samples} responses "
                           f"({config.annotator.reward} reward)", "artifacts": str(folder / "scored.jsonl")})
        stages.append({"stage": f"pairs (iteration {t})", "count": f"at most {n_prompts} pairs (one per prompt and "
                       f"language; annotator {config.annotator.name})", "artifacts": str(folder / "pairs.jsonl")})
        trained = sum(prompts[lang] or 0 for lang in config.languages if lang in training_langs)
        stages.append({"stage": f"train pi_{t + 1}", "count": f"at most {trained} pairs ({', '.join(training_langs)}), "
                       f"{config.training.epochs:g} epoch(s)", "artifacts": str(folder / "model")})
    if evaluation:
        stages.append(evaluate(iterations))
    artifacts = {"run directory": str(run), "manifest": str(run / "manifest.json"),
                 "stage bookkeeping": str(run / "stages.json")}
    if evaluation:
        artifacts["results rows"] = str(run / "results" / f"{config.name}-iter{{t}}")
        artifacts["run leaderboard"] = str(run / "leaderboard.csv")
        if config.evaluation.results_dir:
            artifacts["shared results rows"] = str(Path(config.evaluation.results_dir) / f"{config.name}-iter{{t}}")
    evaluations = iterations + 1 if evaluation else 0
    judge = None
    if evaluation:
        judge = {**evaluation, "evaluations": evaluations,
                 "total_calls": evaluation["calls"] * evaluations,
                 "total_cost_usd": evaluation["cost_usd"] * evaluations,
                 "total_cost_usd_max": evaluation["cost_usd_max"] * evaluations}
    return {"name": config.name, "iterations": iterations, "languages": config.languages, "stages": stages,
            "judge": judge, "artifacts": artifacts,
            "missing_counts": sorted({*(l for l, n in prompts.items() if n is None),
                                      *(l for l, n in instructions.items() if n is None and evaluation)})}


def _per_lang(counts: dict[str, int | None]) -> str:
    return ", ".join(f"{lang} {n if n is not None else '?'}" for lang, n in counts.items())


def render_plan(the_plan: dict[str, Any], findings: list[Finding]) -> str:
    """The plan and the pre-flight findings as plain text (problems marked ``PROBLEM``)."""
    title = (f"plan of run {the_plan['name']}: {the_plan['iterations']} iteration(s), languages "
             f"{', '.join(the_plan['languages'])}")
    lines = [title, "", "stages:"]
    width = max((len(s["stage"]) for s in the_plan["stages"]), default=0)
    for stage in the_plan["stages"]:
        lines.append(f"  {stage['stage']:<{width}}  {stage['count']}")
        lines.append(f"  {'':<{width}}  -> {stage['artifacts']}")
    if the_plan["missing_counts"]:
        lines.append(f"  ('?': no data file for {', '.join(the_plan['missing_counts'])}; see the findings)")
    judge = the_plan["judge"]
    lines += ["", "judge:"]
    if judge is None:
        lines.append("  evaluation disabled: no judge calls")
    else:
        lines.append(f"  {judge['judge']}: {judge['calls']} calls per evaluation x {judge['evaluations']} evaluations "
                     f"= {judge['total_calls']} calls")
        lines.append(f"  per evaluation: about {judge['prompt_tokens']} prompt tokens (at most "
                     f"{judge['prompt_tokens_max']}), {judge['completion_tokens']} completion tokens")
        lines.append(f"  cost at ${judge['price_per_million_prompt_tokens']:g} / ${judge['price_per_million_completion_tokens']:g} "
                     f"per million prompt / completion tokens: about ${judge['total_cost_usd']:.2f} "
                     f"(at most ${judge['total_cost_usd_max']:.2f}; {CHARS_PER_TOKEN} characters a token)")
    lines += ["", "artifacts:"]
    lines += [f"  {name}: {path}" for name, path in the_plan["artifacts"].items()]
    problems = sum(f.is_problem for f in findings)
    lines += ["", f"pre-flight: {len(findings)} checks, {problems} problem{'s' * (problems != 1)}"]
    lines += [f"  {'PROBLEM' if f.is_problem else 'ok':<7} {f.check}: {f.message}" for f in findings]
    return "\n".join(lines)
