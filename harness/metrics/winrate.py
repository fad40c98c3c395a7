"""Metrics from AlpacaEval annotations: win rates, the length-controlled win rate, paired bootstraps.

Win-rate columns come from alpaca-eval's own ``get_winrate`` (same names, same numbers); the
length-controlled win rate from :mod:`harness.metrics.length_controlled` (alpaca-eval's GLM, fitted offline). The paired
bootstrap is ours (alpaca-eval has none): it compares two models, or two iterations, on the same
instructions, per language and averaged over languages.

A preference is AlpacaEval's: a number in [1, 2], 2 when output_2 (the evaluated model) wins,
1 when output_1 (the reference) wins, 1.5 a draw; win rate = 100 * mean(preference - 1).

Example::

    from harness.metrics.winrate import compute_metrics, load_annotations, load_instruction_difficulty
    annotations = load_annotations("../shared/data/alpaca_eval_annotations/vicuna-7b.json")
    difficulty = load_instruction_difficulty("../shared/data/alpaca_eval_lc/instruction_difficulty.csv")
    print(compute_metrics(annotations, instruction_difficulty=difficulty))
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from harness.metrics.length_controlled import (Annotations, annotations_frame, assign_ids_by_instruction, fit_instruction_difficulty,
                        instruction_index, lc_degeneracy, length_controlled_fit, length_controlled_winrate,
                        load_annotations, load_instruction_difficulty, write_instruction_difficulty)
from xlpref.errors import InputError

__all__ = [
    "WINRATE_COLUMNS", "annotations_frame", "assign_ids_by_instruction", "compute_metrics",
    "fit_instruction_difficulty", "instruction_index", "lc_degeneracy", "length_controlled_fit",
    "length_controlled_winrate", "load_annotations",
    "load_instruction_difficulty", "paired_bootstrap", "paired_bootstrap_average", "preferences_by_id",
    "winrate_metrics", "write_instruction_difficulty",
]

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


def preferences_by_id(annotations: Annotations) -> dict[int, float]:
    """Instruction id -> preference in [1, 2]; records without ``id`` are keyed by position + 1."""
    frame = annotations_frame(annotations, require_outputs=False)
    ids = instruction_index(frame) + 1
    return dict(zip(ids.tolist(), frame["preference"].tolist()))


# -- paired bootstrap ---------------------------------------------------------------------------

def _paired_differences(prefs_a: Mapping[Hashable, float], prefs_b: Mapping[Hashable, float], where: str
                        ) -> tuple[list, np.ndarray, dict[str, Any]]:
    common = sorted(set(prefs_a) & set(prefs_b), key=lambda k: (str(type(k)), k))
    if not common:
        raise InputError(f"language {where}: no instruction id in common; expected both sides to annotate "
                         "the same instructions")
    a = np.array([prefs_a[k] for k in common], dtype=float)
    b = np.array([prefs_b[k] for k in common], dtype=float)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise InputError(f"language {where}: non-finite preference; expected numbers in [1, 2]")
    counts = {"n": len(common), "n_only_a": len(set(prefs_a) - set(prefs_b)),
              "n_only_b": len(set(prefs_b) - set(prefs_a)),
              "win_rate_a": float((a.mean() - 1) * 100), "win_rate_b": float((b.mean() - 1) * 100)}
    return common, (b - a) * 100, counts


def _summary(observed: float, replicates: np.ndarray, confidence: float) -> dict[str, Any]:
    replicates = replicates[np.isfinite(replicates)]
    low, high = np.quantile(replicates, [(1 - confidence) / 2, (1 + confidence) / 2])
    # two-sided p-value by inverting the percentile interval (resolution 2 / n_boot)
    p_value = min(1.0, 2 * min(np.mean(replicates <= 0), np.mean(replicates >= 0)))
    return {"delta": float(observed), "ci_low": float(low), "ci_high": float(high), "p_value": float(p_value),
            "is_significant": bool(low > 0 or high < 0)}


def paired_bootstrap_average(per_lang_a: Mapping[str, Mapping[Hashable, float]],
                             per_lang_b: Mapping[str, Mapping[Hashable, float]], *, n_boot: int = 2000,
                             seed: int = 0, confidence: float = 0.95) -> dict[str, Any]:
    """Difference b - a in win-rate points, per language and averaged over languages, with bootstrap CIs.

    Each replicate draws instruction ids with replacement once, from the ids of all languages, and
    applies the same draw in every language (the same id is the same instruction in every language
    of X-AlpacaEval), so the average's interval accounts for instructions being hard in every
    language at once. Percentile intervals; ``is_significant`` = the interval excludes 0.

    Returns:
        ``delta``, ``ci_low``, ``ci_high``, ``p_value``, ``is_significant``, ``n`` (paired
        annotations over all languages), ``languages``, ``per_language`` (the same keys per language,
        plus ``n_only_a``, ``n_only_b``, ``win_rate_a``, ``win_rate_b``), ``n_boot``, ``seed``,
        ``confidence``.

    Raises:
        InputError: the two sides cover different languages, or a language has no id in common.
    """
    if set(per_lang_a) != set(per_lang_b) or not per_lang_a:
        raise InputError(f"languages differ or are empty: a has {sorted(per_lang_a)}, b has {sorted(per_lang_b)}; "
                         "expected the same languages on both sides")
    if n_boot < 1 or not 0 < confidence < 1:
        raise InputError(f"expected n_boot >= 1 and 0 < confidence < 1, found {n_boot} and {confidence}")
    languages = sorted(per_lang_a)
    paired = {lang: _paired_differences(per_lang_a[lang], per_lang_b[lang], lang) for lang in languages}
    all_ids = sorted({k for ids, _, _ in paired.values() for k in ids}, key=lambda k: (str(type(k)), k))
    position = {k: i for i, k in enumerate(all_ids)}
    rng = np.random.default_rng(seed)
    # how often each instruction is drawn in each replicate (= drawing len(all_ids) ids with replacement)
    draws = rng.multinomial(len(all_ids), np.full(len(all_ids), 1 / len(all_ids)), size=n_boot)

    per_language, replicates = {}, []
    for lang in languages:
        ids, diffs, counts = paired[lang]
        weights = draws[:, [position[k] for k in ids]]
        drawn = weights.sum(axis=1)
        # a language none of whose ids was drawn has no replicate value (only when it covers few ids)
        with np.errstate(invalid="ignore", divide="ignore"):
            lang_replicates = np.where(drawn > 0, weights @ diffs / drawn, np.nan)
        replicates.append(lang_replicates)
        per_language[lang] = _summary(diffs.mean(), lang_replicates, confidence) | counts
    average = _summary(np.mean([paired[lang][1].mean() for lang in languages]),
                       np.mean(np.vstack(replicates), axis=0), confidence)
    return average | {"n": sum(c["n"] for _, _, c in paired.values()), "languages": languages,
                      "per_language": per_language, "n_boot": n_boot, "seed": seed, "confidence": confidence}


def paired_bootstrap(prefs_a: Mapping[Hashable, float], prefs_b: Mapping[Hashable, float], *, n_boot: int = 2000,
                     seed: int = 0, confidence: float = 0.95) -> dict[str, Any]:
    """Difference b - a in win-rate points on the instructions both annotate, with a paired bootstrap CI.

    Returns:
        ``delta``, ``ci_low``, ``ci_high``, ``p_value`` (two-sided), ``is_significant``, ``n``,
        ``n_only_a``, ``n_only_b``, ``win_rate_a``, ``win_rate_b``, ``n_boot``, ``seed``, ``confidence``.
    """
    result = paired_bootstrap_average({"all": prefs_a}, {"all": prefs_b}, n_boot=n_boot, seed=seed,
                                      confidence=confidence)
    return result["per_language"]["all"] | {"n_boot": n_boot, "seed": seed, "confidence": confidence}
