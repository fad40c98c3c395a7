"""Summed log-probabilities of responses given prompts, without full-vocabulary logits.

``response_logprobs(model, [(prompt_ids, response_ids), ...])`` returns, per item, the sum over the
response positions of ``log p(token | all before)`` (fp32 logits whatever the weights' dtype, float64 sums);
``paired_response_logprobs(policy, reference, items)`` does it for two models on one plan.
transformers' causal-LM forward computes logits for every position; for a 262k vocabulary and
thousands of tokens that is gigabytes spent on prompt positions, hence this path:

- prompts are encoded in windows: each distinct prompt runs once per model, in one batched forward
  with the other prompts of its window (at most ``max_batch_tokens`` padded prompt tokens; prompts
  *left*-padded, position ids counting real tokens only), and its KV cache serves all its responses;
- the window's responses are sorted by length (longest first) and cut into passes of at most
  ``max_batch_tokens`` padded tokens (rows x (longest prompt + longest response); a single longer
  item runs alone), so rows of several prompts share a forward pass and padding stays small. Each
  row gets its prompt's cache and runs right-padded after it, position ids continuing its prompt's.
  Left padding keeps every prompt ending at the same cache slot, so slot distances equal token
  distances and sliding-window attention (Gemma 3) sees exactly the tokens it would see unpadded;
- the output projection (with the model's logit scale / soft-capping) is applied only at the states
  predicting response tokens, and never materialised whole: blocks of up to :data:`PROJECTION_ROWS`
  states (those of consecutive passes gathered, so a pass of a few short responses does not read the
  whole matrix for itself) meet the vocabulary in column tiles of :data:`LOGITS_TILE_ELEMENTS`
  logits, each tile reduced while it is still in the CPU's cache to a running log-sum-exp per row
  (and the target's logit where it falls in the tile); memory is bounded whatever the vocabulary
  and the lengths, and the logits never make the round trip through main memory that a
  full-vocabulary log-softmax costs (torch has no fused projection + log-sum-exp on CPU, hence this
  loop). The last response token is never fed (nothing it predicts counts);
- for two models whose output projections are equal (a LoRA-merged policy and its base share the tied
  embeddings; checked with ``torch.equal``, never assumed) the two models' states go through one
  projection, reading the 262k x hidden matrix once per block instead of twice.

A result does not depend on the pass it ran in (equal within 1e-4 in fp32; tests check it against the
naive scorer of ``benchmarks/perf/naive.py``, which re-encodes everything with full logits).

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
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from xlpref.errors import InputError

#: States projected together: each vocabulary tile of the output projection is read once per block, so
#: more rows per block mean fewer passes over the 262k x hidden matrix (4096 states of Gemma-3-270M: 10 MiB).
PROJECTION_ROWS = 4096
#: Logits per tile (fp32: 8 MiB; 4096 states x 512 columns): small enough to stay in the
#: cache between the matmul that writes it and the reductions that read it (measured on Gemma-3-270M,
#: 2 CPU cores: the projection and its log-sum-exp 1.3-1.5x faster than 1 GiB chunks and a log-softmax).
LOGITS_TILE_ELEMENTS = 1 << 21
#: Tile widths are multiples of this many columns (an unaligned width, 682 columns, ran 25% slower here).
TILE_ALIGNMENT = 64
#: Heads other than a plain ``torch.nn.Linear`` (wrapped, quantised) run whole, this many logits per call.
FALLBACK_LOGITS_ELEMENTS = 1 << 24
#: Logits per tile on an accelerator (fp32: 256 MiB), where a kernel launch per small tile would cost more
#: than the cache saves (not measured here: this project's machine has no GPU).
ACCELERATOR_LOGITS_TILE_ELEMENTS = 1 << 26

#: A response joins a pass only if it is at least this fraction of the pass's longest (sorted
#: longest first), so padding stays under a tenth of each row; the body's work on padding is waste
#: (measured on Gemma-3-270M, K = 10: 0.75 left 9.6% padding, 0.9 left 4% and the body ran 5-10%
#: faster; one response per pass, no padding at all, ran slower). Projection blocks do not depend on it.
MIN_FILL = 0.9

#: (id, id) of two compared weights -> (weak references to both, their versions, equal?)
_EQUAL_WEIGHTS: dict[tuple[int, int], tuple] = {}

#: (prompt token ids, response token ids)
Item = tuple[list[int], list[int]]


@contextlib.contextmanager
def _eval_mode(*models: Any) -> Iterator[None]:
    # Dropout would make log-probabilities random; restore the callers' modes afterwards.
    modes = [model.training for model in models]
    for model in models:
        model.eval()
    try:
        yield
    finally:
        for model, was_training in zip(models, modes):
            model.train(was_training)


@dataclass
class Window:
    """Prompts encoded together in one forward pass, and the response passes that reuse their encodings."""

    prompts: list[tuple[int, ...]]
    passes: list[list[int]]  # item indices per response pass


def plan_windows(items: Sequence[Item], max_batch_tokens: int) -> list[Window]:
    """Prompts (first-appearance order) in windows of at most ``max_batch_tokens`` padded prompt tokens,
    each with its items' responses longest first, cut into passes of at most ``max_batch_tokens``
    padded tokens (rows x (the window's longest prompt + the pass's longest response)) whose rows
    are all at least :data:`MIN_FILL` of the pass's longest response; a single longer prompt or item
    runs alone. Items without a response need no pass.
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, (prompt, response) in enumerate(items):
        if response:
            groups.setdefault(tuple(prompt), []).append(index)
    windows: list[Window] = []
    widest = 0
    for prompt in groups:
        if windows and (len(windows[-1].prompts) + 1) * max(widest, len(prompt)) <= max_batch_tokens:
            windows[-1].prompts.append(prompt)
            widest = max(widest, len(prompt))
        else:
            windows.append(Window([prompt], []))
            widest = len(prompt)
    for window in windows:
        width = max(len(p) for p in window.prompts)
        rank = {prompt: r for r, prompt in enumerate(window.prompts)}
        # ties in length keep a prompt's items together (fewer distinct cache rows to gather)
        order = sorted((i for prompt in window.prompts for i in groups[prompt]),
                       key=lambda i: (-len(items[i][1]), rank[tuple(items[i][0])], i))
        for index in order:
            rows = window.passes[-1] if window.passes else None
            longest = len(items[rows[0]][1]) if rows else 0
            fits = rows and (len(rows) + 1) * (width + longest) <= max_batch_tokens
            if fits and len(items[index][1]) >= MIN_FILL * longest:  # bounded padding per row
                rows.append(index)
            else:
                window.passes.append([index])
    return windows


class _TokenLogprobs:
    """Target-token log-probabilities from final hidden states (fp32), without a full-vocabulary logits tensor."""

    def __init__(self, model: Any, *, is_rounded_to_weight_dtype: bool = False) -> None:
        import torch

        self.head = model.get_output_embeddings()
        self.is_rounded_to_weight_dtype = is_rounded_to_weight_dtype
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.softcap = getattr(config, "final_logit_softcapping", None)
        self.scale = getattr(config, "logit_scale", None)  # Cohere-style heads multiply the logits
        self.vocab = self.head.weight.shape[0]
        # Only a plain floating-point Linear is read through its weight; anything else is called as a module.
        self.is_tiled = type(self.head) is torch.nn.Linear and self.head.weight.is_floating_point()

    def is_same_as(self, other: "_TokenLogprobs") -> bool:
        """Whether both compute the same function (equal weights and bias, same scale and soft-cap)."""
        import torch

        mine, theirs = self.head, other.head
        if ((self.softcap, self.scale, type(mine), self.is_rounded_to_weight_dtype)
                != (other.softcap, other.scale, type(theirs), other.is_rounded_to_weight_dtype)):
            return False
        if mine is theirs or mine.weight is theirs.weight:
            return True
        bias, other_bias = getattr(mine, "bias", None), getattr(theirs, "bias", None)
        if (bias is None) != (other_bias is None) or (bias is not None and not torch.equal(bias, other_bias)):
            return False
        if mine.weight.shape != theirs.weight.shape:
            return False
        # Comparing 262k x hidden weights costs a few hundred ms: remember the answer while neither tensor changes.
        versions = (theirs.weight._version, mine.weight._version)
        key = (id(mine.weight), id(theirs.weight))
        known = _EQUAL_WEIGHTS.get(key)
        if known is not None and known[0]() is mine.weight and known[1]() is theirs.weight and known[2] == versions:
            return known[3]
        is_equal = bool(torch.equal(mine.weight, theirs.weight))
        if len(_EQUAL_WEIGHTS) > 64:
            _EQUAL_WEIGHTS.clear()
        _EQUAL_WEIGHTS[key] = (weakref.ref(mine.weight), weakref.ref(theirs.weight), versions, is_equal)
        return is_equal

    def __call__(self, hidden: Any, targets: Any) -> Any:
        import torch

        if not self.is_tiled:
            return self._whole(hidden, targets)
        with torch.no_grad():  # values only: the tiles are written in place
            return torch.cat([self._tiled(hidden[start:start + PROJECTION_ROWS], targets[start:start + PROJECTION_ROWS])
                              for start in range(0, hidden.shape[0], PROJECTION_ROWS)])

    def _finish(self, logits: Any) -> Any:
        """The model's logit scale and soft-capping, in place."""
        if self.scale is not None:
            logits.mul_(self.scale)
        if self.softcap is not None:
            logits.div_(self.softcap).tanh_().mul_(self.softcap)
        return logits

    def project(self, hidden: Any, start: int, stop: int, out: Any) -> Any:
        """fp32 logits of vocabulary entries ``start:stop`` for the (fp32) rows of ``hidden``, written into ``out``.

        The weight tile is upcast to fp32 first (a no-op for fp32 weights): a bf16 matmul would round
        every logit to bf16's 8 significant bits (0.06 at a logit of 20) before the log-sum-exp.
        """
        import torch

        weight, bias = self.head.weight[start:stop].float(), self.head.bias
        if bias is None:
            logits = torch.mm(hidden, weight.t(), out=out)
        else:
            logits = torch.addmm(bias[start:stop].float(), hidden, weight.t(), out=out)
        if self.is_rounded_to_weight_dtype:  # what a bf16 model's own forward computes, for comparison
            logits.copy_(logits.to(self.head.weight.dtype))
        return logits

    def _tiled(self, hidden: Any, targets: Any) -> Any:
        # log p(target) = logit(target) - logsumexp(logits), the log-sum-exp accumulated tile by tile
        # (running maximum, float64 sums); the same value as a log-softmax up to the logits' fp32 rounding.
        # Matmul and log-sum-exp run in fp32 whatever the weight dtype (see project()).
        import torch

        hidden = hidden.float()
        rows, width = hidden.shape
        budget = LOGITS_TILE_ELEMENTS if hidden.device.type == "cpu" else ACCELERATOR_LOGITS_TILE_ELEMENTS
        columns = max(1, budget // rows)
        if self.head.weight.dtype != torch.float32:  # each tile's fp32 weight copy stays within the same budget
            columns = min(columns, max(1, budget // width))
        if columns >= TILE_ALIGNMENT:
            columns -= columns % TILE_ALIGNMENT
        tile = torch.empty((rows, min(columns, self.vocab)), dtype=torch.float32, device=hidden.device)
        running_max = torch.full((rows,), -float("inf"), dtype=torch.float32, device=hidden.device)
        sums = torch.zeros(rows, dtype=torch.float64, device=hidden.device)
        target_logits = torch.empty(rows, dtype=torch.float32, device=hidden.device)
        # rows grouped by the tile holding their target: one host sync for the block, none per tile
        tiles = range(0, self.vocab, columns)
        target_tiles = targets // columns
        by_tile = torch.argsort(target_tiles)
        counts = torch.bincount(target_tiles, minlength=len(tiles)).tolist()
        first = 0
        for start, count in zip(tiles, counts):
            stop = min(start + columns, self.vocab)
            logits = self._finish(self.project(hidden, start, stop, tile[:, : stop - start]).float())
            hits, first = by_tile[first:first + count], first + count
            target_logits[hits] = logits[hits, targets[hits] - start]
            new_max = torch.maximum(running_max, logits.amax(1))
            exp_sums = logits.sub_(new_max[:, None]).exp_().sum(1)  # the tile is spent: its targets are taken
            sums.mul_(torch.exp((running_max - new_max).double())).add_(exp_sums.double())
            running_max = new_max
        return target_logits.double() - (running_max.double() + sums.log())  # float64: no rounding added here

    def _whole(self, hidden: Any, targets: Any) -> Any:
        import torch

        rows = max(1, FALLBACK_LOGITS_ELEMENTS // self.vocab)
        out = []
        for start in range(0, hidden.shape[0], rows):
            logits = self._finish(self.head(hidden[start:start + rows]).float())
            logprobs = torch.log_softmax(logits, dim=-1)
            out.append(logprobs.gather(1, targets[start:start + rows, None]).squeeze(1))
        return torch.cat(out)


class _EncodedPrompts:
    """One model's encoding of a window's prompts (left-padded): KV cache, mask, lengths, last states."""

    def __init__(self, model: Any, prompts: list[tuple[int, ...]], device: Any, pad_id: int) -> None:
        import torch

        self.model, self.device, self.pad_id = model, device, pad_id
        self.index = {prompt: row for row, prompt in enumerate(prompts)}
        self.width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), self.width), pad_id, dtype=torch.long)
        self.mask = torch.zeros((len(prompts), self.width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, self.width - len(prompt):] = torch.tensor(prompt)
            self.mask[row, self.width - len(prompt):] = 1
        self.lengths = torch.tensor([len(p) for p in prompts])
        # Left padding: positions must count real tokens only, or a padded prompt differs from the same prompt alone.
        positions = (self.mask.cumsum(-1) - 1).clamp(min=0)
        out = model.base_model(input_ids=ids.to(device), attention_mask=self.mask.to(device),
                               position_ids=positions.to(device), use_cache=True)
        self.cache = out.past_key_values
        self.last_states = out.last_hidden_state[:, -1]  # the state after each prompt predicts response token 0

    def response_states(self, items: Sequence[Item], rows: list[int]) -> Any:
        """Final hidden states predicting each response token of ``rows`` (concatenated in row order)."""
        import torch

        owner = torch.tensor([self.index[tuple(items[i][0])] for i in rows])
        responses = [items[i][1] for i in rows]
        last_states = self.last_states[owner.to(self.device)]
        # Response token j is predicted by the state after token j - 1, so the last token is never fed.
        fed = max(len(r) for r in responses) - 1
        if fed == 0:
            return last_states
        ids = torch.full((len(rows), fed), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), self.width + fed), dtype=torch.long)
        mask[:, : self.width] = self.mask[owner]
        for row, response in enumerate(responses):
            ids[row, : len(response) - 1] = torch.tensor(response[:-1])
            mask[row, self.width: self.width + len(response) - 1] = 1
        positions = self.lengths[owner][:, None] + torch.arange(fed)[None, :]
        cache = copy.deepcopy(self.cache)  # the window's encodings stay intact for its other passes
        cache.batch_select_indices(owner.to(self.device))  # each row gets its prompt's cache
        states = self.model.base_model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                       position_ids=positions.to(self.device), past_key_values=cache,
                                       use_cache=True).last_hidden_state
        return torch.cat([torch.cat([last_states[row, None], states[row, : len(r) - 1]])
                          for row, r in enumerate(responses)])


def _check_items(model: Any, sequences: Sequence[Item], max_batch_tokens: int) -> None:
    if max_batch_tokens < 1:
        raise InputError(f"got {max_batch_tokens}; expected an integer >= 1", field="max_batch_tokens")
    vocab = model.get_input_embeddings().num_embeddings
    for index, (prompt, response) in enumerate(sequences):
        if not prompt:
            raise InputError("empty prompt; expected at least one token before the response", record=index)
        lowest, highest = min(min(prompt), min(response, default=0)), max(max(prompt), max(response, default=0))
        if lowest < 0 or highest >= vocab:
            raise InputError(f"token id {highest if highest >= vocab else lowest} outside the model's vocabulary "
                             f"of {vocab}; expected the policy's tokenizer", record=index)


class _PendingProjection:
    """States of consecutive passes, projected together in blocks of up to :data:`PROJECTION_ROWS` rows.

    A pass of a few short responses would otherwise read the whole output projection for a few hundred
    states; pending states stay bounded (one block per model).
    """

    def __init__(self, heads: list[_TokenLogprobs], is_shared: bool, items: Sequence[Item],
                 totals: list[list[float]]) -> None:
        self.heads, self.is_shared, self.items, self.totals = heads, is_shared, items, totals
        self.rows: list[int] = []
        self.states: list[list[Any]] = [[] for _ in heads]
        self.targets: list[Any] = []
        self.count = 0

    def add(self, rows: list[int], states: list[Any], targets: Any) -> None:
        """Queue one pass (its item indices, each model's states, the target tokens); project when a block is full."""
        rows_per_target = 2 if self.is_shared else 1  # a shared projection sees both models' states
        if self.count and (self.count + len(targets)) * rows_per_target > PROJECTION_ROWS:
            self.flush()
        self.rows += rows
        for queue, model_states in zip(self.states, states):
            queue.append(model_states)
        self.targets.append(targets)
        self.count += len(targets)

    def flush(self) -> None:
        """Project everything queued and write the items' sums."""
        import torch

        if not self.rows:
            return
        targets = torch.cat(self.targets)
        states = [torch.cat(queue) for queue in self.states]
        if self.is_shared:
            per_model = list(self.heads[0](torch.cat(states), torch.cat([targets, targets])).split(len(targets)))
        else:
            per_model = [head(model_states, targets) for head, model_states in zip(self.heads, states)]
        lengths = [len(self.items[i][1]) for i in self.rows]
        for values, model_totals in zip(per_model, self.totals):
            for index, item_values in zip(self.rows, values.double().cpu().split(lengths)):
                model_totals[index] = float(item_values.sum())
        self.rows, self.states, self.targets, self.count = [], [[] for _ in self.heads], [], 0


def paired_response_logprobs(policy: Any, reference: Any, sequences: list[Item], *, max_batch_tokens: int = 4096,
                             device: Any = None, is_rounded_to_weight_dtype: bool = False,
                             ) -> tuple[list[float], list[float]]:
    """:func:`response_logprobs` of both models, on one pass plan (one shared projection when the heads are equal).

    ``reference=None`` scores the policy alone (the second list is then empty).
    ``is_rounded_to_weight_dtype``: round each logit to the weights' dtype before the log-sum-exp, as a
    bf16 model's own forward does (the authors' scores); off by default (fp32 logits).

    Raises:
        InputError: an empty prompt, or token ids outside a model's vocabulary.
    """
    import torch

    models = [policy] if reference is None else [policy, reference]
    for model in models:
        _check_items(model, sequences, max_batch_tokens)
    device = torch.device(device) if device is not None else next(policy.parameters()).device
    heads = [_TokenLogprobs(model, is_rounded_to_weight_dtype=is_rounded_to_weight_dtype) for model in models]
    is_shared = len(heads) == 2 and heads[0].is_same_as(heads[1])
    totals = [[0.0] * len(sequences) for _ in models]
    pending = _PendingProjection(heads, is_shared, sequences, totals)
    with _eval_mode(*models), torch.inference_mode():
        for window in plan_windows(sequences, max_batch_tokens):
            encoded = [_EncodedPrompts(m, window.prompts, device, getattr(m.config, "pad_token_id", None) or 0)
                       for m in models]
            for rows in window.passes:
                targets = torch.tensor([t for i in rows for t in sequences[i][1]], device=device)
                pending.add(rows, [prompts.response_states(sequences, rows) for prompts in encoded], targets)
            del encoded
        pending.flush()
    return totals[0], (totals[1] if reference is not None else [])


def response_logprobs(model: Any, sequences: list[Item], *, max_batch_tokens: int = 4096,
                      device: Any = None, is_rounded_to_weight_dtype: bool = False) -> list[float]:
    """Sum of ``log p(response token | all before)`` over the response tokens of each (prompt, response).

    Args:
        sequences: (prompt ids, response ids) items; items with the same prompt in one pass share its encoding.
        max_batch_tokens: padded tokens (prompt included) per forward pass; a longer item runs alone.
        device: where the inputs go (default: the device of the model's parameters).
        is_rounded_to_weight_dtype: round the logits to the weights' dtype (bf16) before the log-sum-exp,
            as the model's own bf16 forward does; by default they stay fp32 whatever the weights' dtype.

    Raises:
        InputError: an empty prompt, or token ids outside the model's vocabulary.
    """
    return paired_response_logprobs(model, None, sequences, max_batch_tokens=max_batch_tokens, device=device,
                                    is_rounded_to_weight_dtype=is_rounded_to_weight_dtype)[0]
