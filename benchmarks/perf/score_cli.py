"""An independent timing of ``xlpref score`` against the naive scorer, K responses per prompt.

What a user would do to check the scorer from outside: write a SAMPLES.jsonl (training prompts under
the cross-lingual conditioning, K responses each -- text cut from the mini set's reference answers,
lengths in ``[min_tokens, max_tokens]`` tokens), run ``xlpref score`` on it in its own process and
read the scoring time it prints (model loading excluded), then score the same texts with the naive
scorer (:mod:`benchmarks.perf.naive`: batches of 3, full logits, prompt re-encoded, two passes) in
this process, after loading the models (loading excluded too). Both get the same torch thread count.
The rewards of both are compared (max absolute difference).

Example::

    python -m benchmarks.perf.score_cli --prompts 3 --k 10 -o score_cli.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.perf.bench_scoring import LANGS

REPO = Path(__file__).resolve().parents[2]


def write_samples(path: Path, tokenizer, n_prompts: int, k: int, min_tokens: int, max_tokens: int,
                  seed: int = 0) -> list[dict]:
    """Sample records of ``n_prompts`` training prompts x ``k`` responses (texts), written as JSONL."""
    from benchmarks.perf.bench_scoring import answer_text, english_prompts

    english, _ = english_prompts("train")
    pool = tokenizer(answer_text(), add_special_tokens=False)["input_ids"]
    rng = random.Random(seed)
    records = []
    for g in range(n_prompts):
        for j in range(k):
            length = rng.randint(min_tokens, max_tokens)
            start = rng.randrange(0, len(pool) - length + 1)
            text = tokenizer.decode(pool[start:start + length]).strip()
            records.append({"id": g, "lang": LANGS[g % len(LANGS)], "prompt": english[g], "prompt_en": english[g],
                            "response": text, "sample_index": j})
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return records


def time_cli(samples: Path, out: Path, policy: str, reference: str, threads: int) -> tuple[float, int]:
    """``xlpref score`` in its own process: (scoring seconds it printed, response tokens)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads), "COLUMNS": "200"}
    command = [sys.executable, "-m", "harness.cli", "score", str(samples), "--policy", policy, "--reference",
               reference, "--reward", "cross-lingual",
               # the naive scorer sums y_1..y_m: compare the same tokens
               "--token-span", "response", "-o", str(out)]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    match = re.search(r"scored (\d+) response tokens in ([\d.]+) s", done.stdout)
    if done.returncode != 0 or not match:
        raise RuntimeError(f"xlpref score failed ({done.returncode}): {done.stderr[-2000:]}")
    return float(match.group(2)), int(match.group(1))


def time_naive(records: list[dict], policy: str, reference: str, threads: int) -> tuple[float, list[float]]:
    """The naive scorer on the same texts, models loaded first: (seconds, rewards)."""
    import torch

    from benchmarks.perf.naive import naive_implicit_rewards
    from xlpref.languages import cross_lingual_instruction
    from xlpref.models import load_model
    from xlpref.reward import prompt_token_ids, response_token_ids

    torch.set_num_threads(threads)
    policy_model, tokenizer = load_model(policy)
    reference_model, _ = load_model(reference)
    items = [(prompt_token_ids(tokenizer, cross_lingual_instruction(r["prompt_en"], r["lang"])),
              response_token_ids(tokenizer, r["response"])) for r in records]
    start = time.perf_counter()
    rewards = naive_implicit_rewards(policy_model, reference_model, items)
    return time.perf_counter() - start, rewards


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="gemma-3-270m-en-dpo")
    parser.add_argument("--reference", default="gemma-3-270m")
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--min-tokens", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("-o", "--output", type=Path, default=None)
    args = parser.parse_args(argv)
    from xlpref.models import load_model

    _, tokenizer = load_model(args.reference)
    with tempfile.TemporaryDirectory(prefix="xlpref-score-cli-") as folder:
        samples = Path(folder) / "samples.jsonl"
        records = write_samples(samples, tokenizer, args.prompts, args.k, args.min_tokens, args.max_tokens)
        cli_seconds, tokens = time_cli(samples, Path(folder) / "scored.jsonl", args.policy, args.reference,
                                       args.threads)
        scored = [json.loads(line) for line in (Path(folder) / "scored.jsonl").read_text().splitlines()]
        naive_seconds, naive_rewards = time_naive(records, args.policy, args.reference, args.threads)
    by_key = {(r["lang"], r["id"], r["sample_index"]): r["reward"] for r in scored}
    ours = [by_key[(r["lang"], r["id"], r["sample_index"])] for r in records]
    result = {"policy": args.policy, "reference": args.reference, "prompts": args.prompts, "k": args.k,
              "response_tokens": tokens, "threads": args.threads,
              "seconds": {"xlpref_score": cli_seconds, "naive": naive_seconds},
              "speedup": naive_seconds / cli_seconds,
              "max_abs_reward_difference": max(abs(a - b) for a, b in zip(ours, naive_rewards))}
    print(json.dumps(result, indent=2))
    if args.output:
        args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
