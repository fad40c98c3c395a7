"""One writer per run folder or output file; a dead holder's lock is taken over; readers never wait."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import run_cli
from results_fixtures import add_row

from xlpref.errors import InputError
from xlpref.runlock import hold_lock, lock_path

REPO = Path(__file__).resolve().parents[1]

HOLDER = """
import sys, time
from pathlib import Path
from xlpref.runlock import hold_lock
with hold_lock(Path(sys.argv[1]), is_folder=sys.argv[2] == "folder"):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def holder():
    """Start a real process that holds the lock of a path; yields a starter; kills what it started."""
    started: list[subprocess.Popen] = []

    def start(target: Path, *, is_folder: bool = True) -> subprocess.Popen:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        process = subprocess.Popen([sys.executable, "-c", HOLDER, str(target), "folder" if is_folder else "file"],
                                   stdout=subprocess.PIPE, text=True, env=env)
        started.append(process)
        assert process.stdout.readline().strip() == "held"
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()


def tiny_config(tmp_path: Path, run_dir: Path) -> Path:
    text = (REPO / "tests" / "fixtures" / "tiny_run.yaml").read_text().replace(
        "benchmarks/", f"{REPO}/benchmarks/")
    path = tmp_path / "tiny.yaml"
    path.write_text(text + f"run_dir: {run_dir}\n")
    return path


def test_a_second_run_of_the_same_config_exits_2_naming_the_holder(tmp_path, capsys, holder):
    run_dir = tmp_path / "runs" / "tiny"
    first = holder(run_dir)
    code, out, err = run_cli(["run", tiny_config(tmp_path, run_dir)], capsys)
    lines = [line for line in (out + err).splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, out + err
    assert lines[0].startswith("error: ") and str(run_dir) in lines[0]
    assert f"pid {first.pid} on host {socket.gethostname()}, started 20" in lines[0]
    assert sorted(p.name for p in run_dir.iterdir()) == [".xlpref.lock"]  # the second wrote nothing


def test_a_second_writer_of_an_output_file_is_refused_while_another_output_is_free(tmp_path, holder):
    output = tmp_path / "samples.jsonl"
    holder(output, is_folder=False)
    with pytest.raises(InputError, match="another xlpref process is writing here"), hold_lock(output, is_folder=False):
        pass
    with hold_lock(tmp_path / "other.jsonl", is_folder=False) as path:
        assert path == tmp_path / ".other.jsonl.lock" and path.is_file()
    assert not path.exists()


def test_the_lock_of_a_sigkilled_holder_is_taken_over_with_one_line(tmp_path, holder):
    run_dir = tmp_path / "run"
    killed = holder(run_dir)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert json.loads(lock_path(run_dir, is_folder=True).read_text())["pid"] == killed.pid  # left behind
    said: list[str] = []
    with hold_lock(run_dir, is_folder=True, say=said.append) as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert len(said) == 1 and f"took over the lock of pid {killed.pid}" in said[0]
    assert "no longer running" in said[0]
    assert not path.exists() and run_dir.is_dir()


def test_a_lock_left_by_another_host_is_taken_over_with_a_warning_about_shared_filesystems(tmp_path):
    path = lock_path(tmp_path / "run", is_folder=True)
    path.parent.mkdir()
    path.write_text(json.dumps({"pid": 1, "host": "other-node", "started": "2026-01-01T00:00:00+00:00"}))
    said: list[str] = []
    with hold_lock(tmp_path / "run", is_folder=True, say=said.append):
        pass
    assert len(said) == 1 and "host other-node" in said[0] and "does not share locks between hosts" in said[0]


def test_a_refused_writer_leaves_no_folder_it_created(tmp_path):
    (tmp_path / "blocker").write_text("a regular file")
    with pytest.raises(InputError, match="cannot create run directory"), \
            hold_lock(tmp_path / "blocker" / "run", is_folder=True, what="run directory"):
        pass
    with hold_lock(tmp_path / "new" / "run", is_folder=True):
        pass
    assert not (tmp_path / "new").exists()


def test_readers_are_never_blocked_by_a_writer(tmp_path, capsys, holder):
    results = tmp_path / "results"
    add_row(results, "demo-iter0", {"en": (10.0, 9.0)}, annotations={"en": [0.2, 0.6, 0.4]})
    add_row(results, "demo-iter1", {"en": (12.0, 11.0)}, annotations={"en": [0.5, 0.7, 0.6]})
    holder(results)
    for folder in results.iterdir():
        if folder.is_dir():
            holder(folder)
    code, out, err = run_cli(["leaderboard", "--results-dir", results, "--no-published", "--width", "120"], capsys)
    assert code == 0, err
    code, out, err = run_cli(["compare", "demo-iter0", "demo-iter1", "--results-dir", results, "--n-boot", "100"],
                             capsys)
    assert code == 0 and "en" in out, err
