"""Summed log-probabilities of responses given prompts, without full-vocabulary logits.

``response_logprobs(model, [(prompt_ids, response_ids), ...])`` returns, per item, the sum over the
response positions of ``log p(token | all before)`` (fp32 log-softmax, float64 sum). transformers'
causal-LM forward computes logits for every position; for a 262k vocabulary and thousands of
tokens that is gigabytes spent on prompt positions, hence this path:

- each distinct prompt runs once through the base model; its KV cache is repeated over the
  responses that share it, which run right-padded after it (attention mask over prompt + response,
  position ids continuing the prompt's), so padding changes nothing for the real tokens;
- the output projection (with the model's logit scale / soft-capping) is applied only at the states
  predicting response tokens, :data:`LOGITS_CHUNK_ELEMENTS` logits at a time, each chunk's
  log-softmax reduced at once to the target tokens' values; the last response token is never fed
  (nothing it predicts counts);
- responses are length-sorted (longest first) and cut into batches of at most ``max_batch_tokens``
  padded tokens, prompt included (a single longer item runs alone).

A result does not depend on the batch it ran in (equal within 1e-4 in fp32; tests check it).

Example::

    from xlpref.models import build_tiny_model
    from xlpref.logprobs import response_logprobs
    model, tok = build_tiny_model("tiny-random-llama")
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)["input_ids"]
    print(response_logprobs(model, [(prompt, tok("Hello", add_special_tokens=False).input_ids)]))
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from typing import Any

from xlpref.errors import InputError

#: Rows x vocabulary of one logits chunk (fp32: 256 MiB), bounding memory whatever the vocabulary.
LOGITS_CHUNK_ELEMENTS = 1 << 26

#: (prompt token ids, response token ids)
Item = tuple[list[int], list[int]]


@contextlib.contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    # Dropout would make log-probabilities random; restore the caller's mode afterwards.
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _plan_chunks(lengths: Sequence[int], prompt_length: int, max_batch_tokens: int) -> list[list[int]]:
    """Response indices, longest first, cut so that rows x (prompt + longest response) fits the budget."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    chunks: list[list[int]] = []
    for index in order:
        if chunks and (len(chunks[-1]) + 1) * (prompt_length + lengths[chunks[-1][0]]) <= max_batch_tokens:
            chunks[-1].append(index)
        else:
            chunks.append([index])
    return chunks


class _TokenLogprobs:
    """Target-token log-probabilities from final hidden states, chunk by chunk (fp32)."""

    def __init__(self, model: Any) -> None:
        self.head = model.get_output_embeddings()
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.softcap = getattr(config, "final_logit_softcapping", None)
        self.scale = getattr(config, "logit_scale", None)  # Cohere-style heads multiply the logits
        self.rows = max(1, LOGITS_CHUNK_ELEMENTS // self.head.weight.shape[0])

    def __call__(self, hidden: Any, targets: Any) -> Any:
        import torch

        out = []
        for start in range(0, hidden.shape[0], self.rows):
            logits = self.head(hidden[start:start + self.rows]).float()
            if self.scale is not None:
                logits = logits * self.scale
            if self.softcap is not None:
                logits = torch.tanh(logits / self.softcap) * self.softcap
            # log_softmax on a bounded chunk (not logit - logsumexp): the same rounding as a plain
            # full-sequence computation, so hand checks agree to the last bit where the states do.
            logprobs = torch.log_softmax(logits, dim=-1)
            out.append(logprobs.gather(1, targets[start:start + self.rows, None]).squeeze(1))
        return torch.cat(out)


def _score_prompt_group(model: Any, token_logprobs: _TokenLogprobs, prompt: list[int], responses: list[list[int]],
                        max_batch_tokens: int, device: Any, pad_id: int) -> list[float]:
    """Summed log p(response | prompt) for responses sharing one prompt (the prompt runs once)."""
    import torch

    base = model.base_model
    prompt_ids = torch.tensor([prompt], device=device)
    prefix = base(input_ids=prompt_ids, use_cache=True)
    last_hidden = prefix.last_hidden_state[0, -1]
    totals = [0.0] * len(responses)
    for chunk in _plan_chunks([len(r) for r in responses], len(prompt), max_batch_tokens):
        rows = [responses[i] for i in chunk if responses[i]]
        if not rows:
            continue
        # Response token j is predicted by the state after token j - 1; token 0 by the prompt's last state,
        # so the last response token never needs to be fed.
        fed = max(len(r) for r in rows) - 1
        if fed > 0:
            ids = torch.full((len(rows), fed), pad_id, dtype=torch.long, device=device)
            mask = torch.zeros((len(rows), len(prompt) + fed), dtype=torch.long, device=device)
            mask[:, : len(prompt)] = 1
            for row, response in enumerate(rows):
                ids[row, : len(response) - 1] = torch.tensor(response[:-1], device=device)
                mask[row, len(prompt): len(prompt) + len(response) - 1] = 1
            positions = torch.arange(len(prompt), len(prompt) + fed, device=device).expand(len(rows), fed)
            cache = copy.deepcopy(prefix.past_key_values)
            cache.batch_repeat_interleave(len(rows))
            states = base(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                          use_cache=True).last_hidden_state
            hidden_rows = [torch.cat([last_hidden[None], states[row, : len(r) - 1]]) for row, r in enumerate(rows)]
        else:
            hidden_rows = [last_hidden[None] for _ in rows]
        hidden = torch.cat(hidden_rows)
        targets = torch.tensor([t for r in rows for t in r], device=device)
        per_token = token_logprobs(hidden, targets).double().cpu()
        sums = torch.split(per_token, [len(r) for r in rows])
        nonempty = [i for i in chunk if responses[i]]
        for index, values in zip(nonempty, sums):
            totals[index] = float(values.sum())
    return totals


def response_logprobs(model: Any, sequences: list[Item], *, max_batch_tokens: int = 4096,
                      device: Any = None) -> list[float]:
    """Sum of ``log p(response token | all before)`` over the response tokens of each (prompt, response).

    Args:
        sequences: (prompt ids, response ids) items; items with the same prompt share its forward pass.
        max_batch_tokens: padded tokens (prompt included) per forward pass; a longer item runs alone.
        device: where the inputs go (default: the device of the model's parameters).

    Raises:
        InputError: an empty prompt, or token ids outside the model's vocabulary.
    """
    import torch

    if max_batch_tokens < 1:
        raise InputError(f"got {max_batch_tokens}; expected an integer >= 1", field="max_batch_tokens")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    vocab = model.get_input_embeddings().num_embeddings
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, (prompt, response) in enumerate(sequences):
        if not prompt:
            raise InputError("empty prompt; expected at least one token before the response", record=index)
        lowest, highest = min(min(prompt), min(response, default=0)), max(max(prompt), max(response, default=0))
        if lowest < 0 or highest >= vocab:
            raise InputError(f"token id {highest if highest >= vocab else lowest} outside the model's vocabulary "
                             f"of {vocab}; expected the policy's tokenizer", record=index)
        groups.setdefault(tuple(prompt), []).append(index)
    pad_id = getattr(model.config, "pad_token_id", None) or 0
    token_logprobs = _TokenLogprobs(model)
    totals = [0.0] * len(sequences)
    with _eval_mode(model), torch.inference_mode():
        for prompt, members in groups.items():
            sums = _score_prompt_group(model, token_logprobs, list(prompt), [list(sequences[i][1]) for i in members],
                                       max_batch_tokens, device, pad_id)
            for index, value in zip(members, sums):
                totals[index] = value
    return totals

