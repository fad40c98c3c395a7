"""Judging: the local judge batched against one item at a time, and a fully cached re-evaluation.

Workload: the mini set's evaluation instructions in several languages, output_1 = the mini reference
answer, output_2 = another instruction's reference answer of the same language (so the judge has a
real choice). Both judges share one loaded model; batched and single runs alternate (ABBA over
``repeats``) and their preferences are compared. The cached re-evaluation runs
:func:`harness.evaluation.judging.annotate` twice on the same cache file and counts the judge's model calls
in the second run (expected: 0).

Example::

    from benchmarks.perf.bench_judging import JudgingConfig, run_judging
    print(run_judging(JudgingConfig(model="tiny-random-llama", items=4)))
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class JudgingConfig:
    model: str = "gemma-3-270m"
    items: int = 16
    batch_size: int = 8
    repeats: int = 1

    @classmethod
    def quick(cls, model: str = "gemma-3-270m") -> "JudgingConfig":
        return cls(model=model, items=4, batch_size=4)


def judge_workload(n_items: int) -> tuple[list[dict], list[dict]]:
    """(model outputs, reference outputs) in AlpacaEval format, cycling languages."""
    from xlpref.data import MINI_DIR, load_instructions, load_reference_outputs

    langs = ["en", "es", "de", "fr", "ru", "zh"]
    instructions = load_instructions(MINI_DIR / "x_alpacaeval" / "instructions", langs)
    references: dict[str, list[dict]] = {}
    for lang in langs:
        path = MINI_DIR / "x_alpacaeval" / "reference_outputs" / "xlpref-mini-reference" / f"{lang}.json"
        references[lang] = load_reference_outputs(path, instructions[lang])
    model_outputs, reference_outputs = [], []
    for i in range(n_items):
        lang = langs[i % len(langs)]
        rows = references[lang]
        ref, other = rows[(i // len(langs)) % len(rows)], rows[(i // len(langs) + 7) % len(rows)]
        key = f"{lang}-{ref['id']}"
        reference_outputs.append({"id": key, "instruction": ref["instruction"], "output": ref["output"],
                                  "generator": "mini-reference"})
        model_outputs.append({"id": key, "instruction": ref["instruction"], "output": other["output"],
                              "generator": "bench"})
    return model_outputs, reference_outputs


def run_judging(config: JudgingConfig, *, log: Any = print) -> dict:
    """Items/s of the batched and the one-at-a-time judge, their agreement, and the cached re-run's calls."""
    from harness.evaluation.judging import annotate
    from harness.judges.local import LocalHFLogprobJudge
    from harness.judges.base import JudgeItem
    from xlpref.models import load_model

    model, tokenizer = load_model(config.model)
    judges = {name: LocalHFLogprobJudge(config.model, model=model, tokenizer=tokenizer, batch_size=size)
              for name, size in (("ours", config.batch_size), ("naive", 1))}
    outputs, references = judge_workload(config.items)
    items = [JudgeItem(r["instruction"], r["output"], m["output"]) for m, r in zip(outputs, references)]
    judges["ours"].preferences(items[:1])  # warm-up
    seconds: dict[str, list[float]] = {"ours": [], "naive": []}
    preferences: dict[str, list[float]] = {}
    for name in (["naive", "ours", "ours", "naive"] * config.repeats)[: 2 * config.repeats]:
        start = time.perf_counter()
        preferences[name] = judges[name].preferences(items)
        seconds[name].append(time.perf_counter() - start)
    best = {name: min(values) for name, values in seconds.items()}
    difference = max(abs(a - b) for a, b in zip(preferences["ours"], preferences["naive"]))
    log(f"judging: batched {config.items / best['ours']:.2f} items/s, one at a time "
        f"{config.items / best['naive']:.2f} items/s")

    with tempfile.TemporaryDirectory(prefix="xlpref-bench-judge-") as folder:
        cache = Path(folder) / "judge_cache.jsonl"
        judge = judges["ours"]
        before = judge.counters["calls"]
        start = time.perf_counter()
        first = annotate(outputs, references, judge, cache_path=cache, progress=False)
        first_seconds, first_calls = time.perf_counter() - start, judge.counters["calls"] - before
        before = judge.counters["calls"]
        start = time.perf_counter()
        second = annotate(outputs, references, judge, cache_path=cache, progress=False)
        cached_seconds, cached_calls = time.perf_counter() - start, judge.counters["calls"] - before
    is_same = [a["preference"] for a in first] == [a["preference"] for a in second]
    return {
        "model": config.model, "items": config.items, "batch_size": config.batch_size,
        "seconds": best, "items_per_s": {n: config.items / s for n, s in best.items()},
        "max_abs_preference_difference": difference,
        "cached": {"first_calls": first_calls, "first_seconds": first_seconds, "cached_calls": cached_calls,
                   "cached_seconds": cached_seconds, "is_same_annotations": is_same},
    }
