"""How far a judge agrees with GPT-4 Turbo, on AlpacaEval 2's published annotations.

AlpacaEval 2 published, per model, GPT-4 Turbo's (``gpt-4-1106-preview``, weighted annotator)
preferences between the model's outputs and the reference ``gpt4_1106_preview`` on the 805 English
instructions. The judge under test reads the same pairs, shown in the same order (AlpacaEval's seed 0),
and we report:

- ``agreement_clear``: on *clear* pairs (GPT-4 Turbo's preference < 1.1 or > 1.9), the share where the
  judge picks the same side of 1.5 (a judge answer of exactly 1.5 counts one half);
- ``agreement_all``: the same on all pairs where GPT-4 Turbo is not exactly 1.5;
- ``spearman``: the rank correlation between the models' win rates by the judge and by GPT-4 Turbo
  on the same pairs (coarse with few models: with 2 it can only be -1 or 1).

Chance is 0.5 for both agreements. Answers are cached (``--run-dir``), so an interrupted measurement
resumes; ``seconds_this_run`` and ``judge_calls_this_run`` cover the last invocation only. The same
``n`` instructions (a seeded sample of those all models share) are used for every model.
Annotations come from ``../shared/data/alpaca_eval_annotations`` here; users get AlpacaEval's own from
``https://github.com/tatsu-lab/alpaca_eval/tree/main/results/<model>/weighted_alpaca_eval_gpt4_turbo/annotations.json``
into a folder of ``<model>.json`` files (``--annotations-dir``).

Example::

    from harness.judges.loading import load_judge
    from harness.judges.agreement import measure_agreement
    judge = load_judge("local_hf_logprob", model="tiny-random-llama")
    print(measure_agreement(judge, "../shared/data/alpaca_eval_annotations", n=3, models=["vicuna-7b", "phi-2"],
                            cache_path="/tmp/judge_cache.jsonl"))
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any, Sequence

from harness.evaluation.judging import annotate
from harness.judges.base import Judge
from xlpref.errors import InputError
from xlpref.jsonio import read_json

#: GPT-4 Turbo preferences at most this far from 1 or 2 make a "clear" pair.
CLEAR_MARGIN = 0.1
REFERENCE_JUDGE = "weighted_alpaca_eval_gpt4_turbo (gpt-4-1106-preview), AlpacaEval 2's published annotations"
DEMO_NOTE = ("demo judge: these numbers show that the agreement measurement runs, not that the judge is good; "
             "chance level is 0.5")


def load_reference_annotations(folder: str | Path, models: Sequence[str] | None = None) -> dict[str, list[dict]]:
    """``{model: annotations}`` from ``folder/<model>.json`` (all files when ``models`` is None)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("annotations folder not found; expected AlpacaEval 2 annotations as <model>.json (get "
                         "them from github.com/tatsu-lab/alpaca_eval, results/<model>/weighted_alpaca_eval_gpt4_turbo/"
                         "annotations.json) and pass --annotations-dir", path=folder)
    names = list(models) if models else sorted(p.stem for p in folder.glob("*.json"))
    if not names:
        raise InputError("no <model>.json annotation files", path=folder)
    out = {}
    for name in names:
        path = folder / f"{name}.json"
        if not path.is_file():
            available = sorted(p.stem for p in folder.glob("*.json"))
            raise InputError(f"no annotations for model {name!r}; expected one of {available}", path=path)
        records = read_json(path)
        if not isinstance(records, list):
            raise InputError(f"expected a JSON list of annotations, found {type(records).__name__}", path=path)
        for index, record in enumerate(records):
            for field in ("instruction", "output_1", "output_2", "preference"):
                if not isinstance(record, dict) or field not in record:
                    raise InputError("missing field; expected AlpacaEval annotations", path=path, record=index,
                                     field=field)
        out[name] = [r for r in records if isinstance(r["preference"], (int, float)) and math.isfinite(r["preference"])]
    return out


def _side(preference: float) -> float:
    return 0.0 if preference == 1.5 else math.copysign(1.0, preference - 1.5)


def _agreement(pairs: list[tuple[float, float]]) -> float | None:
    """Share of (reference, judge) preferences on the same side of 1.5; a judge tie counts one half."""
    if not pairs:
        return None
    scores = [0.5 if _side(judge) == 0 else float(_side(judge) == _side(ref)) for ref, judge in pairs]
    return sum(scores) / len(scores)


def measure_agreement(judge: Judge, annotations_dir: str | Path, *, n: int | None = 40,
                      models: Sequence[str] | None = None, seed: int = 42, cache_path: str | Path | None = None,
                      progress: bool = True) -> dict[str, Any]:
    """Agreement of ``judge`` with GPT-4 Turbo on ``n`` shared instructions per model (all when None)."""
    from scipy.stats import spearmanr

    start = time.perf_counter()
    reference = load_reference_annotations(annotations_dir, models)
    shared = set.intersection(*({r["instruction"] for r in recs} for recs in reference.values()))
    order = sorted(shared)
    chosen = order if n is None or n >= len(order) else sorted(random.Random(seed).sample(order, n))
    chosen_set = set(chosen)
    calls_before = dict(judge.counters)
    per_model, clear, everything = [], [], []
    for model, records in reference.items():
        records = [r for r in records if r["instruction"] in chosen_set]
        ids = {r["instruction"]: i for i, r in enumerate(records)}
        model_outputs = [{"instruction": r["instruction"], "output": r["output_2"], "generator": model,
                          "id": ids[r["instruction"]]} for r in records]
        references = [{"instruction": r["instruction"], "output": r["output_1"],
                       "generator": r.get("generator_1", "gpt4_1106_preview"), "id": ids[r["instruction"]]}
                      for r in records]
        annotations = annotate(model_outputs, references, judge, cache_path=cache_path, seed=0, progress=progress)
        judged = {a["id"]: a["preference"] for a in annotations}
        pairs = [(float(r["preference"]), judged[ids[r["instruction"]]]) for r in records
                 if ids[r["instruction"]] in judged]
        everything += [p for p in pairs if p[0] != 1.5]
        clear += [p for p in pairs if abs(p[0] - 1.5) > 0.5 - CLEAR_MARGIN]
        per_model.append({
            "model": model, "n": len(pairs), "n_unparsed": len(records) - len(pairs),
            "win_rate_judge": 100 * sum(j - 1 for _, j in pairs) / len(pairs) if pairs else None,
            "win_rate_gpt4_turbo": 100 * sum(r - 1 for r, _ in pairs) / len(pairs) if pairs else None,
        })
    rated = [m for m in per_model if m["win_rate_judge"] is not None]
    rho = None
    judge_rates, gpt4_rates = [m["win_rate_judge"] for m in rated], [m["win_rate_gpt4_turbo"] for m in rated]
    if len(rated) >= 2 and len(set(judge_rates)) > 1 and len(set(gpt4_rates)) > 1:  # else undefined
        rho = float(spearmanr(judge_rates, gpt4_rates).statistic)
    result = {
        "judge": judge.name, "config_hash": judge.config_hash, "is_demo": judge.is_demo,
        "judge_description": judge.description, "reference_judge": REFERENCE_JUDGE,
        "agreement_clear": _agreement(clear), "n_clear": len(clear),
        "clear_definition": f"GPT-4 Turbo preference < {1 + CLEAR_MARGIN} or > {2 - CLEAR_MARGIN}",
        "agreement_all": _agreement(everything), "n_all": len(everything),
        "all_definition": "every pair where GPT-4 Turbo's preference is not exactly 1.5; same side of 1.5",
        "judge_ties_count": 0.5, "chance": 0.5,
        "spearman": rho, "n_models": len(rated), "n_per_model": len(chosen), "seed": seed, "models": per_model,
        # This invocation only: answers cached by an earlier (interrupted) run cost nothing here.
        "seconds_this_run": round(time.perf_counter() - start, 1),
        "judge_calls_this_run": {k: judge.counters[k] - calls_before.get(k, 0) for k in judge.counters},
    }
    if judge.is_demo:
        result["note"] = DEMO_NOTE
    return result
