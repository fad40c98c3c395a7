"""AlpacaEval annotations read and validated into a DataFrame, and their rows placed in the instruction order.

A preference is AlpacaEval's: a number in [1, 2], 2 when output_2 (the evaluated model) wins, 1 when
output_1 (the reference) wins, 1.5 a draw. Records carrying an X-AlpacaEval ``id`` sit at ``id - 1``
in the instruction order; records without one at their position (what alpaca-eval does).

Example::

    from harness.metrics.annotations import load_annotations, preferences_by_id
    frame = load_annotations("runs/demo/eval/iter_0/es/annotations.json")
    print(preferences_by_id(frame))   # {1: 1.62, 2: 1.08, ...}
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xlpref.errors import InputError
from xlpref.jsonio import read_json, read_jsonl

#: Annotations as records (``annotations.json``) or as the frame :func:`annotations_frame` returns.
Annotations = Sequence[Mapping[str, Any]] | pd.DataFrame


def annotations_frame(annotations: Annotations, *, path: str | Path | None = None,
                      require_outputs: bool = True) -> pd.DataFrame:
    """Validate AlpacaEval annotations (``preference`` in [1, 2], 2 = output_2 wins) into a DataFrame.

    Raises:
        InputError: not a list of objects, a missing field, a preference that is not a finite number in
            [1, 2], an output that is not a string, a bad or duplicate ``id``; names the record.
    """
    if isinstance(annotations, pd.DataFrame):
        records = annotations.to_dict("records")
    elif isinstance(annotations, (list, tuple)):
        records = list(annotations)
    else:
        raise InputError(f"expected a JSON list of annotation records, found {type(annotations).__name__}",
                         path=path)
    if not records:
        raise InputError("no annotations; expected at least one record", path=path)
    fields = ("preference", "output_1", "output_2") if require_outputs else ("preference",)
    has_id = any(isinstance(r, Mapping) and r.get("id") is not None for r in records)
    seen_ids: dict[int, int] = {}
    for number, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise InputError(f"expected an object, found {type(record).__name__}", path=path, record=number)
        for name in fields:
            if name not in record:
                raise InputError("missing field; expected it in every annotation", path=path, record=number,
                                 field=name)
        value = record["preference"]
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value) \
                or not 1 <= value <= 2:
            raise InputError(f"expected a number in [1, 2] (2 = output_2 wins), found {value!r}", path=path,
                             record=number, field="preference")
        for name in ("output_1", "output_2"):
            if name in record and not isinstance(record[name], str):
                raise InputError(f"expected a string, found {type(record[name]).__name__}", path=path,
                                 record=number, field=name)
        if has_id:
            raw_id = record.get("id")
            if isinstance(raw_id, bool) or not isinstance(raw_id, (int, np.integer)) or raw_id < 1:
                raise InputError(f"expected a positive integer id in every record, found {raw_id!r}", path=path,
                                 record=number, field="id")
            if int(raw_id) in seen_ids:
                raise InputError(f"duplicate id {raw_id} (first at record {seen_ids[int(raw_id)]})", path=path,
                                 record=number, field="id")
            seen_ids[int(raw_id)] = number
    frame = pd.DataFrame.from_records(records)
    frame["preference"] = frame["preference"].astype(float)
    return frame


def load_annotations(path: str | Path) -> pd.DataFrame:
    """Read and validate an AlpacaEval ``annotations.json`` (a JSON list; ``.jsonl`` also read)."""
    path = Path(path)
    data = read_jsonl(path) if path.suffix == ".jsonl" else read_json(path)
    return annotations_frame(data, path=path)


def instruction_index(frame: pd.DataFrame) -> np.ndarray:
    """Row -> position in the instruction order: ``id - 1`` with ids, else the record's position."""
    if "id" in frame.columns:
        return frame["id"].astype(int).to_numpy() - 1
    return np.arange(len(frame))


def assign_ids_by_instruction(frame: pd.DataFrame, instructions: Sequence[Mapping[str, Any]], *,
                              path: str | Path | None = None) -> pd.DataFrame:
    """Give records without ``id`` the id of their instruction text in ``instructions`` ({id, instruction})."""
    if "id" in frame.columns:
        return frame
    by_text = {item["instruction"]: item["id"] for item in instructions}
    ids = frame["instruction"].map(by_text) if "instruction" in frame.columns else None
    if ids is None or ids.isna().any():
        number = 0 if ids is None else int(np.flatnonzero(ids.isna().to_numpy())[0])
        raise InputError("instruction not found in the instruction list; expected one of its texts", path=path,
                         record=number, field="instruction")
    return frame.assign(id=ids.astype(int))


def preferences_by_id(annotations: Annotations) -> dict[int, float]:
    """Instruction id -> preference in [1, 2]; records without ``id`` are keyed by position + 1."""
    frame = annotations_frame(annotations, require_outputs=False)
    ids = instruction_index(frame) + 1
    return dict(zip(ids.tolist(), frame["preference"].tolist()))
