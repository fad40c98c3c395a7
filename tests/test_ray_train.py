"""DPO on Ray Train (xlpref.ray_train): two workers on a two-node Ray cluster on this machine against the
2-rank accelerate run, and a worker killed mid-epoch that Ray Train restarts from the last checkpoint.

The cluster is ``ray.cluster_utils.Cluster``: two raylets with one CPU each, so each of the two
workers runs on its own node and the gloo process group spans both. The settings are those of
tests/test_distributed.py (16 pairs, batch 2 per rank, 4 optimizer steps), whose tolerances apply:
losses within 1e-4 relative, weights within 1e-4.

Budget: about 2-3 minutes on 2 shared cores (one accelerate launch, two Ray Train runs, one of
them restarted once).
"""

from __future__ import annotations

import time

import pytest
from ray_helpers import two_node_ray_cluster

from test_distributed import COMMON, LOSS_RTOL, PAIRS, WEIGHT_ATOL, losses, max_weight_difference
from xlpref.distributed import launch_training, read_rank_records
from xlpref.ray_progress import ALIVE_S, ProgressBoard
from xlpref.training import TrainConfig

ray = pytest.importorskip("ray")
SETTINGS = TrainConfig(batch_size=2, grad_accum=1, **COMMON)
#: Rank 1 kills itself at the end of step 3; the last checkpoint before it is step 2's.
KILL_STEP, CHECKPOINT_STEPS = 3, 2


@pytest.fixture(scope="module")
def two_node_cluster():
    with two_node_ray_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def trained(two_node_cluster, tmp_path_factory):
    """The accelerate 2-rank run, the Ray Train run, and the Ray Train run whose rank 1 was killed once."""
    from xlpref.cluster import ComputeConfig, ray_session
    from xlpref.ray_train import KILL_HOOK, train_on_ray

    root = tmp_path_factory.mktemp("ray_train")
    accelerate = launch_training("tiny-random-llama", PAIRS, root / "accelerate", SETTINGS, launcher="accelerate",
                                 num_processes=2, timeout_s=600)
    compute = ComputeConfig(engine="ray", address=two_node_cluster.address, workers=2)
    marker = root / "killed.marker"
    with ray_session(compute) as cluster:
        assert len(cluster["nodes"]) == 2
        fault_free = train_on_ray("tiny-random-llama", PAIRS, root / "ray", SETTINGS, num_workers=2, compute=compute,
                                  checkpoint_steps=CHECKPOINT_STEPS)
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv(KILL_HOOK, f"1:{KILL_STEP}:{marker}")
            started = time.monotonic()
            killed = train_on_ray("tiny-random-llama", PAIRS, root / "ray_killed", SETTINGS, num_workers=2,
                                  compute=compute, checkpoint_steps=CHECKPOINT_STEPS)
            killed_s = time.monotonic() - started
    return {"accelerate": accelerate, "ray": fault_free, "killed": killed, "marker": marker, "killed_s": killed_s}


def test_ray_train_on_two_nodes_matches_the_accelerate_run(trained):
    accelerate, on_ray = trained["accelerate"], trained["ray"]
    ranks = read_rank_records(on_ray.output_dir)
    # One 2-rank job whose ranks ran on the two nodes, each half the micro-batches.
    assert [(r["rank"], r["world_size"]) for r in ranks] == [(0, 2), (1, 2)]
    assert len({r["node_id"] for r in ranks}) == 2
    assert [(r["micro_batches"], r["optimizer_steps"]) for r in ranks] == [(4, 4), (4, 4)]
    expected = losses(read_rank_records(accelerate.output_dir)[0]["loss_history"])
    assert len(expected) == 4
    assert losses(ranks[0]["loss_history"]) == pytest.approx(expected, rel=LOSS_RTOL)
    assert max_weight_difference(on_ray.output_dir, accelerate.output_dir) <= WEIGHT_ATOL
    # Ray Train's checkpoints are gone once the model is written.
    assert not on_ray.output_dir.with_name("ray.ray").exists()


def test_ray_train_worker_killed_mid_epoch_resumes_from_the_last_checkpoint(trained):
    assert trained["marker"].exists(), "the test hook did not kill rank 1"
    killed, fault_free = trained["killed"], trained["ray"]
    ranks = read_rank_records(killed.output_dir)
    # Both ranks were restarted and continued from step 2's checkpoint, not from the start.
    assert [r["resumed_from_step"] for r in ranks] == [CHECKPOINT_STEPS, CHECKPOINT_STEPS]
    assert [(r["rank"], r["world_size"], r["optimizer_steps"], r["micro_batches"]) for r in ranks] == \
        [(0, 2, 4, 4), (1, 2, 4, 4)]
    # The same training as without the failure: losses (the checkpoint's log rows included) and weights.
    assert losses(ranks[0]["loss_history"]) == pytest.approx(
        losses(read_rank_records(fault_free.output_dir)[0]["loss_history"]), rel=LOSS_RTOL)
    assert max_weight_difference(killed.output_dir, fault_free.output_dir) <= WEIGHT_ATOL
    assert killed.steps == 4
    # The run's totals go on from the checkpoint: the mean loss over all 4 steps, trl's token count.
    assert killed.metrics["train_loss"] == pytest.approx(fault_free.metrics["train_loss"], rel=LOSS_RTOL)
    assert [row["num_tokens"] for row in killed.metrics["loss_history"]] == \
        [row["num_tokens"] for row in fault_free.metrics["loss_history"]]


def test_ray_train_progress_board_counts_work_and_the_workers_alive(monkeypatch):
    import xlpref.ray_progress as progress

    clock = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    board = ProgressBoard()
    board.report("rank0", 3)
    board.report("rank1", 2)
    assert board.snapshot() == {"done": 5, "alive": 2}  # records: each worker its share
    assert board.snapshot("max") == {"done": 3, "alive": 2}  # training: the furthest rank's step
    clock[0] += ALIVE_S + 1
    board.report("rank0", 4)  # rank 1 went silent (killed): no longer alive, its work still counted
    assert board.snapshot() == {"done": 6, "alive": 1}
    board.report("rank1", 2)  # restarted
    assert board.snapshot()["alive"] == 2


def test_ray_train_deepspeed_workers_get_the_environment_accelerate_launch_sets():
    """Under Ray Train no launcher runs: each worker gets what `accelerate launch` sets from the ZeRO config."""
    from xlpref.ray_train import _deepspeed_env

    zero3 = _deepspeed_env("zero3", 16)
    assert (zero3["ACCELERATE_USE_DEEPSPEED"], zero3["ACCELERATE_DEEPSPEED_ZERO_STAGE"]) == ("true", "3")
    assert zero3["ACCELERATE_MIXED_PRECISION"] == "bf16" and zero3["ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL"] == "true"
    assert _deepspeed_env("zero2", 16)["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "2"
    assert _deepspeed_env(None, 2) == {}


def test_ray_train_progress_names_the_dashboard_only_when_it_is_on(monkeypatch):
    from xlpref.ray_progress import dashboard_url

    monkeypatch.delenv("RAY_OVERRIDE_DASHBOARD_URL", raising=False)
    if not ray.is_initialized():
        assert dashboard_url(ray) is None  # no session, no dashboard
    monkeypatch.setenv("RAY_OVERRIDE_DASHBOARD_URL", "http://10.0.0.1:8265")
    assert dashboard_url(ray) == "10.0.0.1:8265"


def test_ray_train_ranks_the_cluster_cannot_hold_are_refused_before_any_work():
    from xlpref.cluster import ComputeConfig
    from xlpref.errors import InputError
    from xlpref.ray_train import check_training_capacity

    two_cpus = {"CPU": 2.0}
    check_training_capacity(2, ComputeConfig(engine="ray"), two_cpus)
    with pytest.raises(InputError, match="3 training ranks x 1 CPUs need 3 CPUs; the Ray cluster has 2") as info:
        check_training_capacity(3, ComputeConfig(engine="ray"), two_cpus)
    assert info.value.field == "training.num_processes"
    with pytest.raises(InputError, match="need 16 GPUs; the Ray cluster has 8"):
        check_training_capacity(16, ComputeConfig(engine="ray", gpus_per_worker=1, cpus_per_worker=0.5),
                                {"CPU": 64.0, "GPU": 8.0})


def test_ray_train_from_the_cli_refuses_an_unreachable_cluster_and_a_launcher(tmp_path, capsys):
    from cli_helpers import run_cli

    from xlpref.jsonio import write_jsonl_atomic

    pairs = tmp_path / "pairs.jsonl"
    write_jsonl_atomic(pairs, PAIRS)
    base = ["train", "--model", "tiny-random-llama", "--pairs", pairs, "-o", tmp_path / "out", "--engine", "ray"]
    code, _, err = run_cli([*base, "--ray-address", "127.0.0.1:1"], capsys)
    assert code == 2 and "cannot reach the Ray cluster at '127.0.0.1:1'" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli([*base, "--launcher", "torchrun", "--num-processes", "2"], capsys)
    assert code == 2 and "--engine ray forms the process group itself" in err
    assert not (tmp_path / "out").exists()
