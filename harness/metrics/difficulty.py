"""The per-instruction difficulty the length-controlled GLM uses: read, written, or fitted from several models.

AlpacaEval's ``length_controlled_v1`` reads a table ``index,instruction_difficulty`` (index = position
in the 805-instruction order). :func:`fit_instruction_difficulty` derives such a table from several
models' annotations, as AlpacaEval derived its own; a fitted table carries a ``.provenance.json``
beside it, and is labelled ``"fitted"`` (else ``"official-csv"``) when read back.

Example::

    from harness.metrics.difficulty import load_instruction_difficulty
    difficulty = load_instruction_difficulty("../shared/data/alpaca_eval_lc/instruction_difficulty.csv")
    print(difficulty.attrs["lc_difficulty"], difficulty.head())
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.metrics.annotations import Annotations, annotations_frame, instruction_index
from harness.metrics.length_controlled import N_SPLITS, glm_features, quiet_sklearn
from xlpref.errors import InputError
from xlpref.jsonio import write_json_atomic, write_text_atomic


def load_instruction_difficulty(csv_path: str | Path) -> pd.Series:
    """Read ``index,instruction_difficulty`` (index = position in the instruction order).

    Labelled ``"fitted"`` when ``xlpref difficulty`` wrote it (its ``.provenance.json`` lies beside
    it), else ``"official-csv"`` (the table AlpacaEval's ``length_controlled_v1`` uses).

    Raises:
        InputError: missing file, other columns, a non-integer or duplicate index, a non-finite value.
    """
    path = Path(csv_path)
    if not path.is_file():
        raise InputError("file not found; expected a CSV with columns index,instruction_difficulty", path=path)
    try:
        table = pd.read_csv(path)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(f"not a readable CSV ({exc})", path=path) from exc
    if list(table.columns) != ["index", "instruction_difficulty"]:
        raise InputError(f"expected columns index,instruction_difficulty, found {','.join(map(str, table.columns))}",
                         path=path)
    index = pd.to_numeric(table["index"], errors="coerce")
    values = pd.to_numeric(table["instruction_difficulty"], errors="coerce")
    for name, column in (("index", index), ("instruction_difficulty", values)):
        bad = ~np.isfinite(column.to_numpy(dtype=float))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InputError(f"expected a finite number, found {table[name].iloc[row]!r}", path=path,
                             line=row + 2, field=name)
    if (index % 1 != 0).any() or (index < 0).any() or index.duplicated().any():
        raise InputError("expected unique non-negative integer indices", path=path, field="index")
    difficulty = pd.Series(values.to_numpy(dtype=float), index=pd.Index(index.astype(int), name="index"),
                           name="instruction_difficulty").sort_index()
    difficulty.attrs["lc_difficulty"] = "fitted" if _provenance_path(path).is_file() else "official-csv"
    return difficulty


def write_instruction_difficulty(difficulty: pd.Series, csv_path: str | Path, provenance: Mapping[str, Any]) -> None:
    """Write ``index,instruction_difficulty`` and a ``.provenance.json`` beside it (marks it fitted)."""
    path = Path(csv_path)
    table = difficulty.rename("instruction_difficulty").rename_axis("index").to_frame()
    write_text_atomic(path, table.to_csv(float_format="%.17g"))
    write_json_atomic(_provenance_path(path), {"lc_difficulty": "fitted", **provenance})


def _provenance_path(csv_path: Path) -> Path:
    return csv_path.with_name(csv_path.name + ".provenance.json")


def fit_instruction_difficulty(annotations_by_model: Mapping[str, Annotations], *,
                               n_splits: int = N_SPLITS) -> pd.Series:
    """Fit a per-instruction effect jointly over several models' annotations, as AlpacaEval derived its table.

    The joint GLM of alpaca-eval's ``notebooks/instruction_difficulty.ipynb``: every model has its own
    bias and its own slope on ``tanh(std_delta_len)`` (std over that model's annotations), every
    instruction an effect ``C(index)``; fitted with alpaca-eval's ``fit_LogisticRegressionCV`` (L1,
    5-fold CV over the penalty, soft labels). The instruction effects are the difficulty; the first
    instruction is the reference level (0), as in AlpacaEval's table. Differences from the notebook:
    no gamed-baseline term (no gamed annotations here) and no 1e-4 random jitter on lengths.

    Raises:
        InputError: fewer than two models, or a model's annotations are invalid.
    """
    from alpaca_eval.metrics.glm_winrate import fit_LogisticRegressionCV, make_dmatrix_for_model

    if len(annotations_by_model) < 2:
        raise InputError(f"need annotations of at least two models, found {len(annotations_by_model)}")
    parts = []
    for model, records in annotations_by_model.items():
        frame = annotations_frame(records, path=model)
        parts.append(glm_features(frame, None).assign(model=str(model), index=instruction_index(frame)))
    data = pd.concat(parts, ignore_index=True)
    formula = "C(model):np.tanh(std_delta_len) + C(model) + C(index) - 1"
    train, _ = make_dmatrix_for_model(data, data.head(1), formula=formula)
    with quiet_sklearn():
        fitted = fit_LogisticRegressionCV(train, "preference", is_ytrue_proba=True, n_splits=n_splits)
    weights = pd.Series(fitted.coef_[0], index=fitted.feature_names_in_)
    effects = {int(name.split("[T.")[-1].rstrip("]")): w for name, w in weights.items() if name.startswith("C(index)")}
    difficulty = pd.Series({i: effects.get(i, 0.0) for i in sorted(data["index"].unique())}, dtype=float,
                           name="instruction_difficulty")
    difficulty.index.name = "index"
    difficulty.attrs.update(lc_difficulty="fitted", formula=formula, glm_C=float(fitted.C_[0]))
    return difficulty
