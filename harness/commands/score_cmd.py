"""``xlpref score``: the implicit reward of sampled responses.

Resumable: records are appended to ``SCORED.partial.jsonl`` as they are scored and ``SCORED.jsonl``
appears atomically at the end; rerunning the same command after a crash scores only what is missing.

Example::

    xlpref score --policy tiny-random-llama --reference ref_folder/ --reward cross-lingual samples.jsonl -o scored.jsonl
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from harness.commands import compute_options, write_stage_summary, writes_output
from xlpref.registry import names

#: xlpref.reward.TOKEN_SPANS (not imported: the CLI's help loads no torch)
TOKEN_SPANS = ("authors", "response", "response+eot")


def score_table(records: list[dict]) -> Table:
    """Responses, mean reward and mean scored tokens per language."""
    by_lang: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        by_lang[record["lang"]].append(record)
    title = "implicit reward"
    if records:
        title += f" ({records[0]['reward_type']}, tokens: {records[0].get('token_span', 'response')})"
    table = Table(title=title)
    for name in ("lang", "responses", "mean reward", "min", "max", "mean tokens"):
        table.add_column(name, justify="left" if name == "lang" else "right")
    for lang, rows in by_lang.items():
        rewards = [r["reward"] for r in rows]
        table.add_row(lang, str(len(rows)), f"{sum(rewards) / len(rows):.3f}", f"{min(rewards):.3f}",
                      f"{max(rewards):.3f}", f"{sum(r['n_response_tokens'] for r in rows) / len(rows):.1f}")
    return table


@click.command()
@click.argument("samples_path", metavar="SAMPLES.jsonl", type=click.Path(path_type=Path))
@click.option("--policy", required=True, help="pi_dpo: model spec, folder or hub id.")
@click.option("--reference", required=True, help="pi_ref: model spec, folder or hub id (same tokenizer).")
@click.option("--reward", type=click.Choice(names("reward")), default="cross-lingual", show_default=True,
              help="What a response is conditioned on.")
@click.option("--token-span", type=click.Choice(TOKEN_SPANS), default="authors", show_default=True,
              help="Tokens summed: authors = y_2..y_m + end-of-turn (the authors' code), response = y_1..y_m, "
                   "response+eot = y_1..y_m + end-of-turn.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="SCORED.jsonl to write.")
@click.option("--max-batch-tokens", type=click.IntRange(min=1), default=4096, show_default=True,
              help="Padded tokens (prompt included) per forward pass.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=8192, show_default=True,
              help="Translation length limit (translate-to-english only).")
@compute_options
@click.pass_obj
@writes_output("output", is_folder=False)
def score(obj, samples_path: Path, policy: str, reference: str, reward: str, token_span: str, output: Path,
          max_batch_tokens: int, max_new_tokens: int, compute) -> None:
    """Score each response of SAMPLES.jsonl with the implicit reward log pi_policy - log pi_reference."""
    from harness.store import check_output_options, record_output_options
    from xlpref.records import RecordLog
    from xlpref.errors import InputError
    from xlpref.jsonio import iter_jsonl
    from xlpref.models import load_model
    from xlpref.reward import (
        SCORE_KEY,
        TranslateToEnglishReward,
        check_same_tokenizer,
        check_sample_record,
        make_reward_function,
        score_records,
    )

    if output.resolve() == samples_path.resolve():
        raise InputError("output is the input file; expected another path", path=output)
    reward_fn = make_reward_function(reward)
    if isinstance(reward_fn, TranslateToEnglishReward):
        reward_fn.max_new_tokens = max_new_tokens
    records = []
    for line, record in iter_jsonl(samples_path):
        check_sample_record(record, reward_fn, path=samples_path, line=line)
        records.append(record)
    if not records:
        raise InputError("no records; expected one sample record per line", path=samples_path)
    log = RecordLog(output, SCORE_KEY)
    # A resumed output keeps the options it was started with (records do not say which models scored them).
    resolved = check_output_options(
        output, {"samples": str(samples_path.resolve()), "policy": policy, "reference": reference, "reward": reward,
                 "token_span": token_span, "max_new_tokens": max_new_tokens},
        has_work=log.is_finished or bool(log.done_keys))
    options = {"max_batch_tokens": max_batch_tokens, "token_span": token_span}
    workers = None
    if compute.engine == "ray":  # the workers load the models; the driver keeps the record log
        from xlpref.ray_stages import RayScorer

        workers = RayScorer(compute, policy, reference, reward_fn, **options)
        policy_model = reference_model = tokenizer = None
    else:
        policy_model, tokenizer = load_model(policy)
        if reference == policy:
            reference_model = policy_model  # the same model: every reward is 0
        else:
            reference_model, reference_tokenizer = load_model(reference)
            check_same_tokenizer(tokenizer, reference_tokenizer)
    record_output_options(output, resolved)
    start = time.perf_counter()  # models are loaded: what follows is the scoring itself
    try:
        scored = score_records(records, policy_model, reference_model, tokenizer, reward_fn, log=log,
                               scorer=workers, **options)
    finally:
        if workers is not None:
            workers.close()
    seconds = time.perf_counter() - start
    if workers is not None:
        write_stage_summary(output, "score", {"seconds": round(seconds, 2), "records": len(scored),
                                              "compute": workers.report})
    console = Console()
    console.print(score_table(scored))
    tokens = sum(r["n_response_tokens"] for r in scored)
    console.print(f"scored {tokens} response tokens in {seconds:.2f} s ({tokens / max(seconds, 1e-9):.1f} tokens/s, "
                  "model loading excluded; records already in the output are not scored again)")
    console.print(f"wrote {len(scored)} scored records to {output}")
