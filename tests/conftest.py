"""Shared fixtures: one uninterrupted tiny run (``xlpref run tests/fixtures/tiny_run.yaml``) per test session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from tiny_run import Timeline, start_tiny_run, watch


@dataclass
class ReferenceRun:
    """A finished, uninterrupted tiny run and its stage timeline (seconds from process start)."""

    run_dir: Path
    timeline: Timeline
    log_path: Path


@pytest.fixture(scope="session")
def tiny_reference_run(tmp_path_factory) -> ReferenceRun:
    """The 2-iteration tiny run, started once as a user would (a subprocess of the CLI), never interrupted."""
    root = tmp_path_factory.mktemp("tiny_reference")
    run_dir, log_path = root / "run", root / "run.log"
    timeline = watch(start_tiny_run(run_dir, log_path), run_dir, log_path)
    if timeline.returncode != 0:
        pytest.fail(f"the uninterrupted tiny run exited {timeline.returncode}:\n"
                    f"{log_path.read_text(errors='replace')[-3000:]}")
    return ReferenceRun(run_dir, timeline, log_path)


class FolderRecordStore:
    """The method's :class:`xlpref.records.RecordStore` over a plain folder (what the run store does, without a run)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def record_log(self, name: str, key):
        from xlpref.records import RecordLog

        return RecordLog(self.root / f"{name}.jsonl", key)


@pytest.fixture
def record_store(tmp_path) -> FolderRecordStore:
    """Record logs under ``tmp_path / "run"``, laid out as in a run directory."""
    return FolderRecordStore(tmp_path / "run")


#: The API key the judge tests put in ``$OPENAI_API_KEY``; they check it is never written anywhere.
TEST_API_KEY = "sk-test-NEVER-WRITTEN-4f1c"


@pytest.fixture
def api_key(monkeypatch) -> str:
    """``$OPENAI_API_KEY`` set to :data:`TEST_API_KEY` for the test; returns it."""
    monkeypatch.setenv("OPENAI_API_KEY", TEST_API_KEY)
    return TEST_API_KEY


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a test module: tiny models gain nothing from threads, and on a busy 2-core
    machine two threads wait on each other (10-20x slower)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
