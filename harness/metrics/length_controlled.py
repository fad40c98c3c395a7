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
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd

from harness.metrics.annotations import Annotations, annotations_frame, instruction_index
from xlpref.errors import InputError

log = logging.getLogger(__name__)

#: alpaca-eval's weight, in total, of the gamed baselines' rows (``GLM_INFO["length_controlled_v1"]``).
GAMED_BASELINE_LAMBDA = 0.2
#: Cross-validation folds of alpaca-eval's fit; fewer annotations than this cannot be fitted.
N_SPLITS = 5


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
    """AlpacaEval 2's length-controlled win rate of output_2 against output_1, fitted offline.

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
