"""The CLI's commands, one module per command group; ``harness.cli`` imports each only when it runs."""

from __future__ import annotations

import functools
from typing import Any, Callable

#: The global ``--seed`` default (``harness.cli``), used too when a command runs outside the group.
DEFAULT_SEED = 42


def global_seed(obj: Any) -> int:
    """The global ``--seed`` from the click context object (:data:`DEFAULT_SEED` without one)."""
    return obj.seed if obj is not None else DEFAULT_SEED


def writes_output(parameter: str, *, is_folder: bool) -> Callable:
    """Hold the one-writer lock (:mod:`xlpref.runlock`) of the output named by ``parameter`` while the command runs.

    A second writer of the same output exits 2 naming the holder; readers are never blocked.
    """
    def decorate(command: Callable) -> Callable:
        @functools.wraps(command)
        def locked(*args: Any, **kwargs: Any) -> Any:
            from xlpref.runlock import hold_lock

            with hold_lock(kwargs[parameter], is_folder=is_folder):
                return command(*args, **kwargs)
        return locked
    return decorate
