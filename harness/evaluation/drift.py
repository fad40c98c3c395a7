"""Judge drift sentinel: re-ask the judge a few pinned pairs it already answered, and compare.

A hosted judge model can change behind the same name (AlpacaEval users have reported it more than
once), and the judge cache would hide it: cached answers are reused, new pairs get the new model's
answers, and the win rate mixes the two. With ``evaluation.drift_check: K`` (``xlpref evaluate
--drift-check K``) an evaluation starts by choosing K pinned pairs (by seed, among pairs whose answer
is already in a judge cache: in ``xlpref evaluate`` this evaluation's own, so a re-evaluation or a
resume; in a run, from iteration 1 on, the pairs of pi_0's evaluation), asking the judge again, bypassing the cache, and
comparing the new preferences with the cached ones: the agreement (same side of 1.5) and the mean
absolute preference difference go into metrics.json as ``judge_drift``; a difference above
``drift_threshold`` (default 0.1 on AlpacaEval's [1, 2] preference scale) is "judge drift", reported
by the evaluation and failing ``xlpref check --fail-on-drift``. The cached answers are kept (they stay
the pinned reference); the re-asked calls are counted and paid like any other.

Example::

    drift = check_drift(lambda batch: judge.judgements(batch), items, cache, k=5, seed=0, threshold=0.1)
    drift["is_drift"], drift["agreement"], drift["mean_abs_preference_difference"]
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from typing import Any

#: Mean absolute difference of preferences ([1, 2] scale) above which answers are said to have drifted.
DEFAULT_DRIFT_THRESHOLD = 0.1


def _side(preference: float) -> int:
    return 0 if preference == 1.5 else (1 if preference > 1.5 else -1)


def pinned_keys(candidates: list[str], k: int, seed: int) -> list[str]:
    """K of the candidate cache keys, the same ones for the same candidates and seed."""
    ordered = sorted(candidates)
    return sorted(random.Random(seed).sample(ordered, min(k, len(ordered))))


def check_drift(ask: Callable[[list], list], items: Mapping[str, Any], cache: Any, *, k: int, seed: int,
                threshold: float = DEFAULT_DRIFT_THRESHOLD) -> dict:
    """Re-ask K cached pairs of ``items`` ({cache key: JudgeItem}); returns the ``judge_drift`` record.

    Args:
        ask: the judge, bypassing the cache: JudgeItems -> Judgements (``preference``, NaN when unparsed).
    """
    candidates = [key for key in items if key in cache and cache[key].get("preference") is not None]
    keys = pinned_keys(candidates, k, seed)
    result = {"n_requested": k, "n_checked": 0, "n_unparsed": 0, "agreement": None,
              "mean_abs_preference_difference": None, "threshold": threshold, "seed": seed, "is_drift": False}
    if not keys:
        return result
    answers = ask([items[key] for key in keys])
    pairs = [(float(cache[key]["preference"]), answer.preference) for key, answer in zip(keys, answers)]
    parsed = [(old, new) for old, new in pairs if not math.isnan(new)]
    result.update(n_checked=len(keys), n_unparsed=len(pairs) - len(parsed))
    if parsed:
        difference = sum(abs(old - new) for old, new in parsed) / len(parsed)
        result.update(agreement=sum(_side(old) == _side(new) for old, new in parsed) / len(pairs),
                      mean_abs_preference_difference=round(difference, 6))
    result["is_drift"] = bool(result["n_unparsed"] or (parsed and difference > threshold))
    return result


def drift_message(lang: str, drift: Mapping[str, Any] | None) -> str | None:
    """One line for a language whose judge drifted (None when it did not, or was not checked)."""
    if not drift or not drift.get("is_drift"):
        return None
    agreement = drift.get("agreement")
    return (f"judge drift in {lang}: {drift['n_checked']} pinned pairs re-asked, mean |preference difference| "
            f"{drift.get('mean_abs_preference_difference')} above {drift['threshold']}, agreement "
            f"{'-' if agreement is None else f'{100 * agreement:.0f}%'}"
            + (f", {drift['n_unparsed']} unparsed" if drift.get("n_unparsed") else ""))


def row_drift_messages(metrics_by_lang: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The drift lines of a results row's languages (its metrics.json files)."""
    return [message for lang, metrics in metrics_by_lang.items()
            if (message := drift_message(lang, metrics.get("judge_drift"))) is not None]
