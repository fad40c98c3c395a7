"""Resumable stage records: a keyed, append-only JSONL log, and the store protocol that hands them out.

The method's stages (sampling, reward scoring, LIDR) write their records through a :class:`RecordLog`
obtained from a :class:`RecordStore`; the harness's run store implements the protocol, and a test can
pass any object with a ``record_log`` method. Rerunning a stage skips keys already in its partial
file, tolerates a torn last line from a crash, and never duplicates a record.

Layout of one log::

    <name>.partial.jsonl   records appended while the stage runs (flushed and fsynced per batch)
    <name>.jsonl           the finished artifact (written atomically, in canonical order)

Example::

    from xlpref.records import RecordLog
    log = RecordLog("/tmp/samples.jsonl", key=("lang", "id"))
    log.append([{"lang": "es", "id": 1, "response": "Hola"}])
    print(log.done_keys, log.finish(order=[("es", 1)]))
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Protocol, Sequence

from xlpref.errors import InputError
from xlpref.jsonio import append_jsonl_durably, iter_jsonl, write_jsonl_atomic


class RecordLog:
    """An append-only, keyed JSONL log that becomes a finished artifact.

    Args:
        final_path: where the finished artifact goes.
        key: record fields forming the unique key.
    """

    def __init__(self, final_path: str | Path, key: Sequence[str]) -> None:
        self.final_path = Path(final_path)
        self.partial_path = self.final_path.with_name(self.final_path.stem + ".partial.jsonl")
        self.key = tuple(key)
        self._records: dict[tuple, dict] = {}
        if self.final_path.exists():
            for _, rec in iter_jsonl(self.final_path):
                self._records[self.key_of(rec)] = rec
        elif self.partial_path.exists():
            for _, rec in iter_jsonl(self.partial_path, allow_truncated_tail=True):
                self._records.setdefault(self.key_of(rec), rec)
            self._rewrite_partial()

    def _rewrite_partial(self) -> None:
        # Drops a torn last line (crash while appending) so later appends start on a clean line.
        write_jsonl_atomic(self.partial_path, self._records.values())

    @property
    def is_finished(self) -> bool:
        return self.final_path.exists()

    def key_of(self, record: dict) -> tuple:
        try:
            return tuple(record[k] for k in self.key)
        except KeyError as exc:
            raise InputError(f"record lacks key field {exc.args[0]!r}; expected fields {list(self.key)}",
                             path=self.partial_path) from None

    @property
    def done_keys(self) -> set[tuple]:
        return set(self._records)

    @property
    def records(self) -> list[dict]:
        return list(self._records.values())

    def append(self, records: Iterable[dict]) -> None:
        """Append finished records (flushed and fsynced); keys already present are ignored."""
        if self.is_finished:
            raise RuntimeError(f"{self.final_path} is finished; it cannot take more records")
        new = []
        for rec in records:
            k = self.key_of(rec)
            if k not in self._records:
                self._records[k] = rec
                new.append(rec)
        if not new:
            return
        append_jsonl_durably(self.partial_path, new)

    def finish(self, order: Sequence[tuple] | None = None) -> list[dict]:
        """Write the finished artifact atomically (in ``order`` of keys when given) and drop the partial."""
        if order is not None:
            missing = [k for k in order if k not in self._records]
            if missing:
                raise RuntimeError(f"{self.final_path}: {len(missing)} records missing, e.g. {missing[0]}")
            rows = [self._records[k] for k in order]
        else:
            rows = list(self._records.values())
        write_jsonl_atomic(self.final_path, rows)
        if self.partial_path.exists():
            self.partial_path.unlink()
        return rows


class RecordStore(Protocol):
    """Where a stage's record logs live: ``name`` is a path relative to the store, ``.jsonl`` added."""

    def record_log(self, name: str, key: Sequence[str]) -> RecordLog:
        ...
