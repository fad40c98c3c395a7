"""The run store: manifest, atomic writes, resumable record logs, paths that stay inside the run."""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from harness.store import RunStore
from xlpref.records import RecordLog
from xlpref.errors import InputError
from xlpref.jsonio import atomic_open, read_jsonl, write_json_atomic, write_jsonl_atomic

REPO = Path(__file__).resolve().parents[1]
KEY = ("lang", "id", "sample_index")


def _records(langs=("en", "es"), ids=range(1, 6), samples=2) -> list[dict]:
    return [{"lang": lang, "id": i, "sample_index": s, "text": f"{lang}-{i}-{s}", "score": i * 0.5 - s}
            for lang in langs for i in ids for s in range(samples)]


def _key(rec: dict) -> tuple:
    return tuple(rec[k] for k in KEY)


# -- manifest ------------------------------------------------------------------------------------

def test_manifest_records_config_hash_git_packages_host_and_times(tmp_path):
    store = RunStore(tmp_path / "run")
    config = {"model": "tiny-random-llama", "langs": ["en", "es"], "beta": 0.1}
    manifest = store.write_manifest(config, annotator="implicit-reward")
    assert store.read_manifest() == manifest
    canonical = json.dumps(config, sort_keys=True, ensure_ascii=False)
    assert manifest["config"] == config
    assert manifest["config_hash"] == hashlib.sha256(canonical.encode()).hexdigest()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    if head.returncode == 0:
        assert manifest["git_revision"] == head.stdout.strip()
    for name in ("torch", "transformers", "click"):
        assert manifest["packages"][name] == importlib.metadata.version(name)
    assert manifest["host"]["hostname"] == socket.gethostname() and manifest["host"]["cpus"] == os.cpu_count()
    created = dt.datetime.fromisoformat(manifest["created"])
    assert abs((dt.datetime.now(dt.timezone.utc) - created).total_seconds()) < 60
    assert manifest["annotator"] == "implicit-reward"


def test_manifest_rewrite_keeps_creation_time_extras_and_old_hashes(tmp_path):
    store = RunStore(tmp_path)
    first = store.write_manifest({"beta": 0.1}, annotator="implicit-reward")
    store.write_manifest({"beta": 0.1})
    assert store.read_manifest()["annotator"] == "implicit-reward"  # a resume does not drop it
    second = store.write_manifest({"beta": 0.2})
    assert second["created"] == first["created"]
    assert second["previous_config_hashes"] == [first["config_hash"]]
    assert second["config_hash"] != first["config_hash"]


def test_stage_bookkeeping(tmp_path):
    store = RunStore(tmp_path)
    assert not store.is_done("sample")
    store.mark_done("sample", {"records": 20})
    assert RunStore(tmp_path).is_done("sample") and store.stages()["sample"]["records"] == 20


# -- atomic writes -----------------------------------------------------------------------------------

def test_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "annotations.json"
    write_json_atomic(target, {"version": 1})
    with pytest.raises(RuntimeError):
        with atomic_open(target) as handle:
            handle.write('{"version": 2, "rows": [')
            raise RuntimeError("crash in the middle of a write")

    def rows():
        yield {"a": 1}
        raise RuntimeError("crash while producing rows")

    with pytest.raises(RuntimeError):
        write_jsonl_atomic(tmp_path / "samples.jsonl", rows())
    with pytest.raises(ValueError):  # NaN is refused before anything replaces the file
        write_json_atomic(target, {"score": float("nan")})
    assert json.loads(target.read_text()) == {"version": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["annotations.json"]


def test_store_writers_are_atomic_and_stay_inside(tmp_path):
    store = RunStore(tmp_path)
    path = store.write_json("eval/iter0/metrics.json", {"win_rate": 12.5})
    assert path == (tmp_path / "eval" / "iter0" / "metrics.json").resolve()
    assert json.loads(path.read_text()) == {"win_rate": 12.5}
    assert store.write_text("notes.txt", "ok").read_text() == "ok"


# -- resumable record logs -----------------------------------------------------------------------------

def test_resume_after_crash_with_torn_last_line_equals_uninterrupted_run(tmp_path):
    work = _records()
    order = [_key(r) for r in work]

    clean = RunStore(tmp_path / "clean").record_log("samples", KEY)
    for start in range(0, len(work), 4):
        clean.append(work[start:start + 4])
    clean.finish(order)

    store = RunStore(tmp_path / "crashed")
    log = store.record_log("samples", KEY)
    log.append(work[:8])
    with open(log.partial_path, "a", encoding="utf-8") as handle:  # the crash: half a line
        handle.write(json.dumps(work[8])[:25])

    resumed = store.record_log("samples", KEY)
    assert resumed.done_keys == {_key(r) for r in work[:8]}
    todo = [r for r in work if _key(r) not in resumed.done_keys]
    assert len(todo) == len(work) - 8
    resumed.append(work[6:10])  # overlaps what is done: no duplicates
    resumed.append(todo)
    assert len(read_jsonl(resumed.partial_path)) == len(work)
    rows = resumed.finish(order)
    assert [_key(r) for r in rows] == order
    assert (tmp_path / "crashed" / "samples.jsonl").read_bytes() == (tmp_path / "clean" / "samples.jsonl").read_bytes()
    assert not resumed.partial_path.exists()


def test_finish_writes_in_the_requested_order_and_refuses_gaps(tmp_path):
    work = _records(langs=("de",), ids=range(1, 4), samples=1)
    log = RecordLog(tmp_path / "scores.jsonl", KEY)
    log.append(list(reversed(work)))
    with pytest.raises(RuntimeError, match="1 records missing"):
        log.finish([_key(r) for r in work] + [("de", 99, 0)])
    assert not (tmp_path / "scores.jsonl").exists()
    log.finish([_key(r) for r in work])
    assert read_jsonl(tmp_path / "scores.jsonl") == work


def test_finished_log_is_reread_and_closed(tmp_path):
    work = _records(ids=range(1, 3), samples=1)
    log = RecordLog(tmp_path / "pairs.jsonl", KEY)
    log.append(work)
    log.finish()
    again = RecordLog(tmp_path / "pairs.jsonl", KEY)
    assert again.is_finished and again.records == work
    with pytest.raises(RuntimeError, match="finished"):
        again.append(_records(langs=("fr",), ids=[1], samples=1))


def test_corruption_before_the_last_line_is_an_error(tmp_path):
    path = tmp_path / "samples.partial.jsonl"
    good = '{"lang": "en", "id": %d, "sample_index": 0}\n'
    path.write_text(good % 1 + '{"lang": \n' + good % 2)
    with pytest.raises(InputError, match="line 2"):
        RecordLog(tmp_path / "samples.jsonl", KEY)


def test_record_without_key_field_is_refused(tmp_path):
    log = RecordLog(tmp_path / "samples.jsonl", KEY)
    with pytest.raises(InputError, match="lacks key field 'sample_index'"):
        log.append([{"lang": "en", "id": 1}])


# -- safe paths ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("parts", [("..", "escape.json"), ("/etc", "passwd"), ("a/../../b",), ("",), (".",),
                                   ("x\x00y",)])
def test_paths_that_leave_the_run_are_refused(tmp_path, parts):
    store = RunStore(tmp_path / "run")
    with pytest.raises(InputError):
        store.path(*parts)


def test_named_artifacts_cannot_escape(tmp_path):
    store = RunStore(tmp_path / "run")
    with pytest.raises(InputError):
        store.record_log("../samples", KEY)
    with pytest.raises(InputError):
        store.write_json("../../metrics.json", {})
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", tmp_path / "run" / "link")
    with pytest.raises(InputError, match="leaves"):
        store.path("link", "file.json")
    assert list((tmp_path / "outside").iterdir()) == [] and not (tmp_path / "metrics.json").exists()
    assert store.path("eval", "iter0", "model_outputs.json").is_relative_to((tmp_path / "run").resolve())
