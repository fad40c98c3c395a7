"""How much the reward's token span moves the pairs: one samples file scored over each span, pairs compared.

Scores SAMPLES.jsonl once per token span (``authors``, ``response``, ``response+eot``; the models
are loaded once), builds the pairs as the loop does (length control on, alpha step 0.001) and
reports, per span against ``authors``, how many groups pick another chosen or rejected response,
the rank correlation of the rewards, and the scoring time per span (``authors`` scores each
response's first token once more, as its own one-token item). docs/fidelity.md cites its output.

Example::

    xlpref --seed 42 sample --model gemma-3-270m-en-dpo --prompts benchmarks/x_alpacaeval/mini/train_prompts/mini \\
        --langs en,es,de --n 4 --max-new-tokens 40 --batch-size 24 --limit 6 -o /tmp/samples.jsonl
    python -m benchmarks.x_alpacaeval.token_spans /tmp/samples.jsonl --policy gemma-3-270m-en-dpo \\
        --reference gemma-3-270m
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def pair_key(pair: dict) -> tuple:
    return pair["lang"], pair["id"]


def compare_spans(samples: list[dict], policy: str, reference: str, reward: str = "cross-lingual") -> dict:
    """Per span: its pairs and, against ``authors``, the groups whose chosen / rejected response differs."""
    from scipy.stats import spearmanr

    from xlpref.models import load_model
    from xlpref.pairs import build_pairs
    from xlpref.reward import TOKEN_SPANS, score_records

    policy_model, tokenizer = load_model(policy)
    reference_model = policy_model if reference == policy else load_model(reference)[0]
    scored, seconds = {}, {}
    for span in TOKEN_SPANS:
        start = time.perf_counter()
        scored[span] = score_records(samples, policy_model, reference_model, tokenizer, reward, token_span=span,
                                     progress=False)
        seconds[span] = round(time.perf_counter() - start, 2)
    results = {span: build_pairs(records) for span, records in scored.items()}
    pairs = {span: {pair_key(p): p for p in result.pairs} for span, result in results.items()}
    base = pairs["authors"]
    report = {"samples": len(samples), "policy": policy, "reference": reference, "reward": reward, "spans": {}}
    for span in TOKEN_SPANS:
        groups = sorted(set(base) | set(pairs[span]))
        changed_chosen = sum(1 for k in groups if (base.get(k) or {}).get("chosen") != (pairs[span].get(k) or {}).get("chosen"))
        changed_either = sum(1 for k in groups if {(base.get(k) or {}).get(s) for s in ("chosen", "rejected")}
                             != {(pairs[span].get(k) or {}).get(s) for s in ("chosen", "rejected")})
        rewards = np.array([[a["reward"], b["reward"]] for a, b in zip(scored["authors"], scored[span])])
        report["spans"][span] = {
            "pairs": len(pairs[span]), "groups_compared": len(groups), "scoring_seconds": seconds[span],
            "skipped": {name: sum(row[name] for row in results[span].summary.values())
                        for name in ("skipped_few_distinct", "skipped_equal_rewards", "skipped_upper_bound")},
            "chosen_differs_from_authors": changed_chosen, "pair_differs_from_authors": changed_either,
            "reward_spearman_with_authors": float(spearmanr(rewards[:, 0], rewards[:, 1]).statistic),
            "mean_abs_reward_difference": float(np.abs(rewards[:, 0] - rewards[:, 1]).mean()),
        }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("samples")
    parser.add_argument("--policy", required=True)
    parser.add_argument("--reference", required=True)
    parser.add_argument("--reward", default="cross-lingual")
    args = parser.parse_args()
    with open(args.samples, encoding="utf-8") as handle:
        samples = [json.loads(line) for line in handle if line.strip()]
    print(json.dumps(compare_spans(samples, args.policy, args.reference, args.reward), indent=2))


if __name__ == "__main__":
    main()
