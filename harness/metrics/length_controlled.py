"""AlpacaEval annotations in, AlpacaEval 2's length-controlled win rate (LC) out.

Why by hand: alpaca-eval's ``get_length_controlled_winrate`` downloads its inputs at run time
(``df_gamed.csv`` from the hub: the gamed baselines' annotations and the instruction-difficulty
table). Here the same features are built from local files and the fit is alpaca-eval's own
(``make_dmatrix_for_model``, ``fit_LogisticRegressionCV``, ``GLM_INFO`` formulas), so the numbers are
alpaca-eval's; ``tests/test_metrics.py`` checks equality with ``get_length_controlled_winrate``
itself served local files in place of its downloads.

The GLM (``length_controlled_v1``), fitted per model on its annotations against the reference::

    logit P(model wins) = a * tanh(std_delta_len) + b * instruction_difficulty + c * not_gamed_baseline

``std_delta_len = (len(output_1) - len(output_2)) / std`` over this model's annotations (output_1 is
the reference, output_2 the model; characters). LC = 100 * mean over instructions of the prediction
at ``std_delta_len = 0``; ``lc_standard_error`` = 100 * sem of those predictions. Row index for the
difficulty = position in the 805-instruction order: ``id - 1`` when records carry an X-AlpacaEval
``id``, else the record's position (what alpaca-eval does). Rows of gamed baselines (the reference
made verbose / concise, ``not_gamed_baseline = 0``) regularise the fit with total weight 0.2 when
given; without them there is no regularisation (``length_controlled_noreg``), and the output says so.

When LC cannot be estimated, ``length_controlled_winrate`` and ``lc_standard_error`` are ``None`` and
``lc_not_estimable`` says why (:func:`lc_degeneracy`); tables print a dash, comparisons take no delta
from it, leaderboards rank nothing by it and ``xlpref check`` does not gate on it. Degenerate, from
alpaca-eval's own fit (``fit_LogisticRegressionCV``: ``GroupKFold(5)``, L1, soft labels):

- fewer than 5 distinct instructions: alpaca-eval's grouped 5-fold cross-validation cannot split them
  (it raises); 5 is enough to fit;
- perfect separation: every preference is 1 or 2 (hard labels) and a plane in the GLM's features
  splits wins from losses: the likelihood has no maximum, the value is set by the penalty grid;
- a zero standard error: every instruction gets the same prediction, so the number carries no
  spread to report: all weights zero (L1 kept nothing: LC is 50 by construction), or a formula
  without the per-instruction difficulty term (``lc_difficulty: "none"``), whose prediction at
  equal lengths is one constant (alpaca-eval reports its SE as 0; a fit of 8 annotations gave
  84.95 +- 0.00 next to a 57.85 win rate).

Example::

    from xlpref.jsonio import read_json
    from harness.metrics.difficulty import load_instruction_difficulty
    from harness.metrics.length_controlled import length_controlled_winrate
    difficulty = load_instruction_difficulty("../shared/data/alpaca_eval_lc/instruction_difficulty.csv")
    print(length_controlled_winrate(read_json("annotations.json"), instruction_difficulty=difficulty))
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd

from harness.metrics.annotations import Annotations, annotations_frame, instruction_index
from xlpref.errors import InputError

log = logging.getLogger(__name__)

#: alpaca-eval's weight, in total, of the gamed baselines' rows (``GLM_INFO["length_controlled_v1"]``).
GAMED_BASELINE_LAMBDA = 0.2
#: Cross-validation folds of alpaca-eval's fit; fewer distinct instructions than this cannot be fitted.
N_SPLITS = 5
#: An LC standard error (percent) at or below this is zero: equal predictions leave only rounding (1e-16).
ZERO_STANDARD_ERROR = 1e-9


@contextlib.contextmanager
def quiet_sklearn() -> Iterator[None]:
    """Silence scikit-learn's FutureWarnings about alpaca-eval's (still valid) LogisticRegressionCV arguments."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


# -- the GLM ------------------------------------------------------------------------------------

def glm_features(frame: pd.DataFrame, difficulty: pd.Series | None) -> pd.DataFrame:
    """alpaca-eval's ``_get_featurized_data`` step 2, from a validated frame of one model."""
    delta_len = frame["output_1"].str.len() - frame["output_2"].str.len()
    std = delta_len.std()
    features = pd.DataFrame({
        "preference": frame["preference"].to_numpy() - 1,  # in [0, 1]: P(output_2 wins)
        # equal lengths everywhere: no length signal, tanh(0) = 0 (alpaca-eval would divide by zero)
        "std_delta_len": (delta_len / std).to_numpy() if std > 0 else np.zeros(len(frame)),
        "not_gamed_baseline": True,
    })
    if difficulty is not None:
        index = instruction_index(frame)
        missing = ~np.isin(index, difficulty.index)
        if missing.any():
            row = int(np.flatnonzero(missing)[0])
            raise InputError(f"instruction index {index[row]} is not in the difficulty table "
                             f"({difficulty.index.min()}..{difficulty.index.max()})", record=row)
        features["instruction_difficulty"] = difficulty.loc[index].to_numpy()
    return features


def _gamed_features(gamed: Annotations, difficulty: pd.Series | None) -> list[pd.DataFrame]:
    frame = annotations_frame(gamed, path="gamed annotations")
    groups = frame.groupby("generator_2", sort=False) if "generator_2" in frame.columns else [("gamed", frame)]
    return [glm_features(part.reset_index(drop=True), difficulty).assign(not_gamed_baseline=False)
            for _, part in groups]


def length_controlled_winrate(annotations: Annotations, *, instruction_difficulty: pd.Series | None = None,
                              gamed_annotations: Annotations | None = None,
                              regularize_to_baseline_lambda: float = GAMED_BASELINE_LAMBDA,
                              n_splits: int = N_SPLITS) -> dict[str, Any]:
    """LC as :func:`length_controlled_fit` computes it, or ``None`` with ``lc_not_estimable`` (the reason)
    when the fit is degenerate (see the module docstring and :func:`lc_degeneracy`)."""
    frame = annotations_frame(annotations)
    label = "none" if instruction_difficulty is None else instruction_difficulty.attrs.get("lc_difficulty",
                                                                                              "official-csv")
    base = {"lc_difficulty": label, "lc_gamed_regularisation": gamed_annotations is not None}
    n_instructions = len(np.unique(instruction_index(frame)))
    if n_instructions < n_splits:
        return {**base, "lc_glm_weights": {}, "length_controlled_winrate": None, "lc_standard_error": None,
                "lc_not_estimable": f"too few annotations: {n_instructions} instructions; the GLM's grouped "
                                    f"{n_splits}-fold cross-validation (alpaca-eval's) needs at least {n_splits}"}
    fit = length_controlled_fit(frame, instruction_difficulty=instruction_difficulty,
                                gamed_annotations=gamed_annotations,
                                regularize_to_baseline_lambda=regularize_to_baseline_lambda, n_splits=n_splits)
    reason = lc_degeneracy(fit, frame, instruction_difficulty=instruction_difficulty,
                           gamed_annotations=gamed_annotations)
    if reason is None:
        return fit
    return {**fit, "length_controlled_winrate": None, "lc_standard_error": None, "lc_not_estimable": reason}


def _is_separable(frame: pd.DataFrame, difficulty: pd.Series | None, gamed: Annotations | None) -> bool:
    """Hard labels (every preference 1 or 2) that a plane in the GLM's features splits (a linear program)."""
    from scipy.optimize import linprog

    rows = [glm_features(frame, difficulty)]
    if gamed is not None:
        rows += _gamed_features(gamed, difficulty)
    data = pd.concat(rows, axis=0)
    labels = data["preference"].to_numpy()
    if not np.isin(labels, (0.0, 1.0)).all():
        return False  # a soft label keeps the likelihood's maximum finite
    features = np.column_stack([np.tanh(data["std_delta_len"].to_numpy(dtype=float)),
                                data["not_gamed_baseline"].to_numpy(dtype=float)]
                               + ([data["instruction_difficulty"].to_numpy(dtype=float)] if difficulty is not None
                                  else []))
    signs = np.where(labels == 1.0, 1.0, -1.0)
    # feasible: some w with sign_i * (x_i . w) >= 1 for every row
    result = linprog(np.zeros(features.shape[1]), A_ub=-(signs[:, None] * features), b_ub=-np.ones(len(signs)),
                     bounds=[(None, None)] * features.shape[1], method="highs")
    return result.status == 0


def lc_degeneracy(fit: Mapping[str, Any], frame: pd.DataFrame, *, instruction_difficulty: pd.Series | None = None,
                  gamed_annotations: Annotations | None = None) -> str | None:
    """Why a fitted LC is not an estimate (perfect separation, zero standard error), or None when it is."""
    if _is_separable(frame, instruction_difficulty, gamed_annotations):
        return ("perfect separation: every preference is 1 or 2 and the GLM's features split wins from losses; "
                "the fit has no maximum")
    se = fit.get("lc_standard_error")
    if se is None or not se > ZERO_STANDARD_ERROR:
        if instruction_difficulty is None:
            return ("zero standard error: without an instruction-difficulty term every instruction gets the same "
                    "prediction (give an instruction-difficulty table)")
        weights = fit.get("lc_glm_weights") or {}
        if weights and all(w == 0 for w in weights.values()):
            return "zero standard error: every GLM weight is 0 (LC is 50 by construction, not a measurement)"
        return "zero standard error: the GLM predicts the same preference for every instruction"
    return None


def length_controlled_fit(annotations: Annotations, *, instruction_difficulty: pd.Series | None = None,
                          gamed_annotations: Annotations | None = None,
                          regularize_to_baseline_lambda: float = GAMED_BASELINE_LAMBDA,
                          n_splits: int = N_SPLITS) -> dict[str, Any]:
    """AlpacaEval 2's length-controlled win rate of output_2 against output_1, fitted offline (whatever the fit).

    Args:
        instruction_difficulty: index -> difficulty (:func:`load_instruction_difficulty`,
            :func:`fit_instruction_difficulty`); ``None`` drops the term (``lc_difficulty: "none"``).
        gamed_annotations: annotations of gamed baselines against the same reference (a
            ``generator_2`` per baseline); they regularise the fit with total weight
            ``regularize_to_baseline_lambda`` shared between the baselines (alpaca-eval: 0.2 for its
            two). ``None``: no regularisation (``lc_gamed_regularisation: false``).

    Returns:
        ``length_controlled_winrate``, ``lc_standard_error`` (percent), ``lc_difficulty``,
        ``lc_gamed_regularisation``, ``lc_glm_weights`` (the fitted coefficients).
    """
    from alpaca_eval.metrics.glm_winrate import (GLM_INFO, fit_LogisticRegressionCV, get_is_extreme_changes,
                                                 make_dmatrix_for_model)

    frame = annotations_frame(annotations)
    if len(frame) < n_splits:
        raise InputError(f"{len(frame)} annotations; the length-controlled GLM needs at least {n_splits} "
                         f"(alpaca-eval's {n_splits}-fold cross-validation)")
    label = "none" if instruction_difficulty is None else instruction_difficulty.attrs.get("lc_difficulty",
                                                                                              "official-csv")
    if instruction_difficulty is not None and "id" not in frame.columns and len(frame) != len(instruction_difficulty):
        log.warning("annotations have no id: rows are indexed by position (as alpaca-eval does), but there are %d "
                    "rows for %d difficulties; positions may not match instructions", len(frame),
                    len(instruction_difficulty))
    formula = GLM_INFO["length_controlled_v1" if instruction_difficulty is not None else
                       "length_controlled_minimal"]["formula"]
    result: dict[str, Any] = {"lc_difficulty": label, "lc_gamed_regularisation": gamed_annotations is not None}

    generators = (set(frame["generator_1"]), set(frame["generator_2"])) if {"generator_1", "generator_2"} <= set(
        frame.columns) else (None, None)
    if generators[0] is not None and len(generators[0]) == 1 and generators[0] == generators[1]:
        # the reference against itself: 0.5 by construction, as in alpaca-eval
        predicted = np.full(len(frame), 0.5)
        result["lc_glm_weights"] = {}
    else:
        model_rows = glm_features(frame, instruction_difficulty)
        test = model_rows.drop(columns="preference").assign(std_delta_len=0.0)
        if gamed_annotations is None:
            train_rows, sample_weight = model_rows, None
        else:
            gamed_parts = _gamed_features(gamed_annotations, instruction_difficulty)
            # gamed rows first, as alpaca-eval concatenates them (fold assignment follows row order)
            train_rows = pd.concat([*gamed_parts, model_rows], axis=0)
            per_gamed = regularize_to_baseline_lambda / len(gamed_parts)
            sample_weight = pd.Series(np.where(train_rows["not_gamed_baseline"], 1.0, per_gamed),
                                      index=train_rows.index)
        train, test_matrix = make_dmatrix_for_model(train_rows, test, formula=formula)
        with quiet_sklearn():
            fitted = fit_LogisticRegressionCV(train, "preference", is_ytrue_proba=True,
                                              sample_weight=sample_weight, n_splits=n_splits)
        predicted = fitted.predict_proba(test_matrix)[:, 1]
        result["lc_glm_weights"] = {name: float(w) for name, w in zip(test_matrix.columns, fitted.coef_[0])}

    result["length_controlled_winrate"] = float(predicted.mean() * 100)
    sem = pd.Series(predicted).sem() * 100
    result["lc_standard_error"] = float(sem) if math.isfinite(sem) else None
    win_rate = (frame["preference"].mean() - 1) * 100
    if get_is_extreme_changes(win_rate, result["length_controlled_winrate"]):
        log.warning("length-controlled win rate %.1f%% is very different from the raw %.1f%%: the GLM may have "
                    "failed", result["length_controlled_winrate"], win_rate)
    return result
