"""JSON and JSONL reading with precise errors, and atomic writing.

Every artifact is written to a temporary file in the same folder and renamed into place, so a
crash never leaves a half-written file behind. The file gets the mode the process umask gives a new
file (0644 under umask 022), not ``mkstemp``'s private 0600, so a results folder on a shared
filesystem stays readable to the team.

Example::

    from xlpref.jsonio import read_jsonl, write_jsonl_atomic
    rows = read_jsonl("samples.jsonl")
    write_jsonl_atomic("copy.jsonl", rows)
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from xlpref.errors import InputError


def _read_text(path: Path) -> str:
    if not path.exists():
        raise InputError("file not found", path=path)
    if path.is_dir():
        raise InputError("expected a file, found a folder", path=path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read file ({exc.strerror})", path=path) from exc
    try:
        # utf-8-sig accepts (and drops) a byte-order mark.
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"not valid UTF-8 (byte {exc.start}); expected UTF-8 encoded JSON", path=path
        ) from exc


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-finite number {name} is not valid JSON")


def read_json(path: str | Path) -> Any:
    """Read one JSON document; errors name the file, line and column."""
    path = Path(path)
    text = _read_text(path)
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON at column {exc.colno}: {exc.msg}", path=path, line=exc.lineno) from exc
    except ValueError as exc:
        raise InputError(str(exc), path=path) from exc


def iter_jsonl(path: str | Path, *, allow_truncated_tail: bool = False,
               allow_non_finite: bool = False) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-empty line of a JSONL file.

    Args:
        allow_truncated_tail: tolerate an unterminated, unparsable last line (the trace of a crash
            while appending); the run store uses this to resume. Users' input files never do.
        allow_non_finite: read NaN / Infinity as floats, for callers that check their fields and name
            the offending one (e.g. a NaN reward).
    """
    path = Path(path)
    text = _read_text(path)
    lines = text.split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line, parse_constant=float if allow_non_finite else _reject_constant)
        except (json.JSONDecodeError, ValueError) as exc:
            is_last = number == len(lines) and not text.endswith("\n")
            if allow_truncated_tail and is_last:
                return
            msg = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            raise InputError(f"invalid JSON: {msg}; expected one JSON object per line", path=path, line=number) from exc
        if not isinstance(obj, dict):
            raise InputError(f"expected a JSON object, found {type(obj).__name__}", path=path, line=number)
        yield number, obj


def read_jsonl(path: str | Path) -> list[dict]:
    """Read a JSONL file into a list of objects."""
    return [obj for _, obj in iter_jsonl(path)]


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def dumps(obj: Any, *, indent: int | None = None) -> str:
    """JSON text; NaN and infinities are refused rather than written as invalid JSON."""
    return json.dumps(obj, ensure_ascii=False, indent=indent, allow_nan=False, default=_json_default)


def current_umask() -> int:
    """The process umask, read without changing it where Linux exposes it (``/proc/self/status``)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but only briefly wrong)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file."""
    return 0o666 & ~current_umask()


def new_folder_mode() -> int:
    """The mode ``mkdir`` would give a new folder (for ``tempfile.mkdtemp``'s private 0700)."""
    return 0o777 & ~current_umask()


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file beside ``path``; rename it into place only on success."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot create the folder {exc.filename or path.parent} ({exc.strerror}); "
                      "expected a writable folder, nothing was written", str(path)) from exc
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _not_written(exc, path) from exc
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as handle:
            os.fchmod(handle.fileno(), new_file_mode())
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename is None:  # e.g. ENOSPC from write or fsync
            raise _not_written(exc, path) from exc
        raise


def _not_written(exc: OSError, path: Path) -> OSError:
    """The same error (same errno, so the same subclass) naming the target file, not a temp file."""
    return OSError(exc.errno, f"{exc.strerror or exc}; nothing was written", str(path))


def write_json_atomic(path: str | Path, obj: Any, *, indent: int | None = 2) -> None:
    with atomic_open(path) as handle:
        handle.write(dumps(obj, indent=indent))
        handle.write("\n")


def write_jsonl_atomic(path: str | Path, rows: Iterable[dict]) -> None:
    with atomic_open(path) as handle:
        for row in rows:
            handle.write(dumps(row))
            handle.write("\n")


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_open(path) as handle:
        handle.write(text)


def is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def append_jsonl_durably(path: str | Path, rows: Iterable[dict]) -> None:
    """Append rows to a JSONL file in one write, flushed and fsynced (a crash loses at most a torn last line)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("".join(dumps(r) + "\n" for r in rows))
        handle.flush()
        os.fsync(handle.fileno())
