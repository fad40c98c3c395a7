"""Errors for bad input that name the place, the field and the expectation.

The CLI turns :class:`InputError` into one clear line on stderr and exit code 2 (no traceback
unless ``-v``), and :class:`ServiceUnavailableError` (a server that stays down) into one line and exit
code 1: the input was fine, and rerunning the same command resumes.

Example::

    raise InputError("must be a non-empty string", path="en.json", record=12, field="instruction")
    # en.json: record 12: field 'instruction': must be a non-empty string
"""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """Bad input from a user: a file, a record, a config value or a CLI argument."""

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        record: int | str | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.path = str(path) if path is not None else None
        self.line = line
        self.record = record
        self.field = field
        super().__init__(self.format())

    def format(self) -> str:
        parts = []
        if self.path is not None:
            parts.append(self.path)
        if self.line is not None:
            parts.append(f"line {self.line}")
        if self.record is not None:
            parts.append(f"record {self.record}")
        if self.field is not None:
            parts.append(f"field '{self.field}'")
        parts.append(self.message)
        return ": ".join(parts)


class ServiceUnavailableError(RuntimeError):
    """A service the work depends on (e.g. a judge server) failed after all retries; finished work is kept."""
