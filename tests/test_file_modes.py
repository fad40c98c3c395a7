"""New artifacts get the mode the process umask gives, atomic writes and results rows included."""

from __future__ import annotations

import os
import stat

import pytest
from results_fixtures import add_row

from xlpref.jsonio import (
    append_jsonl_durably,
    current_umask,
    write_json_atomic,
    write_jsonl_atomic,
    write_text_atomic,
)


@pytest.fixture
def umask():
    """Set a umask for one test and restore the previous one afterwards."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask, file_mode, folder_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700),
                                                          (0o002, 0o664, 0o775)])
def test_new_files_and_row_folders_get_the_mode_the_umask_gives(tmp_path, umask, mask, file_mode, folder_mode):
    umask(mask)
    assert current_umask() == mask
    write_json_atomic(tmp_path / "a.json", {"x": 1})
    write_jsonl_atomic(tmp_path / "b.jsonl", [{"x": 1}])
    write_text_atomic(tmp_path / "c.md", "text\n")
    append_jsonl_durably(tmp_path / "d.jsonl", [{"x": 1}])
    for name in ("a.json", "b.jsonl", "c.md", "d.jsonl"):
        assert mode(tmp_path / name) == file_mode, name
    row = add_row(tmp_path / "results", "demo-iter0", {"en": (12.5, 10.0)}, annotations={"en": [0.1, 0.9]})
    assert mode(row) == folder_mode
    assert mode(row / "row.json") == file_mode and mode(row / "en" / "annotations.json") == file_mode


def test_replacing_a_file_gives_it_the_current_umask_mode(tmp_path, umask):
    umask(0o077)
    write_json_atomic(tmp_path / "a.json", {"x": 1})
    umask(0o022)
    write_json_atomic(tmp_path / "a.json", {"x": 2})
    assert mode(tmp_path / "a.json") == 0o644
