"""How often the implicit reward ranks two answers as a judge did: the premise of cross-lingual rewarding.

For AlpacaEval annotations (instruction, output_1, output_2, preference in [1, 2], 2 = output_2
better) both outputs are scored with the implicit reward ``log pi_policy - log pi_reference``
(:func:`xlpref.reward.score_records`, the reward the loop builds pairs with) and compared with the
judge:

- the reward *agrees* on a pair when ``reward(output_2) - reward(output_1)`` has the sign of
  ``preference - 1.5``; equal rewards count one half. Pairs the judge scored exactly 1.5 have no
  side and are left out.
- ``agreement_all``: over every pair with a side; ``agreement_clear``: over the *clear* pairs,
  ``|preference - 1.5| >= CLEAR_MARGIN`` (0.25: the judge gave one side at least 75%).
- Each comes with a percentile bootstrap interval over the pairs (pairs drawn with replacement;
  ``harness.metrics.winrate``'s bootstrap pairs two systems on shared instructions, which is not
  this question, so this one is a plain resample of one proportion). Chance is 50%.

Conditioning: ``cross-lingual`` reads the English instruction (the annotation's own for English,
else the English X-AlpacaEval instruction of the same ``id``) behind METHOD.md's prefix;
``multilingual`` reads the annotation's instruction.

Example::

    from harness.metrics.reward_accuracy import agreement, annotation_samples
    samples = annotation_samples(annotations, "en")      # two sample records per annotation
    # ... score them with xlpref.reward.score_records, then:
    print(agreement(rewards_1, rewards_2, preferences, n_boot=1000, seed=0))
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from xlpref.errors import InputError

#: A judge preference at least this far from 1.5 makes a clear pair.
CLEAR_MARGIN = 0.25


def annotation_samples(annotations: Sequence[dict], lang: str, *,
                       english: Mapping[int, str] | None = None, where: str | None = None) -> list[dict]:
    """Two scoring records per annotation (``sample_index`` 0 = output_1, 1 = output_2), keyed by position.

    Args:
        english: {X-AlpacaEval id: English instruction}, for non-English annotations under the cross-lingual
            reward (records need an ``id`` then); English annotations use their own instruction.
    Raises:
        InputError: a missing field, or a non-English record whose id has no English instruction.
    """
    samples = []
    for index, record in enumerate(annotations):
        for name in ("instruction", "output_1", "output_2"):
            if not isinstance(record.get(name), str):
                raise InputError("missing or not a string; expected AlpacaEval annotations", path=where,
                                 record=index, field=name)
        prompt_en = record["instruction"]
        if lang != "en" and english is not None:
            prompt_en = english.get(record.get("id"))
            if prompt_en is None:
                raise InputError(f"id {record.get('id')!r} has no English X-AlpacaEval instruction; expected the "
                                 "ids 1..805 of X-AlpacaEval", path=where, record=index, field="id")
        for side in (1, 2):
            samples.append({"lang": lang, "id": index, "sample_index": side - 1, "prompt": record["instruction"],
                            "prompt_en": prompt_en, "response": record[f"output_{side}"]})
    return samples


def _bootstrap(values: np.ndarray, *, n_boot: int, seed: int, confidence: float) -> tuple[float, float]:
    if len(values) == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return 100.0 * float(low), 100.0 * float(high)


def agreement(rewards_1: Sequence[float], rewards_2: Sequence[float], preferences: Sequence[float], *,
              n_boot: int = 2000, seed: int = 0, confidence: float = 0.95) -> dict[str, Any]:
    """Agreement (percent) of the reward margin with the judge, on all sided pairs and on clear pairs.

    Returns:
        ``n_pairs``, ``n_all``, ``agreement_all``, ``ci_all`` [low, high], ``n_clear``,
        ``agreement_clear``, ``ci_clear``, ``mean_margin`` (mean reward(output_2) - reward(output_1)),
        ``n_boot``, ``confidence``; agreements are None without pairs.
    """
    margins = np.asarray(rewards_2, dtype=float) - np.asarray(rewards_1, dtype=float)
    sides = np.asarray(preferences, dtype=float) - 1.5
    if not (len(margins) == len(sides)):
        raise InputError(f"{len(margins)} reward margins for {len(sides)} preferences; expected one per pair")
    # 1 when the reward picks the judge's side, 0 when the other, one half on a reward tie
    scores = np.where(margins == 0, 0.5, (np.sign(margins) == np.sign(sides)).astype(float))
    out: dict[str, Any] = {"n_pairs": len(sides)}
    for name, mask in (("all", sides != 0), ("clear", np.abs(sides) >= CLEAR_MARGIN)):
        chosen = scores[mask]
        out[f"n_{name}"] = int(mask.sum())
        out[f"agreement_{name}"] = 100.0 * float(chosen.mean()) if len(chosen) else None
        low, high = _bootstrap(chosen, n_boot=n_boot, seed=seed, confidence=confidence)
        out[f"ci_{name}"] = [low, high] if len(chosen) else None
    out.update(mean_margin=float(margins.mean()) if len(margins) else None, n_boot=n_boot, confidence=confidence)
    return out
