"""The whole loop on Ray: ``xlpref run`` with ``compute: {engine: ray, workers: 2}`` against the local run.

Two runs of the tiny 2-iteration config (tests/fixtures/tiny_run.yaml plus that one line), each
started as a user would (``python -m harness.cli run``, its own process group):

- on a local Ray instance the run starts itself, with the driver SIGKILLed (its whole process group,
  the Ray instance it started included) once Ray Train has reported a checkpoint of iteration 0's
  training, and started again with the same command;
- on a two-node Ray cluster on this machine (``ray.cluster_utils.Cluster``, two raylets with one
  CPU each) that the run joins (``compute.address``).

Both must end with the uninterrupted local run's artifacts (the session's ``tiny_reference_run``,
compared as tests/test_crash_resume.py compares them): the same samples, scores, pairs, metrics and
trained weights. Left out: the manifest (it records the config with its compute block and the
cluster) and the rank records (``model/ranks/``), which only a multi-process training writes.

Budget: about 4-6 minutes on 2 shared cores (the reference run, if no other test made it, and two
runs on Ray with Ray's start-up).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from ray_helpers import two_node_ray_cluster
from test_crash_resume import artifacts
from tiny_run import TINY_CONFIG, finished_stages, kill_group, start_tiny_run, watch

ray = pytest.importorskip("ray")
RAY_LINE = "compute: {engine: ray, workers: 2}\n"


def ray_config(folder: Path, line: str = RAY_LINE) -> Path:
    path = folder / "tiny_ray.yaml"
    path.write_text(TINY_CONFIG.read_text(encoding="utf-8") + line, encoding="utf-8")
    return path


def comparable(run_dir: Path) -> dict:
    return {name: value for name, value in artifacts(run_dir).items()
            if name != "manifest.json" and "/ranks/" not in name
            and not name.endswith("stages.json")}  # bookkeeping: a Ray stage adds its workers and nodes


def assert_same_run(run_dir: Path, reference: Path) -> None:
    found, expected = comparable(run_dir), comparable(reference)
    assert sorted(found) == sorted(expected)
    different = [name for name in expected if found[name] != expected[name]]
    assert not different, f"differ from the local run: {different}"


def test_ray_loop_config_may_move_a_started_run_between_engines():
    """Where stages run changes no artifact, so a run started locally may go on on Ray (and back)."""
    from harness.loop import config_dependents

    assert config_dependents("compute.engine") == config_dependents("compute.workers") == ()


def _wait_for_checkpoint(proc, run_dir: Path, timeout_s: float = 600) -> bool:
    """Poll until Ray Train has registered a checkpoint of iteration 0's training (its checkpoint manager's
    snapshot names one: what a new driver restores from); False when the stage ended first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        snapshots = (run_dir / "iter_0" / "model.ray").glob("train-*/checkpoint_manager_snapshot.json")
        if any("checkpoint-" in path.read_text(errors="replace") for path in snapshots):
            return True
        if "iter_0/train" in finished_stages(run_dir):
            return False
        time.sleep(0.05)
    return False


def test_ray_loop_driver_killed_in_training_resumes_and_matches_the_local_run(tiny_reference_run, tmp_path):
    config = ray_config(tmp_path)
    run_dir, log_path = tmp_path / "run", tmp_path / "run.log"
    proc = start_tiny_run(run_dir, log_path, config=config)
    hit = _wait_for_checkpoint(proc, run_dir)
    kill_group(proc)
    assert hit, f"the run never reached a training checkpoint:\n{log_path.read_text(errors='replace')[-3000:]}"
    assert "iter_0/train" not in finished_stages(run_dir)

    again = watch(start_tiny_run(run_dir, tmp_path / "run2.log", config=config), run_dir, tmp_path / "run2.log")
    log = (tmp_path / "run2.log").read_text(errors="replace")
    assert again.returncode == 0, log[-3000:]
    rank0 = json.loads((run_dir / "iter_0" / "model" / "ranks" / "rank0.json").read_text())
    assert rank0["resumed_from_step"] >= 1  # the new driver's Ray Train run went on from the killed one's checkpoint
    assert not (run_dir / "iter_0" / "model.ray").exists()
    # One bar per Ray stage: optimizer steps, workers alive, the cluster's GPUs.
    assert "iter_1/train" in log and "workers alive" in log and "GPUs in use" in log
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["cluster"]["ray_version"] == ray.__version__ and len(manifest["cluster"]["nodes"]) == 1
    assert_same_run(run_dir, tiny_reference_run.run_dir)


@pytest.fixture
def two_node_cluster():
    with two_node_ray_cluster() as cluster:
        yield cluster


def test_ray_loop_on_a_two_node_cluster_matches_the_local_run(tiny_reference_run, two_node_cluster, tmp_path):
    address = two_node_cluster.address
    config = ray_config(tmp_path, f"compute: {{engine: ray, workers: 2, address: '{address}'}}\n")
    run_dir, log_path = tmp_path / "run", tmp_path / "run.log"
    timeline = watch(start_tiny_run(run_dir, log_path, config=config), run_dir, log_path)
    assert timeline.returncode == 0, log_path.read_text(errors="replace")[-3000:]
    cluster = json.loads((run_dir / "manifest.json").read_text())["cluster"]
    assert len(cluster["nodes"]) == 2 and cluster["resources"]["CPU"] == 2
    assert "Ray " in log_path.read_text() and "2 nodes" in log_path.read_text()
    assert_same_run(run_dir, tiny_reference_run.run_dir)
