"""Metrics: win rates against alpaca-eval and the official leaderboard, LC against alpaca-eval's own
``get_length_controlled_winrate`` (its downloads served from local files) and a hand-checked GLM,
the paired bootstrap, the instruction-difficulty fit, and the ``xlpref metrics`` / ``difficulty`` CLI.

Budget: under 60 s in all on 2 cores (about 15 s here).
"""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import pytest

from harness.cli import main
from harness.metrics.annotations import load_annotations, preferences_by_id
from harness.metrics.bootstrap import paired_bootstrap, paired_bootstrap_average
from harness.metrics.difficulty import fit_instruction_difficulty, load_instruction_difficulty
from harness.metrics.length_controlled import length_controlled_fit, length_controlled_winrate
from harness.metrics.winrate import WINRATE_COLUMNS, compute_metrics, winrate_metrics
from xlpref.data import default_data_dir
from xlpref.errors import InputError

SHARED = default_data_dir()
SHARED_ANNOTATIONS = SHARED / "alpaca_eval_annotations"
OFFICIAL_DIFFICULTY = SHARED / "alpaca_eval_lc" / "instruction_difficulty.csv"


def _logistic(x):
    return 1 / (1 + np.exp(-x))


def synthetic_annotations(preferences, len_1, len_2, *, generator="model", ids=None) -> list[dict]:
    """AlpacaEval records with outputs of the given lengths (characters)."""
    records = [{"instruction": f"instruction {i}", "output_1": "r" * int(l1), "output_2": "m" * int(l2),
                "generator_1": "reference", "generator_2": generator, "annotator": "judge",
                "preference": float(p)} for i, (p, l1, l2) in enumerate(zip(preferences, len_1, len_2))]
    if ids is not None:
        for record, i in zip(records, ids):
            record["id"] = int(i)
    return records


def glm_annotations(n: int, *, intercept: float, slope: float, seed: int, difficulty=None, weight: float = 0.0):
    """Preferences equal to the GLM's probabilities: P = logistic(intercept + slope tanh(std_delta_len) + weight d)."""
    rng = np.random.default_rng(seed)
    len_1 = rng.integers(200, 2000, n)
    len_2 = len_1 + rng.integers(-300, 1500, n)  # the model is mostly longer
    delta = (len_1 - len_2).astype(float)
    logit = intercept + slope * np.tanh(delta / delta.std(ddof=1))
    if difficulty is not None:
        logit = logit + weight * difficulty
    return synthetic_annotations(1 + _logistic(logit), len_1, len_2)


@pytest.fixture(scope="module")
def shared_annotations() -> Path:
    if not SHARED_ANNOTATIONS.is_dir() or not OFFICIAL_DIFFICULTY.is_file():
        pytest.skip(f"shared AlpacaEval annotations not found at {SHARED_ANNOTATIONS} (set XLPREF_DATA_DIR)")
    return SHARED_ANNOTATIONS


# -- win rate -----------------------------------------------------------------------------------

def test_winrate_metrics_equal_alpaca_eval_get_winrate_on_random_annotations():
    from alpaca_eval.metrics import get_winrate

    rng = np.random.default_rng(0)
    preferences = np.concatenate([rng.uniform(1, 2, 150), [1.0] * 20, [2.0] * 25, [1.5] * 5])
    annotations = synthetic_annotations(preferences, rng.integers(1, 900, 200), rng.integers(1, 900, 200))
    ours = winrate_metrics(annotations)
    theirs = get_winrate(annotations)
    assert list(ours) == list(WINRATE_COLUMNS)
    for name, value in theirs.items():
        assert ours[name] == pytest.approx(value, abs=1e-12), name
    # AlpacaEval's definitions, by hand
    assert ours["win_rate"] == pytest.approx((preferences.mean() - 1) * 100)
    assert ours["n_draws"] == 5 and ours["n_total"] == 200
    assert ours["n_wins"] == int((preferences > 1.5).sum()) and ours["n_wins_base"] == int((preferences < 1.5).sum())
    assert ours["discrete_win_rate"] == pytest.approx((ours["n_wins"] + ours["n_draws"] / 2) / 200 * 100)
    assert ours["avg_length"] == int(np.mean([len(a["output_2"]) for a in annotations]))


def test_win_rate_equals_the_official_leaderboard_for_every_shared_model(shared_annotations):
    from benchmarks.x_alpacaeval.validate_metrics import official_leaderboard

    leaderboard = official_leaderboard()
    paths = sorted(shared_annotations.glob("*.json"))
    assert len(paths) >= 20
    for path in paths:
        ours = winrate_metrics(load_annotations(path))
        official = leaderboard.loc[path.stem]
        assert abs(ours["win_rate"] - official["win_rate"]) < 0.01, path.stem
        assert abs(ours["discrete_win_rate"] - official["discrete_win_rate"]) < 0.01, path.stem
        assert abs(ours["standard_error"] - official["standard_error"]) < 0.01, path.stem
        for name in ("n_wins", "n_wins_base", "n_draws", "n_total"):
            assert ours[name] == official[name], (path.stem, name)


# -- length-controlled win rate -----------------------------------------------------------------

def _served_df_gamed(tmp_path: Path, difficulty: pd.Series, gamed: list[dict] | None) -> Path:
    """A local stand-in for the hub's df_gamed.csv: difficulty by index, and the gamed rows if any."""
    from harness.metrics.length_controlled import _gamed_features

    if gamed is None:
        table = pd.DataFrame({"model": "none", "index": difficulty.index, "instruction_difficulty": difficulty.values})
    else:
        table = pd.concat([part.assign(index=np.arange(len(part)), model=f"gamed{i}")
                           for i, part in enumerate(_gamed_features(gamed, difficulty))])
    path = tmp_path / "df_gamed.csv"
    table.to_csv(path, index=False)
    return path


@pytest.mark.filterwarnings("ignore::FutureWarning")  # scikit-learn about alpaca-eval's arguments
@pytest.mark.parametrize("model", ["vicuna-7b", "claude-2.1"])
def test_lc_equals_alpaca_eval_get_length_controlled_winrate_with_local_downloads(shared_annotations, tmp_path, model):
    from alpaca_eval.metrics import glm_winrate

    difficulty = load_instruction_difficulty(OFFICIAL_DIFFICULTY)
    annotations = json.loads((shared_annotations / f"{model}.json").read_text())
    # two real models' annotations stand in for the two gamed baselines (their annotations are not offline)
    gamed = [dict(r, generator_2=name) for name in ("gemma-7b-it", "wizardlm-13b")
             for r in json.loads((shared_annotations / f"{name}.json").read_text())]
    cases = [("length_controlled_noreg", difficulty, None), ("length_controlled_v1", difficulty, gamed),
             ("length_controlled_minimal", None, None)]
    for glm_name, table, gamed_annotations in cases:
        served = _served_df_gamed(tmp_path, difficulty, gamed_annotations)
        with mock.patch.object(glm_winrate, "hf_hub_download", return_value=str(served)) as download:
            theirs = glm_winrate.get_length_controlled_winrate(annotations, glm_name=glm_name, save_weights_dir=None,
                                                               is_warn_extreme_changes=False)
        assert download.called
        ours = compute_metrics(annotations, instruction_difficulty=table, gamed_annotations=gamed_annotations)
        fit = length_controlled_fit(annotations, instruction_difficulty=table, gamed_annotations=gamed_annotations)
        assert fit["length_controlled_winrate"] == pytest.approx(theirs["length_controlled_winrate"], abs=1e-6)
        assert fit["lc_standard_error"] == pytest.approx(theirs["lc_standard_error"], abs=1e-6)
        if table is None:  # no per-instruction term: alpaca-eval's SE is 0, so no estimate is reported
            assert theirs["lc_standard_error"] == pytest.approx(0, abs=1e-9)
            assert ours["length_controlled_winrate"] is None
            assert "zero standard error" in ours["lc_not_estimable"]
        else:
            assert ours["length_controlled_winrate"] == fit["length_controlled_winrate"]
            assert "lc_not_estimable" not in ours
        assert ours["lc_gamed_regularisation"] is (gamed_annotations is not None)
        assert ours["lc_difficulty"] == ("official-csv" if table is not None else "none")
        for name in ("win_rate", "standard_error", "n_wins", "n_total", "discrete_win_rate"):
            assert ours[name] == pytest.approx(theirs[name]), name


def test_lc_recovers_a_hand_checked_glm_without_difficulty():
    # P(model wins) = logistic(logit(0.30) - 1.5 tanh(std_delta_len)): at equal lengths it wins 30% of the time
    annotations = glm_annotations(805, intercept=np.log(0.3 / 0.7), slope=-1.5, seed=1)
    result = length_controlled_fit(annotations)
    win_rate = winrate_metrics(annotations)["win_rate"]
    assert win_rate > 40  # the longer model's raw win rate is inflated by length
    assert result["length_controlled_winrate"] == pytest.approx(30.0, abs=0.05)
    assert result["lc_glm_weights"]["np.tanh(std_delta_len)"] == pytest.approx(-1.5, abs=0.01)
    assert result["lc_difficulty"] == "none" and result["lc_gamed_regularisation"] is False


def test_lc_recovers_a_hand_checked_glm_with_difficulty():
    difficulty = pd.Series(np.random.default_rng(2).normal(0, 1, 805), name="instruction_difficulty")
    annotations = glm_annotations(805, intercept=-1.0, slope=-1.2, seed=3, difficulty=difficulty.to_numpy(),
                                  weight=0.8)
    expected = _logistic(-1.0 + 0.8 * difficulty.to_numpy()).mean() * 100  # predicted at zero length difference
    result = length_controlled_winrate(annotations, instruction_difficulty=difficulty)
    assert result["length_controlled_winrate"] == pytest.approx(expected, abs=0.05)
    assert result["lc_difficulty"] == "official-csv"


def test_lc_equals_win_rate_when_preference_ignores_length():
    rng = np.random.default_rng(4)
    annotations = synthetic_annotations(np.full(300, 1.7), rng.integers(10, 900, 300), rng.integers(10, 900, 300))
    assert length_controlled_fit(annotations)["length_controlled_winrate"] == pytest.approx(70.0, abs=0.01)


def test_lc_uses_ids_for_the_difficulty_index_and_rejects_unknown_ones():
    difficulty = pd.Series(np.random.default_rng(5).normal(0, 1, 40))
    annotations = glm_annotations(30, intercept=-0.5, slope=-1.0, seed=5, difficulty=difficulty.to_numpy()[10:],
                                  weight=1.0)
    by_position = length_controlled_winrate(annotations, instruction_difficulty=difficulty.iloc[10:].reset_index(
        drop=True))
    with_ids = [dict(record, id=11 + i) for i, record in enumerate(annotations)]  # ids 11..40 -> rows 10..39
    by_id = length_controlled_winrate(with_ids, instruction_difficulty=difficulty)
    assert by_id["length_controlled_winrate"] == pytest.approx(by_position["length_controlled_winrate"], abs=1e-9)
    assert by_id["lc_glm_weights"]["instruction_difficulty"] > 0.5  # the term carries signal
    with_ids[0]["id"] = 41  # index 40: not in a 40-row table
    with pytest.raises(InputError, match="not in the difficulty table"):
        length_controlled_winrate(with_ids, instruction_difficulty=difficulty)
    assert "at least 5" in length_controlled_winrate(annotations[:4])["lc_not_estimable"]


def test_load_instruction_difficulty_labels_and_errors(tmp_path):
    good = tmp_path / "d.csv"
    good.write_text("index,instruction_difficulty\n1,0.5\n0,-0.25\n")
    table = load_instruction_difficulty(good)
    assert table.to_dict() == {0: -0.25, 1: 0.5} and table.attrs["lc_difficulty"] == "official-csv"
    for name, text in {"header": "i,d\n0,1\n", "nan": "index,instruction_difficulty\n0,nan\n",
                       "dup": "index,instruction_difficulty\n0,1\n0,2\n",
                       "word": "index,instruction_difficulty\nx,1\n"}.items():
        bad = tmp_path / f"{name}.csv"
        bad.write_text(text)
        with pytest.raises(InputError):
            load_instruction_difficulty(bad)
    with pytest.raises(InputError, match="file not found"):
        load_instruction_difficulty(tmp_path / "absent.csv")


def test_fit_instruction_difficulty_recovers_per_instruction_effects():
    rng = np.random.default_rng(6)
    n_instructions = 60
    true = rng.normal(0, 1.5, n_instructions)
    by_model = {}
    for m, bias in enumerate([-1.5, -0.5, 0.0, 1.0, 0.5, -1.0]):
        len_1 = rng.integers(200, 2000, n_instructions)
        len_2 = len_1 + rng.integers(-800, 800, n_instructions)
        delta = (len_1 - len_2).astype(float)
        logit = bias - 1.0 * np.tanh(delta / delta.std(ddof=1)) + true
        by_model[f"m{m}"] = synthetic_annotations(1 + _logistic(logit), len_1, len_2, generator=f"m{m}")
    fitted = fit_instruction_difficulty(by_model)
    assert list(fitted.index) == list(range(n_instructions)) and fitted.loc[0] == 0.0
    # identified up to the reference level (instruction 0): compare effects relative to it
    assert np.corrcoef(fitted.to_numpy(), true - true[0])[0, 1] > 0.95
    with pytest.raises(InputError, match="at least two models"):
        fit_instruction_difficulty({"m0": by_model["m0"]})


# -- annotations and preferences ----------------------------------------------------------------

def test_bad_annotations_raise_input_error_naming_the_record():
    base = {"output_1": "a", "output_2": "b", "preference": 1.5}
    cases = {"preference": [base, dict(base, preference=2.5)], "output_2": [base, {"output_1": "a", "preference": 1}],
             "id": [dict(base, id=1), dict(base, id=1)]}
    for field, records in cases.items():
        with pytest.raises(InputError, match=f"record 1: field '{field}'"):
            compute_metrics(records)
    for value in (float("nan"), None, "2", True, 0):
        with pytest.raises(InputError, match="preference"):
            winrate_metrics([dict(base, preference=value)])


def test_preferences_by_id_uses_ids_else_positions():
    records = [{"preference": 1.2, "id": 7}, {"preference": 1.9, "id": 3}]
    assert preferences_by_id(records) == {7: 1.2, 3: 1.9}
    assert preferences_by_id([{"preference": 1.2}, {"preference": 2.0}]) == {1: 1.2, 2: 2.0}


# -- paired bootstrap ---------------------------------------------------------------------------

def test_paired_bootstrap_identical_inputs_give_zero_and_no_significance():
    prefs = dict(enumerate(np.random.default_rng(7).uniform(1, 2, 100)))
    result = paired_bootstrap(prefs, prefs, n_boot=500)
    assert result["delta"] == 0 and result["ci_low"] <= 0 <= result["ci_high"]
    assert result["p_value"] == 1.0 and result["is_significant"] is False and result["n"] == 100


def test_paired_bootstrap_detects_a_clear_difference_and_is_deterministic():
    rng = np.random.default_rng(8)
    a = dict(enumerate(rng.uniform(1.0, 1.5, 200)))
    b = {k: min(2.0, v + 0.2 + rng.normal(0, 0.05)) for k, v in a.items()}
    b[1000] = 2.0  # only in b: ignored
    result = paired_bootstrap(a, b, n_boot=1000, seed=3)
    expected = np.mean([b[k] - a[k] for k in a]) * 100
    assert result["delta"] == pytest.approx(expected)
    assert result["is_significant"] and result["ci_low"] > 15 and result["p_value"] < 0.01
    assert result["n"] == 200 and result["n_only_b"] == 1 and result["n_only_a"] == 0
    assert paired_bootstrap(a, b, n_boot=1000, seed=3) == result
    assert paired_bootstrap(a, b, n_boot=1000, seed=4)["ci_low"] != result["ci_low"]


def test_paired_bootstrap_average_over_languages():
    rng = np.random.default_rng(9)
    a = {lang: dict(enumerate(rng.uniform(1, 2, 80), start=1)) for lang in ("en", "es", "de")}
    b = {lang: {k: float(np.clip(v + shift + rng.normal(0, 0.1), 1, 2)) for k, v in a[lang].items()}
         for lang, shift in (("en", 0.0), ("es", 0.1), ("de", 0.2))}
    result = paired_bootstrap_average(a, b, n_boot=800, seed=1)
    per_language = result["per_language"]
    assert result["languages"] == ["de", "en", "es"] and result["n"] == 240
    assert result["delta"] == pytest.approx(np.mean([per_language[lang]["delta"] for lang in per_language]))
    assert result["ci_low"] < result["delta"] < result["ci_high"]
    # the same id set in every language: each language's result is paired_bootstrap's with the same seed
    alone = paired_bootstrap(a["es"], b["es"], n_boot=800, seed=1)
    assert {k: per_language["es"][k] for k in ("delta", "ci_low", "ci_high", "p_value")} == \
        {k: alone[k] for k in ("delta", "ci_low", "ci_high", "p_value")}
    with pytest.raises(InputError, match="languages differ"):
        paired_bootstrap_average(a, {"en": b["en"]})


# -- CLI ----------------------------------------------------------------------------------------

def _run(args: list[str]) -> int:
    """``xlpref ARGS`` in-process; the exit code (0 when main returns)."""
    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def _write(path: Path, records) -> Path:
    path.write_text(json.dumps(records))
    return path


def test_cli_metrics_json_prints_one_object_with_alpacaeval_columns(tmp_path, capsys):
    annotations = _write(tmp_path / "a.json", glm_annotations(100, intercept=-0.5, slope=-1.0, seed=10))
    assert _run(["metrics", str(annotations), "--no-instruction-difficulty", "--json"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out)  # exactly one JSON object, nothing else
    for name in (*WINRATE_COLUMNS, "length_controlled_winrate", "lc_standard_error", "lc_difficulty",
                 "lc_gamed_regularisation", "annotator", "reference"):
        assert name in result, name
    assert result["lc_difficulty"] == "none" and result["lc_gamed_regularisation"] is False
    assert result["reference"] == "reference" and result["annotator"] == "judge"
    assert result["length_controlled_winrate"] is None and "zero standard error" in result["lc_not_estimable"]


def test_cli_difficulty_then_metrics_with_the_fitted_table(tmp_path, capsys):
    folder = tmp_path / "annotations"
    folder.mkdir()
    rng = np.random.default_rng(11)
    for m in range(3):
        _write(folder / f"m{m}.json", synthetic_annotations(rng.uniform(1, 2, 30), rng.integers(1, 500, 30),
                                                            rng.integers(1, 500, 30), generator=f"m{m}"))
    table = tmp_path / "difficulty.csv"
    assert _run(["difficulty", str(folder), "-o", str(table)]) == 0
    assert table.read_text().splitlines()[0] == "index,instruction_difficulty"
    assert len(load_instruction_difficulty(table)) == 30
    assert json.loads((tmp_path / "difficulty.csv.provenance.json").read_text())["models"] == ["m0", "m1", "m2"]
    capsys.readouterr()
    assert _run(["metrics", str(folder / "m0.json"), "--instruction-difficulty", str(table), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["lc_difficulty"] == "fitted"


@pytest.mark.parametrize("content", [None, "[{", json.dumps([{"output_1": "a", "output_2": "b", "preference": 3}]),
                                     '[{"output_1": "a", "output_2": "b", "preference": NaN}]',
                                     json.dumps([{"output_1": "a", "preference": 1.5}]),
                                     json.dumps({"preference": 1.5})])
def test_cli_metrics_bad_input_exits_2(tmp_path, capsys, content):
    path = tmp_path / "annotations.json"
    if content is not None:
        path.write_text(content)
    assert _run(["metrics", str(path), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "error:" in captured.err
