"""Recompute a stored row's metrics.json from its annotations.json, with the current metric code.

The annotations are the measurement; metrics are derived from them. When the metric code changes
(for example LC learning to say it is not estimable), ``xlpref remetrics ROW...`` rewrites each
language's metrics.json from the row's own annotations: the win-rate and LC columns are recomputed,
everything else the evaluation recorded (judge, its labels and config hash, reference, unparsed
count) is kept. LC is refitted with the same features it was fitted with: no difficulty term when
the row's ``lc_difficulty`` is ``none``, else the table passed in; a row fitted with gamed-baseline
regularisation is refused (those annotations are not stored with the row).

Example::

    xlpref remetrics demo-iter0 demo-iter1 --results-dir results && xlpref leaderboard
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from xlpref.errors import InputError
from xlpref.jsonio import read_json, write_json_atomic

#: Keys a metrics computation writes (replaced), including those only written for a degenerate LC.
DERIVED_KEYS = ("win_rate", "standard_error", "n_wins", "n_wins_base", "n_draws", "n_total", "discrete_win_rate",
                "avg_length", "lc_difficulty", "lc_gamed_regularisation", "lc_glm_weights",
                "length_controlled_winrate", "lc_standard_error", "lc_not_estimable", "lc_note")


def recompute_row_metrics(row_dir: str | Path, *, instruction_difficulty: Any = None) -> list[Path]:
    """Rewrite ``<row>/<lang>/metrics.json`` from ``annotations.json`` for every language that has both.

    Args:
        instruction_difficulty: a CSV path or Series, needed when a language's LC used a difficulty table.
    Returns:
        The metrics files written.
    Raises:
        InputError: not a row folder, no annotations, a fit this function cannot reproduce.
    """
    from harness.metrics.difficulty import load_instruction_difficulty
    from harness.metrics.winrate import compute_metrics

    row_dir = Path(row_dir)
    if not (row_dir / "row.json").is_file():
        raise InputError("not a row folder (no row.json); expected results/<row_id>", path=row_dir)
    if isinstance(instruction_difficulty, (str, Path)):
        instruction_difficulty = load_instruction_difficulty(instruction_difficulty)
    written = []
    for metrics_path in sorted(row_dir.glob("*/metrics.json")):
        annotations_path = metrics_path.with_name("annotations.json")
        if not annotations_path.is_file():
            continue  # published rows: numbers without annotations, nothing to recompute
        old = read_json(metrics_path)
        if old.get("lc_gamed_regularisation"):
            raise InputError("LC was regularised with gamed-baseline annotations that the row does not store; "
                             "expected a row fitted without them", path=metrics_path, field="lc_gamed_regularisation")
        uses_table = old.get("lc_difficulty", "none") != "none"
        if uses_table and instruction_difficulty is None:
            raise InputError(f"LC used a difficulty table ({old['lc_difficulty']}); expected --instruction-difficulty",
                             path=metrics_path, field="lc_difficulty")
        new = compute_metrics(read_json(annotations_path), instruction_difficulty=instruction_difficulty if uses_table
                              else None, annotator=old.get("annotator"), reference=old.get("reference"))
        kept = {k: v for k, v in old.items() if k not in DERIVED_KEYS}
        # In the recorded key order, new keys last: a rewrite changes only what the computation changed.
        merged = {k: new[k] if k in DERIVED_KEYS else v for k, v in old.items() if k in kept or k in new}
        write_json_atomic(metrics_path, {**merged, **{k: v for k, v in new.items() if k not in merged}})
        written.append(metrics_path)
    if not written:
        raise InputError("no <lang>/annotations.json beside a metrics.json; nothing to recompute", path=row_dir)
    return written
