"""GPU code paths that a CPU can check: bf16 scoring precision, end-of-turn stop tokens, memory released
between stages, gradient checkpointing and the refusal of training that cannot fit.

Each test runs on CPU with a tiny random model; docs/scaling.md says which parts have run on a GPU.
"""

from __future__ import annotations

import pytest
import torch

import xlpref.logprobs as logprobs
from xlpref.models import build_tiny_model


def _bf16_model_with_large_logits(seed: int = 3):
    """The tiny Llama in bf16 with its (tied) output weights scaled so that logits reach about +-40,
    where bf16 keeps steps of 0.25: a logit rounded to bf16 is off by up to 0.125 nats."""
    model, tokenizer = build_tiny_model("tiny-random-llama", seed=seed)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(150.0)
    return model.to(torch.bfloat16), tokenizer


def _score_capturing_states(model, items, monkeypatch, **options):
    """Per-token log-probs from the scorer, with the hidden states and targets its projection saw."""
    seen = []
    original = logprobs._TokenLogprobs.__call__

    def recording(self, hidden, targets):
        values = original(self, hidden, targets)
        seen.append((hidden.clone(), targets.clone(), values.clone()))
        return values

    monkeypatch.setattr(logprobs._TokenLogprobs, "__call__", recording)
    logprobs.response_logprobs(model, items, **options)
    monkeypatch.setattr(logprobs._TokenLogprobs, "__call__", original)
    return seen


@torch.no_grad()
def _float64_logprobs(model, hidden, targets):
    weight = model.get_output_embeddings().weight.double()  # the same bf16 weights, exactly widened
    logits = hidden.double() @ weight.t()
    return torch.log_softmax(logits, dim=-1).gather(1, targets[:, None]).squeeze(1)


def _items(tokenizer):
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Explain why the sky is blue."}],
                                           add_generation_prompt=True)["input_ids"]
    response = tokenizer("The sea is calm and blue today. Das Meer ist heute ruhig.", add_special_tokens=False)
    return [(list(prompt), response["input_ids"]), (list(prompt), response["input_ids"][:7])]


def test_bf16_weights_are_scored_in_fp32_within_1e3_of_float64_per_token(monkeypatch):
    model, tokenizer = _bf16_model_with_large_logits()
    seen = _score_capturing_states(model, _items(tokenizer), monkeypatch)
    assert seen and all(hidden.dtype == torch.bfloat16 for hidden, _, _ in seen)
    for hidden, targets, values in seen:
        exact = _float64_logprobs(model, hidden, targets)
        assert exact.abs().max() > 1.0  # large logits: rounding them would show
        assert (values.double() - exact).abs().max() < 1e-3


@torch.no_grad()  # the scorer's states are inference tensors
def test_bf16_authors_rounding_option_rounds_logits_to_bf16_first(monkeypatch):
    model, tokenizer = _bf16_model_with_large_logits()
    seen = _score_capturing_states(model, _items(tokenizer), monkeypatch, is_rounded_to_weight_dtype=True)
    errors = []
    for hidden, targets, values in seen:
        weight = model.get_output_embeddings().weight
        rounded = (hidden.float() @ weight.float().t()).to(torch.bfloat16).double()  # the model's own bf16 logits
        authors = torch.log_softmax(rounded, dim=-1).gather(1, targets[:, None]).squeeze(1)
        assert (values.double() - authors).abs().max() < 1e-3
        errors.append((values.double() - _float64_logprobs(model, hidden, targets)).abs().max())
    assert max(errors) > 1e-2  # what fp32 scoring saves: bf16-rounded logits are this far from float64


def test_bf16_tiles_stay_within_the_memory_bound(monkeypatch):
    model, tokenizer = _bf16_model_with_large_logits()
    monkeypatch.setattr(logprobs, "LOGITS_TILE_ELEMENTS", 32 * 64)  # one row's tile: 64 columns
    widths = []
    original = logprobs._TokenLogprobs.project

    def recording(self, hidden, start, stop, out):
        widths.append((hidden.shape[0], stop - start))
        assert hidden.dtype == torch.float32 and out.dtype == torch.float32
        return original(self, hidden, start, stop, out)

    monkeypatch.setattr(logprobs._TokenLogprobs, "project", recording)
    items = _items(tokenizer)
    bounded = logprobs.response_logprobs(model, items)
    hidden_size = model.config.hidden_size
    assert widths and all(rows * width <= 32 * 64 and width * hidden_size <= 32 * 64 for rows, width in widths)
    monkeypatch.setattr(logprobs, "LOGITS_TILE_ELEMENTS", 1 << 21)
    assert bounded == pytest.approx(logprobs.response_logprobs(model, items), abs=1e-4)
