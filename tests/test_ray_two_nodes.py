"""Several machines, on one: a two-node Ray cluster (two raylets of one CPU each) scores with two workers.

The command joins the cluster by address, as it would join a real one (``--ray-address``), and its
stage summary (``SCORED.jsonl.stages.json``) says which node each worker ran on.
"""

from __future__ import annotations

import json

import pytest
from cli_helpers import run_cli
from ray_helpers import two_node_ray_cluster

from xlpref.records import RecordLog
from xlpref.sampling import SAMPLE_KEY, SampleRequest, SamplingParams, make_sampler, sample_to_log

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'xlpref[ray]')")


@pytest.fixture(scope="module")
def two_node_cluster(one_torch_thread):
    with two_node_ray_cluster() as cluster:
        yield cluster


def test_ray_scoring_on_a_two_node_cluster_puts_one_worker_on_each_node(two_node_cluster, tmp_path, capsys):
    requests = [SampleRequest(f"id{i}", lang, f"{text} ({i})", f"Say something ({i}).")
                for lang, text in (("en", "Say something"), ("es", "Di algo")) for i in range(4)]
    samples = tmp_path / "samples.jsonl"
    sample_to_log(make_sampler("hf", "tiny-random-llama"), requests, SamplingParams(n=2, max_new_tokens=6),
                  RecordLog(samples, SAMPLE_KEY), progress=False)
    output = tmp_path / "scored.jsonl"

    code, _, err = run_cli(["score", samples, "--policy", "tiny-random-llama", "--reference",
                            "tiny-random-llama-seed1", "--max-batch-tokens", 4, "-o", output, "--engine", "ray",
                            "--workers", 2, "--ray-address", two_node_cluster.address], capsys)

    assert code == 0, err
    assert all(node.remaining_processes_alive() for node in two_node_cluster.list_all_nodes())  # left running
    ray.init(address=two_node_cluster.address)
    summary = json.loads(output.with_name("scored.jsonl.stages.json").read_text(encoding="utf-8"))["score"]
    compute = summary["compute"]
    nodes = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
    assert len(nodes) == 2
    assert compute["workers"] == 2 and compute["nodes"] == 2
    assert {worker["node"] for worker in compute["per_worker"]} == nodes  # both nodes did work
    assert all(worker["records"] > 0 and worker["seconds"] > 0 for worker in compute["per_worker"])
    assert sum(worker["records"] for worker in compute["per_worker"]) == summary["records"] == 16
