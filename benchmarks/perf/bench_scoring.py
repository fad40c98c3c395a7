"""Implicit-reward scoring: our scorer against the naive one, interleaved in one process.

Workload: training prompts under METHOD.md's cross-lingual conditioning (languages cycled) -- the
shared data's real training prompts (``DATA/train_prompts/random_100``, median 112 tokens with
the conditioning and template) when present, else the bundled mini prompts (about 36 tokens) --
and K responses per prompt cut from the mini set's reference answers (all six languages) at seeded
offsets and seeded lengths in ``[min_tokens, max_tokens]``: real multilingual text, lengths spread
the way sampled responses are. The JSON says which prompts were used. A second measurement at
K = 10 on the short mini prompts shows the other end (less prompt work for the naive scorer to
repeat). Models: pi_ref = ``model``; pi_dpo = the demo's English DPO model
when it is already built (``~/.cache/xlpref/models/gemma-3-270m-en-dpo``), otherwise ``model`` with a
seeded rank-16 update merged into every linear layer of the body (what a merged LoRA is: different
weights, the same tied embeddings). The JSON says which.

Per K: naive and ours alternate (ABBA over ``repeats``); each of our runs is preceded by a matmul-rate
probe, and the useful-FLOP utilisation divides by the best rate any probe of the section measured. Useful
FLOPs per model: 2 x non-embedding parameters per token processed (each prompt once) plus
2 x vocab x hidden per response token. Rewards of both scorers are compared: max abs difference, and relative to
``|log p_policy| + |log p_reference|`` (the sums whose difference a reward is; fp32 rounds them).
Memory: peak RSS above the loaded models (:class:`benchmarks.perf.machine.PeakRSS`) per run, and a
growth probe: both scorers on one response of ``memory_lengths[0]`` and of ``memory_lengths[1]``
tokens, the growth per added token expressed in fp32 vocabulary rows (a logits tensor adds at least
one). Rounding: both scorers on one long response against a float64 log-softmax of the model's fp32
logits. bf16: its matmul rate is probed; only if it beats fp32 is the reward error of bf16 copies
measured (on this CPU class without AVX512-BF16/AMX it is far slower, so it is not used).

Example::

    from benchmarks.perf.bench_scoring import ScoringConfig, run_scoring
    print(run_scoring(ScoringConfig(model="tiny-random-llama", groups={4: 1, 10: 1}, repeats=1)))
"""

from __future__ import annotations

import copy
import random
import time
from dataclasses import dataclass, field
from typing import Any

from benchmarks.perf.machine import PeakRSS, matmul_rate
from benchmarks.perf.naive import naive_response_logprobs


@dataclass
class ScoringConfig:
    model: str = "gemma-3-270m"
    # K -> prompts: the data's first 4 (37, 111, 150 and 102 tokens with the conditioning: median 106, the
    # data's 111; its mean, 192, is pulled up by a few prompts of 400-950 tokens that favour our scorer)
    groups: dict[int, int] = field(default_factory=lambda: {4: 4, 10: 4})
    min_tokens: int = 32
    max_tokens: int = 256
    prompts: str = "train"  # "train": the shared training prompts when present (else mini); "mini"
    short_prompts_k: int | None = 10  # also measure this K on the mini prompts (None: skip)
    repeats: int = 1
    max_batch_tokens: int = 4096
    # past one logits chunk (1024 rows of Gemma's vocabulary), where ours must stay flat
    memory_lengths: tuple[int, int] = (1024, 4096)
    seed: int = 0

    @classmethod
    def quick(cls, model: str = "gemma-3-270m") -> "ScoringConfig":
        return cls(model=model, groups={4: 1, 10: 1}, min_tokens=16, max_tokens=64, memory_lengths=(1024, 2048),
                   short_prompts_k=None)


# -- models and workload ------------------------------------------------------------------------

def perturbed_copy(model: Any, *, rank: int = 16, scale: float = 0.02, seed: int = 0) -> Any:
    """``model`` with a seeded low-rank update merged into each body linear layer (embeddings untouched)."""
    import torch

    policy = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    head = policy.get_output_embeddings()
    with torch.no_grad():
        for module in policy.modules():
            if isinstance(module, torch.nn.Linear) and module is not head:
                out_features, in_features = module.weight.shape
                a = torch.randn(rank, in_features, generator=generator) / in_features ** 0.5
                b = torch.randn(out_features, rank, generator=generator) * scale
                module.weight += (b @ a).to(module.weight.dtype)
    return policy.eval()


def load_scoring_models(spec: str) -> tuple[Any, Any, Any, str]:
    """(policy, reference, tokenizer, how the policy was made)."""
    from xlpref.models import ENGLISH_DPO_SPEC, GEMMA_SPEC, cache_dir, load_model
    from xlpref.training import completed_training

    reference, tokenizer = load_model(spec)
    built = cache_dir() / "models" / ENGLISH_DPO_SPEC
    if spec == GEMMA_SPEC and completed_training(built) is not None:
        policy, _ = load_model(str(built))
        return policy, reference, tokenizer, f"{ENGLISH_DPO_SPEC} (LoRA DPO, merged)"
    return perturbed_copy(reference), reference, tokenizer, f"{spec} + seeded rank-16 update (a merged LoRA stand-in)"


def english_prompts(source: str = "train") -> tuple[list[str], str]:
    """English training instructions and where they came from (the shared data's, else the mini set's)."""
    from xlpref.data import MINI_DIR, default_data_dir, load_train_prompts

    shared = default_data_dir() / "train_prompts" / "random_100"
    folder = shared if source == "train" and (shared / "en.jsonl").is_file() else MINI_DIR / "train_prompts" / "mini"
    english = load_train_prompts(folder, ["en"])["en"]
    return [p.instruction for p in english], str(folder)


#: The languages the workload's prompts cycle through (and its answers come from).
LANGS = ["es", "de", "fr", "ru", "zh", "en"]


def answer_text() -> str:
    """The mini set's reference answers in :data:`LANGS`, joined: real multilingual text to cut responses from."""
    from xlpref.data import MINI_DIR, load_instructions, load_reference_outputs

    instructions = load_instructions(MINI_DIR / "x_alpacaeval" / "instructions", LANGS)
    answers = []
    for lang in LANGS:
        path = MINI_DIR / "x_alpacaeval" / "reference_outputs" / "xlpref-mini-reference" / f"{lang}.json"
        answers += [r["output"] for r in load_reference_outputs(path, instructions[lang])]
    return "\n\n".join(answers)


def scoring_items(tokenizer: Any, n_prompts: int, k: int, min_tokens: int, max_tokens: int,
                  seed: int = 0, *, prompts: str = "mini") -> list[tuple[list[int], list[int]]]:
    """``n_prompts`` cross-lingual prompts x ``k`` responses of seeded lengths (token ids)."""
    from xlpref.languages import cross_lingual_instruction
    from xlpref.reward import prompt_token_ids, response_token_ids

    english, _ = english_prompts(prompts)
    pool = response_token_ids(tokenizer, answer_text())
    rng = random.Random(seed)
    items = []
    for g in range(n_prompts):
        lang = LANGS[g % len(LANGS)]
        prompt = prompt_token_ids(tokenizer, cross_lingual_instruction(english[g % len(english)], lang))
        for _ in range(k):
            length = min(rng.randint(min_tokens, max_tokens), len(pool))
            start = rng.randrange(0, len(pool) - length + 1)
            items.append((prompt, pool[start:start + length]))
    return items


def useful_flops(model: Any, items: list[tuple[list[int], list[int]]]) -> float:
    """2 x non-embedding parameters per token processed (each distinct prompt once) + 2 x vocab x hidden per response token."""
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    body = sum(p.numel() for p in model.parameters()) - embedding.numel()
    if head.data_ptr() != embedding.data_ptr():
        body -= head.numel()
    prompt_tokens = sum(len(p) for p in {tuple(p) for p, _ in items})
    response_tokens = sum(len(r) for _, r in items)
    return 2.0 * body * (prompt_tokens + response_tokens) + 2.0 * head.numel() * response_tokens


# -- measurement --------------------------------------------------------------------------------

def _timed(fn: Any) -> tuple[Any, float, float]:
    with PeakRSS() as peak:
        start = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - start
    return result, seconds, peak.megabytes


def _ours(policy: Any, reference: Any, items: list, budget: int) -> list[float]:
    return [s.reward for s in _ours_scores(policy, reference, items, budget)]


def _ours_scores(policy: Any, reference: Any, items: list, budget: int) -> list:
    from xlpref.reward import implicit_rewards

    return implicit_rewards(policy, reference, items, max_batch_tokens=budget)


def _naive(policy: Any, reference: Any, items: list) -> list[float]:
    from benchmarks.perf.naive import naive_implicit_rewards

    return naive_implicit_rewards(policy, reference, items)


def compare_at_k(policy: Any, reference: Any, items: list, config: ScoringConfig, k: int) -> dict:
    """Interleaved timings of both scorers on ``items``; tokens/s, peak MiB, utilisation, max reward difference."""
    tokens = sum(len(r) for _, r in items)
    flops = useful_flops(policy, items) + useful_flops(reference, items)
    runs: dict[str, list] = {"ours": [], "naive": []}
    rates = []
    rewards: dict[str, list[float]] = {}
    scales: list[float] = []
    order = ["naive", "ours", "ours", "naive"] * config.repeats
    for name in order[: 2 * config.repeats]:
        if name == "ours":
            rates.append(matmul_rate(seconds=1.0))
            scores, seconds, peak = _timed(lambda: _ours_scores(policy, reference, items, config.max_batch_tokens))
            result = [score.reward for score in scores]
            # a reward is a difference of two sums of log-probabilities: their size sets fp32's rounding
            scales = [max(1.0, abs(score.logp_policy) + abs(score.logp_reference)) for score in scores]
        else:
            result, seconds, peak = _timed(lambda: _naive(policy, reference, items))
        rewards[name] = result
        runs[name].append((seconds, peak))
    best = {name: min(s for s, _ in r) for name, r in runs.items()}
    peak = {name: max(p for _, p in r) for name, r in runs.items()}
    rate = sorted(rates)[len(rates) // 2]
    differences = [abs(a - b) for a, b in zip(rewards["ours"], rewards["naive"])]
    return {
        "matmul_gflops_probes": rates,
        "k": k, "prompts": len({tuple(p) for p, _ in items}), "responses": len(items), "response_tokens": tokens,
        "seconds": best, "tokens_per_s": {n: tokens / s for n, s in best.items()}, "peak_mib": peak,
        "useful_gflop": flops / 1e9, "matmul_gflops": rate,
        "utilisation": {n: flops / s / (rate * 1e9) for n, s in best.items()},
        "max_abs_reward_difference": max(differences),
        "max_relative_reward_difference": max(d / scale for d, scale in zip(differences, scales)),
    }


def memory_growth(policy: Any, tokenizer: Any, lengths: tuple[int, int]) -> dict:
    """Peak MiB of each scorer (one model) on one response of each length, and the size of one fp32
    vocabulary row (what any tensor of vocab x length adds per token): ours must grow by far less."""
    from xlpref.logprobs import response_logprobs

    items = scoring_items(tokenizer, 1, 1, max(lengths), max(lengths), seed=1)
    prompt, response = items[0]
    out: dict[str, Any] = {"ours": {}, "naive": {},
                           "vocab_row_mib": policy.get_output_embeddings().weight.shape[0] * 4 / (1 << 20)}
    for length in lengths:
        one = [(prompt, response[:length])]
        out["ours"][length] = _timed(lambda: response_logprobs(policy, one))[2]
        out["naive"][length] = _timed(lambda: naive_response_logprobs(policy, one))[2]
    return out


def rounding(policy: Any, tokenizer: Any, length: int = 256) -> dict:
    """Both scorers' summed log p of one long response against a float64 log-softmax of the model's own
    fp32 logits (the same logits, rounded once): how much each scorer's arithmetic adds."""
    import torch

    from xlpref.logprobs import response_logprobs

    prompt, response = scoring_items(tokenizer, 1, 1, length, length, seed=2, prompts="train")[0]
    with torch.inference_mode():
        logits = policy(input_ids=torch.tensor([prompt + response])).logits[0, len(prompt) - 1:-1].double()
        exact = float(torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(response)[:, None]).sum())
    ours = response_logprobs(policy, [(prompt, response)])[0]
    naive = naive_response_logprobs(policy, [(prompt, response)])[0]
    return {"response_tokens": len(response), "float64_logp": exact,
            "ours_minus_float64": ours - exact, "naive_minus_float64": naive - exact}


def bf16_check(policy: Any, reference: Any, items: list, fp32_rate: float) -> dict:
    """bf16 is used only if its matmul rate beats fp32's; then the reward error of bf16 copies is measured."""
    import torch

    rate = matmul_rate(dtype=torch.bfloat16, rows=64, columns=4096, seconds=0.5, max_repeats=2)
    result: dict[str, Any] = {"bf16_matmul_gflops": rate, "fp32_matmul_gflops": fp32_rate,
                              "is_faster": rate > fp32_rate}
    if not result["is_faster"]:
        result["decision"] = "fp32 (bf16 matmul is slower on this CPU)"
        return result
    exact = _ours(policy, reference, items, 4096)
    low = _ours(copy.deepcopy(policy).to(torch.bfloat16), copy.deepcopy(reference).to(torch.bfloat16), items, 4096)
    scale = max(abs(x) for x in exact) or 1.0
    result["max_relative_reward_error"] = max(abs(a - b) for a, b in zip(low, exact)) / scale
    result["decision"] = "bf16" if result["max_relative_reward_error"] < 1e-2 else "fp32 (bf16 error >= 1e-2)"
    return result


def run_scoring(config: ScoringConfig, *, log: Any = print) -> dict:
    """The scoring section's measurements (plain data; :mod:`benchmarks.perf.suite` renders them)."""
    start = time.perf_counter()
    policy, reference, tokenizer, policy_note = load_scoring_models(config.model)
    log(f"scoring: models loaded in {time.perf_counter() - start:.0f} s; policy = {policy_note}")
    from xlpref.logprobs import _TokenLogprobs

    warm = scoring_items(tokenizer, 1, 1, 8, 8)
    _ours(policy, reference, warm, config.max_batch_tokens)
    _naive(policy, reference, warm)
    per_k = []
    _, prompt_folder = english_prompts(config.prompts)
    runs = [(k, n, config.prompts) for k, n in sorted(config.groups.items())]
    if config.short_prompts_k is not None and config.prompts != "mini":
        runs.append((config.short_prompts_k, config.groups.get(config.short_prompts_k, 2), "mini"))
    for k, n_prompts, source in runs:
        items = scoring_items(tokenizer, n_prompts, k, config.min_tokens, config.max_tokens, config.seed,
                              prompts=source)
        per_k.append({**compare_at_k(policy, reference, items, config, k), "prompts_source": english_prompts(source)[1],
                      "prompt_tokens": sorted(len(p) for p in {tuple(p) for p, _ in items}),
                      "is_short_prompts": source == "mini" and source != config.prompts})
        row = per_k[-1]
        log(f"scoring K={k} ({source} prompts): ours {row['tokens_per_s']['ours']:.1f} tok/s, naive "
            f"{row['tokens_per_s']['naive']:.1f} tok/s, utilisation {row['utilisation']['ours']:.0%}")
    # Utilisation divides by the best rate any probe of this section saw: a probe that ran while the
    # machine was slowed (shared host, frequency) would otherwise inflate it, even past 100%.
    best_rate = max(rate for row in per_k for rate in row["matmul_gflops_probes"])
    for row in per_k:
        row["matmul_gflops"] = best_rate
        row["utilisation"] = {n: row["useful_gflop"] / s / best_rate for n, s in row["seconds"].items()}
    memory = memory_growth(policy, tokenizer, config.memory_lengths)
    arithmetic = rounding(policy, tokenizer, config.max_tokens)
    bf16 = bf16_check(policy, reference, scoring_items(tokenizer, 1, 2, 8, 16), per_k[-1]["matmul_gflops"])
    return {"model": config.model, "policy": policy_note, "prompts_source": prompt_folder,
            "shared_output_projection": _TokenLogprobs(policy).is_same_as(_TokenLogprobs(reference)),
            "config": {**config.__dict__, "groups": {str(k): v for k, v in config.groups.items()}},
            "per_k": per_k, "memory_growth": memory, "rounding": arithmetic, "bf16": bf16}
