"""Paired bootstraps of win-rate differences: two models, or two iterations, on the same instructions.

Ours (alpaca-eval has none). Preferences are keyed by instruction id
(:func:`harness.metrics.annotations.preferences_by_id`); the difference b - a is in win-rate points,
per language and averaged over languages, with percentile intervals.

Example::

    from harness.metrics.bootstrap import paired_bootstrap
    print(paired_bootstrap({1: 1.2, 2: 1.5, 3: 1.9}, {1: 1.8, 2: 1.6, 3: 2.0}, n_boot=1000))
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np

from xlpref.errors import InputError


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
