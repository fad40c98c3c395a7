"""LC that says when it cannot be estimated: both sides of each rule, and what tables, deltas and gates do."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from results_fixtures import add_row

from harness.metrics.length_controlled import length_controlled_fit, length_controlled_winrate
from harness.metrics.winrate import compute_metrics
from harness.results.comparison import check_regression, compare_rows, render_check, render_comparison
from harness.results.leaderboard import leaderboard_frame, render_leaderboard
from harness.results.rows import read_rows


def annotations(preferences, *, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"id": i + 1, "instruction": f"instruction {i + 1}", "output_1": "r" * int(rng.integers(5, 200)),
             "output_2": "m" * int(rng.integers(5, 200)), "generator_1": "ref", "generator_2": "model",
             "preference": float(p)} for i, p in enumerate(preferences)]


def difficulty(n: int = 40) -> pd.Series:
    return pd.Series(np.random.default_rng(9).normal(0, 1.5, n), name="instruction_difficulty")


def soft_preferences(n: int, seed: int = 1) -> np.ndarray:
    table = difficulty().to_numpy()[:n]
    return 1 + 1 / (1 + np.exp(-(0.3 + 1.2 * table + np.random.default_rng(seed).normal(0, 0.3, n))))


def test_four_instructions_are_too_few_and_five_are_enough():
    five = annotations(soft_preferences(5))
    assert "too few annotations: 4 instructions" in length_controlled_winrate(five[:4])["lc_not_estimable"]
    # five: alpaca-eval's grouped 5-fold cross-validation splits them, and the result is an estimate
    result = length_controlled_winrate(five, instruction_difficulty=difficulty())
    assert "lc_not_estimable" not in result and result["lc_standard_error"] > 0
    assert 0 < result["length_controlled_winrate"] < 100


def test_perfect_separation_is_not_an_estimate_but_one_soft_label_is_enough():
    n = 30
    table = difficulty()
    hard = np.where(table.to_numpy()[:n] > 0, 2.0, 1.0)  # wins exactly where the difficulty is positive
    separated = length_controlled_winrate(annotations(hard), instruction_difficulty=table)
    assert separated["length_controlled_winrate"] is None
    assert separated["lc_not_estimable"].startswith("perfect separation")
    assert length_controlled_fit(annotations(hard), instruction_difficulty=table)["length_controlled_winrate"] > 0
    softened = hard.copy()
    softened[0] = 1.6
    result = length_controlled_winrate(annotations(softened), instruction_difficulty=table)
    assert "lc_not_estimable" not in result and result["length_controlled_winrate"] is not None


def test_zero_standard_error_is_not_an_estimate():
    prefs = soft_preferences(30)
    no_term = length_controlled_winrate(annotations(prefs))
    assert no_term["length_controlled_winrate"] is None and no_term["lc_standard_error"] is None
    assert "without an instruction-difficulty term" in no_term["lc_not_estimable"]
    with_term = length_controlled_winrate(annotations(prefs), instruction_difficulty=difficulty())
    assert with_term["lc_standard_error"] > 0 and "lc_not_estimable" not in with_term
    # preferences that say nothing: L1 keeps no weight, every prediction is 0.5 (the demo's 50.00 +- 0.00)
    flat = length_controlled_winrate(annotations(np.full(30, 1.5)), instruction_difficulty=difficulty())
    assert "every GLM weight is 0" in flat["lc_not_estimable"]


def test_metrics_record_why_and_keep_the_win_rate():
    result = compute_metrics(annotations(soft_preferences(4)))
    assert result["win_rate"] is not None and result["length_controlled_winrate"] is None
    assert result["lc_not_estimable"].startswith("too few annotations")


DEGENERATE = {"length_controlled_winrate": None, "lc_standard_error": None,
              "lc_not_estimable": "zero standard error: every GLM weight is 0 (LC is 50 by construction)"}


def _rows(tmp_path, run_lc):
    """A baseline with an estimable LC in en and es, and a run whose es LC is ``run_lc`` or degenerate."""
    add_row(tmp_path, "base", {"en": (50.0, 40.0), "es": (50.0, 40.0)}, label="base")
    folder = add_row(tmp_path, "run", {"en": (51.0, 41.0), "es": (50.5, run_lc)}, label="run")
    if run_lc is None:
        path = Path(folder) / "es" / "metrics.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **DEGENERATE}))
    return {r.row_id: r for r in read_rows(tmp_path)}


def test_check_gates_on_wr_when_lc_is_not_estimable_and_on_lc_otherwise(tmp_path):
    rows = _rows(tmp_path / "degenerate", None)
    result = check_regression(rows["run"], rows["base"], tolerance=1.0)
    assert result.passed and result.table.attrs["metric"] == "wr"
    assert "run es" in result.table.attrs["lc_not_estimable"]
    assert "gated on WR because LC is not estimable" in str(render_check(result).caption)
    estimable = _rows(tmp_path / "estimable", 30.0)
    regressed = check_regression(estimable["run"], estimable["base"], tolerance=1.0)
    assert not regressed.passed and regressed.table.attrs["metric"] == "lc"
    assert any("LC 30.00 < baseline 40.00" in f for f in regressed.failures)


def test_no_lc_delta_from_a_degenerate_fit_and_the_table_says_why(tmp_path):
    rows = _rows(tmp_path, None)
    frame = compare_rows(rows["base"], rows["run"]).set_index("lang")
    assert frame.at["en", "delta_lc"] == pytest.approx(1.0)
    assert math.isnan(frame.at["es", "delta_lc"]) and math.isnan(frame.at["avg", "delta_lc"])
    assert "B es" in frame.attrs["lc_not_estimable"]
    assert "LC not estimable" in str(render_comparison(frame.reset_index()).caption)


def test_leaderboard_prints_a_dash_with_a_footnote_and_ranks_nothing_by_it(tmp_path):
    rows = _rows(tmp_path, None)
    frame = leaderboard_frame(list(rows.values()), metric="lc").set_index("row_id")
    assert math.isnan(frame.at["run", "es_lc"]) and math.isnan(frame.at["run", "avg_lc"])
    assert pd.isna(frame.at["run", "rank"]) and frame.at["base", "rank"] == 1
    table, = render_leaderboard(frame.reset_index(), metric="lc")
    assert "† LC not estimable" in str(table.caption) and "zero standard error: every GLM weight is 0 (LC is 50 by construction) (run es)" in str(table.caption)
    cells = [str(cell) for column in table.columns for cell in column._cells]
    assert "—†" in cells
