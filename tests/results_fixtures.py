"""Synthetic results rows for tests/test_results.py and tests/test_leaderboard.py (no model, no judge)."""

from __future__ import annotations

from pathlib import Path

from harness.results.rows import write_row

JUDGE = "demo-judge"
REFERENCE = "gpt-4-turbo-2024-04-09"


def synthetic_annotations(preferences: list[float], *, generator: str = "model") -> list[dict]:
    """AlpacaEval annotations: output_1 the reference, output_2 the model, preference 1 + P(model wins)."""
    return [{"id": i + 1, "instruction": f"instruction {i + 1}", "output_1": "reference answer",
             "output_2": "model answer " * (1 + i % 3), "generator_1": REFERENCE, "generator_2": generator,
             "preference": 1.0 + p} for i, p in enumerate(preferences)]


def synthetic_metrics(wr: float | None, lc: float | None, *, se: float | None = 1.0, n: int = 100,
                      annotator: str = JUDGE, reference: str = REFERENCE) -> dict:
    return {"win_rate": wr, "standard_error": se if wr is not None else None, "length_controlled_winrate": lc,
            "lc_standard_error": se / 2 if lc is not None and se is not None else None, "n_total": n,
            "avg_length": 500, "annotator": annotator, "reference": reference}


def add_row(results_dir: Path, row_id: str, values: dict[str, tuple], *, run: str | None = "demo",
            iteration: int | None = 0, annotator: str = JUDGE, reference: str = REFERENCE, kind: str = "ours",
            is_demo: bool = True, annotations: dict[str, list[float]] | None = None, se: float | None = 1.0,
            label: str | None = None, model: str | None = None) -> Path:
    """One row: ``values`` = {lang: (wr, lc)}; ``annotations`` = {lang: per-instruction preferences}."""
    per_lang = {lang: {"metrics": synthetic_metrics(wr, lc, se=se, annotator=annotator, reference=reference),
                       "annotations": synthetic_annotations(annotations[lang]) if annotations else None,
                       "model_outputs": None}
                for lang, (wr, lc) in values.items()}
    meta = {"row_id": row_id, "model": model or f"model-{row_id}", "run": run, "iteration": iteration,
            "label": label or row_id, "kind": kind, "annotator": annotator, "annotator_is_demo": is_demo,
            "reference": reference, "source": "tests/results_fixtures.py", "created": "2025-01-01T00:00:00+00:00"}
    return write_row(results_dir, meta, per_lang)
