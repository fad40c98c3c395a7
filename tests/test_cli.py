"""The ``xlpref`` command line: help, global options, ``data check``, errors and exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import run_cli

from harness.cli import COMMANDS
from xlpref.data import default_data_dir

REPO = Path(__file__).resolve().parents[1]


def run_process(*args: str) -> subprocess.CompletedProcess:
    """The installed entry point in a fresh interpreter (what a user runs)."""
    code = "import sys; from harness.cli import main; main(sys.argv[1:])"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)


def test_help_lists_every_command_without_importing_torch():
    code = ("import sys; from harness.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code in (0, None)\n"
            "print('TORCH_IMPORTED' if 'torch' in sys.modules else 'NO_TORCH')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for name in COMMANDS:
        assert f"  {name} " in proc.stdout, name
    for option in ("--run-dir", "--seed", "--verbose"):
        assert option in proc.stdout
    assert proc.stdout.strip().endswith("NO_TORCH")


def test_data_check_on_shared_data_shows_13_languages_by_805(capsys):
    folder = default_data_dir()
    if not (folder / "x_alpacaeval" / "instructions").is_dir():
        pytest.skip(f"shared data not found at {folder} (set XLPREF_DATA_DIR)")
    code, out, err = run_cli(["data", "check", "--data-dir", folder], capsys)
    assert code == 0, err
    assert "13 languages x 805 instructions" in out
    assert "gpt-4-turbo-2024-04-09" in out and "random_3000" in out
    assert "Checksums vs benchmark.yaml: 55/55 match" in out


def test_data_check_mini_flag_and_folder_agree(capsys):
    code, by_flag, _ = run_cli(["--seed", "7", "--run-dir", "/tmp/unused-run", "data", "check", "--mini"], capsys)
    assert code == 0
    assert "6 languages x 24 instructions" in by_flag and "English preference pairs: 52" in by_flag
    code, by_dir, _ = run_cli(["data", "check", "--data-dir", REPO / "benchmarks/x_alpacaeval/mini"], capsys)
    assert code == 0 and by_dir.split("\n", 1)[1] == by_flag.split("\n", 1)[1]


def test_usage_errors_exit_2(capsys):
    code, _, err = run_cli(["data", "check", "--mini", "--data-dir", "x"], capsys)
    assert code == 2 and "either --data-dir or --mini" in err
    code, _, err = run_cli(["no-such-command"], capsys)
    assert code == 2 and "No such command" in err
    code, _, err = run_cli(["--seed", "many", "data", "check"], capsys)
    assert code == 2 and "--seed" in err


def test_tracebacks_only_with_verbose(tmp_path):
    quiet = run_process("data", "check", "--data-dir", str(tmp_path / "missing"))
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr
    assert quiet.stderr.strip().count("\n") == 0 and "data folder not found" in quiet.stderr
    loud = run_process("-v", "data", "check", "--data-dir", str(tmp_path / "missing"))
    assert loud.returncode != 0 and "Traceback" in loud.stderr and "InputError" in loud.stderr
