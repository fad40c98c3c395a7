"""One writer per run folder or output file: an exclusive lock held for a command's lifetime.

Two commands appending to the same record logs would interleave or collide, so every command that
writes a resumable output takes this lock first. The lock of a folder is ``FOLDER/.xlpref.lock``, the
lock of a file ``OUT`` is ``.OUT.lock`` beside it. It is an ``fcntl.flock`` on that file, which the
kernel releases when the process ends however it ends (SIGKILL included); the file's JSON body
(pid, host, start time, command) only tells a second writer whom it is waiting for, and is how a
lock left by a dead process is recognised and taken over with one line. Readers take no lock.

Several hosts: on NFS (Linux clients since 2.6.12) ``flock`` is sent to the server as a whole-file
POSIX lock, so two hosts exclude each other as long as the server's lock manager works; on a
filesystem without shared locks (some FUSE and object-store mounts, NFS mounted with ``nolock`` or
``local_lock=all``) each host sees only its own locks, and two hosts can both write. A lock body that
names another host whose lock this host could take is reported as such (see :func:`hold_lock`).

Example::

    with hold_lock(Path("runs/demo"), is_folder=True):
        ...  # a second ``hold_lock`` on runs/demo exits 2 naming this process
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import json
import os
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from xlpref.errors import InputError

FOLDER_LOCK_NAME = ".xlpref.lock"


def lock_path(target: str | Path, *, is_folder: bool) -> Path:
    """Where the lock of a folder (``FOLDER/.xlpref.lock``) or of a file (``.NAME.lock`` beside it) lives."""
    target = Path(target)
    return target / FOLDER_LOCK_NAME if is_folder else target.with_name(f".{target.name}.lock")


def is_process_alive(pid: int) -> bool:
    """Whether ``pid`` runs on this host (a zombie, killed but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    with contextlib.suppress(OSError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2] not in "ZX"
    return True


def _holder(body: dict) -> str:
    return (f"pid {body.get('pid', '?')} on host {body.get('host', '?')}, started {body.get('started', '?')}")


def _read_body(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = b""
    while chunk := os.read(fd, 65536):
        raw += chunk
    try:
        body = json.loads(raw.decode("utf-8")) if raw.strip() else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return body if isinstance(body, dict) else {}


def _open_locked(path: Path, target: Path) -> int:
    """Open and lock the lock file; retry if it was replaced between open and lock (a releaser unlinks it)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            body = _read_body(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise InputError(f"another xlpref process is writing here ({_holder(body)}); wait for it to finish "
                                 f"or stop it (lock file {path})", path=target) from None
            raise
        with contextlib.suppress(FileNotFoundError):
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        os.close(fd)


@contextlib.contextmanager
def hold_lock(target: str | Path, *, is_folder: bool, what: str = "the folder",
              say: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> Iterator[Path]:
    """Hold the exclusive writer lock of ``target`` for the ``with`` block; yields the lock file's path.

    A folder this creates for the lock is removed again if nothing was written into it (a command
    that fails on bad input leaves no empty run directory behind).

    Args:
        what: how a folder that cannot be created is named in the error (e.g. "run directory").
    Raises:
        InputError: another live process holds it (exit 2: one line naming the folder, pid, host, start).
    """
    target = Path(target)
    path = lock_path(target, is_folder=is_folder)
    created = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create {what} ({exc.strerror}); expected a writable folder, nothing was written",
                         path=path.parent) from exc
    try:
        fd = _open_locked(path, target)
    except BaseException:
        _remove_empty(created)
        raise
    try:
        previous = _read_body(fd)
        host = socket.gethostname()
        if previous.get("pid") is not None:  # a lock file with a body: its writer died without releasing it
            if previous.get("host") == host:
                state = "which is no longer running" if not is_process_alive(int(previous["pid"])) else \
                    "which no longer holds it (its pid now belongs to another process)"
                say(f"note: {target}: took over the lock of {_holder(previous)}, {state}")
            else:
                say(f"note: {target}: took over the lock of {_holder(previous)}; if that process still runs, this "
                    "filesystem does not share locks between hosts: stop one of the two (docs/reliability.md)")
        body = {"pid": os.getpid(), "host": host,
                "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(body) + "\n").encode("utf-8"))
        yield path
    finally:
        # Unlink before unlocking: a process that opened the old file sees it replaced and retries.
        with contextlib.suppress(FileNotFoundError):
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                os.unlink(path)
        os.close(fd)
        _remove_empty(created)


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders (deepest first) that are still empty; another writer's files keep theirs."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()
