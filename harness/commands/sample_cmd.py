"""``xlpref sample``: n responses per prompt and language into a resumable SAMPLES.jsonl.

The output file is written through the run store's record log: records are appended to
``SAMPLES.partial.jsonl`` batch by batch, a rerun after an interruption resumes there, and the
finished file appears atomically, in prompt order.

Example::

    xlpref --seed 42 sample --model tiny-random-llama --prompts ../shared/data/train_prompts/random_100 \\
        --langs en,es --n 4 --max-new-tokens 32 --limit 5 -o samples.jsonl
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import click
from rich.console import Console
from rich.table import Table

from harness.commands import compute_options, global_seed, write_stage_summary, writes_output
from xlpref.registry import names

#: Prompts per batch when --batch-size is not given: small for transformers' padded batches, large for
#: vLLM, whose continuous batching wants many sequences in flight.
DEFAULT_BATCH_SIZE = {"hf": 8, "vllm": 256}


def summarize_samples(records: list[dict]) -> list[dict]:
    """Per language: prompts, samples, mean response tokens and characters, share cut by the token limit."""
    by_lang: dict[str, list[dict]] = {}
    for record in records:
        by_lang.setdefault(record["lang"], []).append(record)
    rows = []
    for lang, recs in by_lang.items():
        rows.append({
            "lang": lang, "prompts": len({r["id"] for r in recs}), "samples": len(recs),
            "mean_tokens": sum(r["n_response_tokens"] for r in recs) / len(recs),
            "mean_chars": sum(len(r["response"]) for r in recs) / len(recs),
            "length_cut": sum(r["finish_reason"] == "length" for r in recs) / len(recs),
        })
    return rows


def summary_table(rows: list[dict], title: str) -> Table:
    table = Table(title=title)
    for name in ("lang", "prompts", "samples", "mean tokens", "mean chars", "cut at limit"):
        table.add_column(name, justify="left" if name == "lang" else "right")
    for row in rows:
        table.add_row(row["lang"], str(row["prompts"]), str(row["samples"]), f"{row['mean_tokens']:.1f}",
                      f"{row['mean_chars']:.1f}", f"{100 * row['length_cut']:.0f}%")
    return table


@click.command()
@click.option("--model", required=True, help="Model spec: a folder, a hub id, gemma-3-270m, tiny-random-llama.")
@click.option("--prompts", required=True, type=click.Path(path_type=Path),
              help="Folder of {lang}.jsonl training prompts or {lang}.json X-AlpacaEval instructions, or a JSONL "
                   "file of lang/id/instruction records.")
@click.option("--langs", required=True, help="Comma-separated language codes, e.g. en,es.")
@click.option("--n", "n", type=int, default=1, show_default=True, help="Samples per prompt.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="SAMPLES.jsonl to write.")
@click.option("--backend", type=click.Choice(names("sampler")), default="hf", show_default=True)
@click.option("--temperature", type=float, default=0.9, show_default=True, help="0 means greedy.")
@click.option("--top-p", type=float, default=1.0, show_default=True)
@click.option("--max-new-tokens", type=int, default=256, show_default=True)
@click.option("--batch-size", type=int, default=None, help="Prompts per batch (default: hf 8, vllm 256).")
@click.option("--repetition-penalty", type=float, default=1.0, show_default=True)
@click.option("--stop", multiple=True, help="A stop string (repeatable).")
@click.option("--limit", type=int, default=None, help="Only the first K prompts of each language.")
@click.option("--seed", type=int, default=None, help="Sampling seed (default: the global --seed).")
@click.option("--tensor-parallel-size", type=int, default=1, show_default=True, help="vllm only.")
@click.option("--gpu-memory-utilization", type=float, default=None, help="vllm only (default GPU 0.9, CPU 0.3).")
@compute_options
@click.pass_obj
@writes_output("output", is_folder=False)
def sample(obj, model: str, prompts: Path, langs: str, n: int, output: Path, backend: str, temperature: float,
           top_p: float, max_new_tokens: int, batch_size: int | None, repetition_penalty: float,
           stop: tuple[str, ...], limit: int | None, seed: int | None, tensor_parallel_size: int,
           gpu_memory_utilization: float | None, compute) -> None:
    """Sample N responses per prompt in each language of LANGS into OUTPUT (resumable)."""
    from harness.store import check_output_options, record_output_options
    from xlpref.records import RecordLog
    from xlpref.languages import parse_languages
    from xlpref.ray_stages import make_stage_sampler
    from xlpref.sampling import SAMPLE_KEY, SamplingParams, sample_to_log
    from xlpref.sampling_prompts import requests_from_prompts

    params = SamplingParams(
        n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
        seed=seed if seed is not None else global_seed(obj),
        batch_size=batch_size or DEFAULT_BATCH_SIZE[backend], repetition_penalty=repetition_penalty, stop=stop)
    requests = requests_from_prompts(prompts, parse_languages(langs), limit=limit)
    log = RecordLog(output, SAMPLE_KEY)
    # Records carry model, seed and decoding (checked by sample_to_log); the sidecar covers the rest.
    resolved = check_output_options(
        output, {"model": model, "prompts": str(prompts.resolve()), "langs": langs, "limit": limit, "backend": backend,
                 "batch_size": params.batch_size, "repetition_penalty": repetition_penalty, "stop": list(stop)},
        has_work=log.is_finished or bool(log.done_keys), changeable=("langs", "limit"))
    console = Console(stderr=True)
    start = time.perf_counter()
    if log.is_finished:
        # Checked before loading the model: a finished file that matches is the answer.
        records = sample_to_log(SimpleNamespace(name=backend, model_name=model), requests, params, log)
        console.print(f"{output} is already finished ({len(records)} samples); nothing to do")
        return
    options = {}
    if backend == "vllm":
        options = dict(tensor_parallel_size=tensor_parallel_size, gpu_memory_utilization=gpu_memory_utilization)
    elif (tensor_parallel_size, gpu_memory_utilization) != (1, None):
        console.print("note: --tensor-parallel-size and --gpu-memory-utilization apply to --backend vllm only; "
                      "ignored")
    resumed = len(log.done_keys)
    sampler = make_stage_sampler(backend, model, compute, **options)
    record_output_options(output, resolved)
    try:
        records = sample_to_log(sampler, requests, params, log)
    finally:
        sampler.close()
    seconds = time.perf_counter() - start
    tokens = sum(r["n_response_tokens"] for r in records)
    if compute.engine == "ray":
        write_stage_summary(output, "sample", {"seconds": round(seconds, 2), "records": len(records),
                                               "compute": sampler.report})
    Console().print(summary_table(summarize_samples(records), f"{len(records)} samples from {model} ({backend})"))
    console.print(f"wrote {output} ({resumed} samples resumed from an earlier run); {tokens} response tokens, "
                  f"{seconds:.1f} s including model load")
