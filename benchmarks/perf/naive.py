"""Naive baselines the benchmarks compare against, written the way the authors' scoring code works.

:func:`naive_response_logprobs` is the reference scorer the benchmark compares against: items in their given order in
fixed batches of 3, each row the full prompt + response re-encoded (no prompt reuse), right-padded to
the batch's longest row, the model's full logits at every position and a full-vocabulary
log-softmax over them, then the response tokens' values gathered and summed.
:func:`naive_implicit_rewards` runs it once per model, two separate passes. Both are plain, so the
tests also use them as the independent check of the optimised scorer (:mod:`xlpref.logprobs`).

Example::

    from xlpref.models import build_tiny_model
    from benchmarks.perf.naive import naive_response_logprobs
    model, tok = build_tiny_model("tiny-random-llama")
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)["input_ids"]
    print(naive_response_logprobs(model, [(prompt, tok("Hello", add_special_tokens=False).input_ids)]))
"""

from __future__ import annotations

from typing import Any

#: The authors' scoring batch size.
NAIVE_BATCH_SIZE = 3


def naive_response_logprobs(model: Any, items: list[tuple[list[int], list[int]]], *,
                            batch_size: int = NAIVE_BATCH_SIZE) -> list[float]:
    """Summed log p(response | prompt) per item: full logits and log-softmax at every position."""
    import torch

    pad_id = getattr(model.config, "pad_token_id", None) or 0
    device = next(model.parameters()).device
    totals: list[float] = []
    with torch.inference_mode():
        for start in range(0, len(items), batch_size):
            batch = items[start:start + batch_size]
            width = max(len(p) + len(r) for p, r in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
            labels = torch.full((len(batch), width), -100, dtype=torch.long)
            for row, (prompt, response) in enumerate(batch):
                sequence = prompt + response
                input_ids[row, : len(sequence)] = torch.tensor(sequence)
                attention_mask[row, : len(sequence)] = 1
                labels[row, len(prompt): len(sequence)] = torch.tensor(response, dtype=torch.long)
            logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
            logprobs = torch.log_softmax(logits.float(), dim=-1)[:, :-1]
            targets = labels[:, 1:].to(device)
            mask = targets != -100
            per_token = logprobs.gather(2, targets.clamp(min=0)[..., None]).squeeze(2)
            totals.extend((per_token.double() * mask).sum(-1).cpu().tolist())
    return totals


def naive_implicit_rewards(policy: Any, reference: Any, items: list[tuple[list[int], list[int]]]) -> list[float]:
    """``log pi_policy - log pi_reference`` per item, the two models in two separate passes."""
    logp_policy = naive_response_logprobs(policy, items)
    logp_reference = naive_response_logprobs(reference, items)
    return [p - r for p, r in zip(logp_policy, logp_reference)]
