"""Model specs: tiny random models, chat templates, the cache and its verification, Gemma preparation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_helpers import run_cli

from xlpref import models as xmodels
from xlpref.errors import InputError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    """An empty xlpref cache, so tests never touch ~/.cache/xlpref."""
    monkeypatch.setenv("XLPREF_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.parametrize("spec", xmodels.TINY_SPECS)
def test_tiny_model_builds_and_runs(spec):
    model, tok = xmodels.build_tiny_model(spec)
    assert model.config.vocab_size == len(tok) and model.config.hidden_size == 32
    ids = tok("Напиши короткое стихотворение 写一首诗", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tok)) and torch.isfinite(logits).all()
    again, _ = xmodels.build_tiny_model(spec)  # same seed, same weights
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_tiny_chat_template_is_applied():
    _, tok = xmodels.build_tiny_model("tiny-random-llama")
    messages = [{"role": "user", "content": "Hola"}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "<s><start_of_turn>user\nHola<end_of_turn>\n<start_of_turn>assistant\n"
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"]
    assert tok.decode(ids) == text
    assert tok.eos_token == "<end_of_turn>" and tok.convert_tokens_to_ids("<end_of_turn>") in ids


def test_plain_template_for_a_tokenizer_without_one():
    _, tok = xmodels.build_tiny_model("tiny-random-llama")
    tok.chat_template = None
    tok.pad_token = None
    xmodels.ensure_chat_template(tok)
    assert tok.chat_template == xmodels.PLAIN_CHAT_TEMPLATE and tok.pad_token == tok.eos_token
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
             {"role": "user", "content": "Bye"}]
    text = tok.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
    assert text == "<s>User: Hi\n\nAssistant:\nHello!<end_of_turn>\n\nUser: Bye\n\nAssistant:\n"


def test_plain_template_prompt_tokens_are_a_prefix_of_prompt_and_answer():
    # What trl trains on (prompt + answer, tokenized together) must start with what the sampler and
    # the scorer condition on (the prompt alone): no token may merge across the turn boundary.
    _, tok = xmodels.build_tiny_model("tiny-random-llama")
    tok.chat_template = None
    xmodels.ensure_chat_template(tok)
    # (with a trailing space after "Assistant:", "The", "sea" and "Море" failed: " The" is one token)
    for answer in ("The sea is calm.", "sea", "Море", "  leading spaces", "今天"):
        user = [{"role": "user", "content": "Say something."}]
        prompt = tok.apply_chat_template(user, add_generation_prompt=True, tokenize=True)["input_ids"]
        full = tok.apply_chat_template(user + [{"role": "assistant", "content": answer}], tokenize=True)["input_ids"]
        assert full[: len(prompt)] == prompt, answer


def test_prepared_tiny_folder_loads_with_the_same_weights(cache):
    path = Path(xmodels.resolve_model_path("tiny-random-gemma3"))
    assert path == cache / "models" / "tiny-random-gemma3" and xmodels.is_prepared("tiny-random-gemma3")
    model, tok = xmodels.load_model("tiny-random-gemma3")
    built, _ = xmodels.build_tiny_model("tiny-random-gemma3")
    assert not model.training and model.dtype == torch.float32 and model.device.type == "cpu"
    assert tok.chat_template and tok.pad_token is not None
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in built.state_dict().items() if k in loaded)


def test_cache_check_catches_a_truncated_file_and_rebuilds(cache):
    folder = xmodels.prepare_tiny("tiny-random-llama")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-100])
    assert not xmodels.is_prepared("tiny-random-llama")
    xmodels.prepare_tiny("tiny-random-llama")
    assert weights.read_bytes() == data and xmodels.is_prepared("tiny-random-llama")
    (folder / "tokenizer.json").unlink()
    assert not xmodels.is_prepared("tiny-random-llama")


def test_cache_written_before_sizes_were_recorded_is_hashed_once(cache):
    folder = xmodels.prepare_tiny("tiny-random-llama")
    meta_path = folder / "xlpref_model.json"
    meta = json.loads(meta_path.read_text())
    sizes = meta.pop("file_sizes")
    meta_path.write_text(json.dumps(meta))
    assert xmodels.is_prepared("tiny-random-llama")  # verified by sha256, sizes recorded
    assert json.loads(meta_path.read_text())["file_sizes"] == sizes
    meta_path.write_text(json.dumps(meta))
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, different bytes: only the hash can tell
    weights.write_bytes(bytes(data))
    assert not xmodels.is_prepared("tiny-random-llama")


def test_unknown_specs_and_non_model_folders_are_refused(tmp_path, cache):
    with pytest.raises(InputError, match="unknown model 'not-a-model'"):
        xmodels.resolve_model_path("not-a-model")
    with pytest.raises(InputError, match="no config.json"):
        xmodels.resolve_model_path(str(tmp_path))
    with pytest.raises(InputError, match="unknown built-in model"):
        xmodels.is_prepared("gpt-5")


def test_cli_prepare_and_list_tiny(cache, capsys):
    code, out, _ = run_cli(["models", "prepare", "tiny-random-llama"], capsys)
    assert code == 0 and "tiny-random-llama: ready at" in out and "(built," in out
    code, out, _ = run_cli(["models", "prepare", "tiny-random-llama"], capsys)
    assert code == 0 and "(cached, file sizes verified" in out
    code, out, _ = run_cli(["models", "list"], capsys)
    assert code == 0
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.startswith("│ ") and "│" in line[1:]}
    assert "not prepared" not in rows["tiny-random-llama"] and "not prepared" in rows["tiny-random-gemma3"]
    code, _, err = run_cli(["models", "prepare", "llama-70b"], capsys)
    assert code == 2 and "unknown built-in model 'llama-70b'" in err


@pytest.mark.slow
def test_prepare_gemma_twice_second_call_is_fast():
    """On a clean machine the first call converts the packaged GGUF (about 100 s on 2 cores)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "harness.cli", "models", "prepare", "gemma-3-270m"]
    first = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr
    start = time.perf_counter()
    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    seconds = time.perf_counter() - start
    assert second.returncode == 0 and "(cached, file sizes verified" in second.stdout
    assert seconds < 10, f"second call took {seconds:.1f} s"
    folder = xmodels.cache_dir() / "models" / "gemma-3-270m"
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"].startswith("gemma3") and config["hidden_size"] == 640
