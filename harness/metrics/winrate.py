"""One model's metrics from AlpacaEval annotations: the win rates, and the length-controlled win rate.

Win-rate columns come from alpaca-eval's own ``get_winrate`` (same names, same numbers); the
length-controlled win rate from :mod:`harness.metrics.length_controlled` (alpaca-eval's GLM, fitted
offline). Comparing two models is :mod:`harness.metrics.bootstrap`; reading annotations
:mod:`harness.metrics.annotations`; the instruction difficulty :mod:`harness.metrics.difficulty`.

A preference is AlpacaEval's: a number in [1, 2], 2 when output_2 (the evaluated model) wins,
1 when output_1 (the reference) wins, 1.5 a draw; win rate = 100 * mean(preference - 1).

Example::

    from harness.metrics.annotations import load_annotations
    from harness.metrics.difficulty import load_instruction_difficulty
    from harness.metrics.winrate import compute_metrics
    annotations = load_annotations("../shared/data/alpaca_eval_annotations/vicuna-7b.json")
    difficulty = load_instruction_difficulty("../shared/data/alpaca_eval_lc/instruction_difficulty.csv")
    print(compute_metrics(annotations, instruction_difficulty=difficulty))
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from harness.metrics.annotations import Annotations, annotations_frame
from harness.metrics.length_controlled import length_controlled_winrate
from xlpref.errors import InputError

#: AlpacaEval's leaderboard columns that :func:`winrate_metrics` returns.
WINRATE_COLUMNS = ("win_rate", "standard_error", "n_wins", "n_wins_base", "n_draws", "n_total",
                   "discrete_win_rate", "avg_length")


def _plain(value: Any) -> Any:
    """numpy scalar -> Python scalar; NaN -> None (JSON has no NaN)."""
    value = value.item() if hasattr(value, "item") else value
    return None if isinstance(value, float) and not math.isfinite(value) else value


def winrate_metrics(annotations: Annotations) -> dict[str, Any]:
    """AlpacaEval's win-rate columns, from alpaca-eval's ``get_winrate``, plus ``avg_length``.

    ``avg_length`` is the mean length in characters of output_2 (the evaluated model), truncated to
    an int as on AlpacaEval's leaderboard; omitted when records have no ``output_2``.
    """
    from alpaca_eval.metrics import get_winrate

    frame = annotations_frame(annotations, require_outputs=False)
    out = {name: _plain(value) for name, value in get_winrate(frame[["preference"]]).items()}
    if "output_2" in frame.columns:
        out["avg_length"] = int(frame["output_2"].str.len().mean())
    return {name: out[name] for name in WINRATE_COLUMNS if name in out}


def _single_value(frame: pd.DataFrame, column: str) -> str | None:
    if column not in frame.columns:
        return None
    values = sorted({str(v) for v in frame[column].dropna()})
    if len(values) > 1:
        raise InputError(f"annotations mix {len(values)} values ({', '.join(values[:3])}, ...); "
                         "expected one per file", field=column)
    return values[0] if values else None


def compute_metrics(annotations: Annotations, *, instruction_difficulty: pd.Series | None = None,
                    gamed_annotations: Annotations | None = None, annotator: str | None = None,
                    reference: str | None = None) -> dict[str, Any]:
    """Win-rate columns and LC of one model's annotations, with the generator, annotator and reference named.

    ``annotator`` and ``reference`` default to the records' ``annotator`` and ``generator_1``.

    Raises:
        InputError: invalid annotations, or one file mixing generators, annotators or references.
    """
    frame = annotations_frame(annotations)
    names = {"generator": _single_value(frame, "generator_2"),
             "annotator": annotator or _single_value(frame, "annotator"),
             "reference": reference or _single_value(frame, "generator_1")}
    lc = length_controlled_winrate(frame, instruction_difficulty=instruction_difficulty,
                                   gamed_annotations=gamed_annotations)
    return names | winrate_metrics(frame) | lc
