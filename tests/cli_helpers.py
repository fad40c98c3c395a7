"""Running ``xlpref`` in-process from tests.

Example::

    from cli_helpers import run_cli
    code, out, err = run_cli(["models", "list"], capsys)
"""

from __future__ import annotations


def run_cli(args: list, capsys) -> tuple[int, str, str]:
    """``xlpref ARGS`` through the real entry point; returns (exit code, stdout, stderr)."""
    from harness.cli import main

    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err
