"""The CLI's commands, one module per command group; ``harness.cli`` imports each only when it runs."""

from __future__ import annotations

from typing import Any

#: The global ``--seed`` default (``harness.cli``), used too when a command runs outside the group.
DEFAULT_SEED = 42


def global_seed(obj: Any) -> int:
    """The global ``--seed`` from the click context object (:data:`DEFAULT_SEED` without one)."""
    return obj.seed if obj is not None else DEFAULT_SEED
