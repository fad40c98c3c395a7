"""Sampling throughput: transformers generate at batch 1 and 16, and the vLLM engine (start-up, tokens/s).

Counts generated response tokens (what ``n_response_tokens`` records: up to the end of turn or a stop
string), so a batch that runs on after some sequences stopped is not credited for their padding.
Prints a rich table and writes JSON. For hf it also gives tokens per CPU second of this process
(vLLM's engine runs in other processes, so only its wall time is measured). On a shared machine the
numbers are contended: the JSON records the load average and torch's thread count beside them.

Example::

    python -m benchmarks.perf.sampling --model gemma-3-270m -o benchmarks/perf/results/sampling.json
    python -m benchmarks.perf.sampling --model tiny-random-llama --skip-vllm   # seconds, for a smoke test
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

#: 16 short instructions in several scripts; the benchmark needs no data files.
PROMPTS = [
    "Write a short poem about the sea.", "Explain why the sky is blue.", "List three uses of a paperclip.",
    "Give me a recipe for pancakes.", "Escribe un poema corto sobre el mar.", "¿Por qué el cielo es azul?",
    "Nenne drei Hauptstädte in Europa.", "Explique la photosynthèse simplement.", "Напиши короткий рассказ о коте.",
    "Расскажи, как работает радуга.", "写一首关于秋天的短诗。", "解释一下为什么冬天会下雪。",
    "Summarise the plot of Hamlet in two sentences.", "What is the capital of Australia?",
    "Describe a sunrise to someone who has never seen one.", "Suggest a name for a bakery.",
]


def _requests():
    from xlpref.sampling import SampleRequest

    return [SampleRequest(i, "en", text, text) for i, text in enumerate(PROMPTS)]


def _row(backend: str, setting: str, records: list[dict], seconds: float, startup: float | None = None,
         cpu_seconds: float | None = None) -> dict:
    tokens = sum(r["n_response_tokens"] for r in records)
    return {"backend": backend, "setting": setting, "sequences": len(records), "tokens": tokens,
            "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1),
            "startup_seconds": None if startup is None else round(startup, 1),
            "cpu_seconds": None if cpu_seconds is None else round(cpu_seconds, 2),
            "tokens_per_cpu_s": None if cpu_seconds is None else round(tokens / cpu_seconds, 1)}


def bench_hf(model: str, batch_sizes: list[int], max_new_tokens: int) -> list[dict]:
    """hf generate over the 16 prompts (one sample each) at each batch size."""
    from xlpref.sampling import SamplingParams, make_sampler

    start = time.perf_counter()
    sampler = make_sampler("hf", model)
    load = time.perf_counter() - start
    requests = _requests()
    sampler.sample(requests[:1], SamplingParams(max_new_tokens=4), progress=False)  # warm-up
    rows = []
    for batch_size in batch_sizes:
        params = SamplingParams(n=1, max_new_tokens=max_new_tokens, batch_size=batch_size)
        start, cpu_start = time.perf_counter(), time.process_time()
        records = sampler.sample(requests, params, progress=False)
        # CPU seconds (all threads of this process) say what the work costs when the machine is shared.
        rows.append(_row("hf", f"batch {batch_size}, {len(requests)}x{max_new_tokens}", records,
                         time.perf_counter() - start, load, time.process_time() - cpu_start))
    sampler.close()
    return rows


def bench_vllm(model: str, n: int, max_new_tokens: int, enforce_eager: bool | None) -> dict:
    """vLLM: engine start-up, then the 16 prompts with n samples each in one call."""
    from xlpref.sampling import SamplingParams, make_sampler

    start = time.perf_counter()
    sampler = make_sampler("vllm", model, enforce_eager=enforce_eager)
    startup = time.perf_counter() - start
    requests = _requests()
    params = SamplingParams(n=n, max_new_tokens=max_new_tokens, batch_size=len(requests))
    start = time.perf_counter()
    records = sampler.sample(requests, params, progress=False)
    seconds = time.perf_counter() - start
    eager = sampler.engine_options["enforce_eager"]
    sampler.close()
    return _row("vllm", f"{len(records)}x{max_new_tokens}, {'eager' if eager else 'compiled'}", records, seconds,
                startup)


def results_table(rows: list[dict], title: str) -> Table:
    table = Table(title=title)
    for name in ("backend", "setting", "sequences", "tokens", "seconds", "tokens/s", "tokens/CPU-s", "start-up s"):
        table.add_column(name, justify="left" if name in ("backend", "setting") else "right")
    for row in rows:
        table.add_row(row["backend"], row["setting"], str(row["sequences"]), str(row["tokens"]),
                      f"{row['seconds']:.1f}", f"{row['tokens_per_s']:.1f}",
                      "" if row["tokens_per_cpu_s"] is None else f"{row['tokens_per_cpu_s']:.1f}",
                      "" if row["startup_seconds"] is None else f"{row['startup_seconds']:.1f}")
    return table


@click.command()
@click.option("--model", default="gemma-3-270m", show_default=True)
@click.option("--hf-batch-sizes", default="1,16", show_default=True)
@click.option("--hf-max-new-tokens", type=int, default=32, show_default=True)
@click.option("--vllm-n", type=int, default=4, show_default=True, help="Samples per prompt (16 prompts).")
@click.option("--vllm-max-new-tokens", type=int, default=64, show_default=True)
@click.option("--vllm-compile/--vllm-eager", default=None, help="Default: eager on CPU, compiled on GPU.")
@click.option("--skip-vllm", is_flag=True)
@click.option("-o", "--output", type=click.Path(path_type=Path),
              default=Path("benchmarks/perf/results/sampling.json"), show_default=True)
def main(model: str, hf_batch_sizes: str, hf_max_new_tokens: int, vllm_n: int, vllm_max_new_tokens: int,
         vllm_compile: bool | None, skip_vllm: bool, output: Path) -> None:
    """Measure sampling throughput of the hf and vllm backends on MODEL."""
    import torch

    from xlpref.jsonio import write_json_atomic

    rows = bench_hf(model, [int(b) for b in hf_batch_sizes.split(",")], hf_max_new_tokens)
    if not skip_vllm:
        rows.append(bench_vllm(model, vllm_n, vllm_max_new_tokens, None if vllm_compile is None else not vllm_compile))
    title = f"Sampling throughput, {model} ({platform.machine()}, {os.cpu_count()} CPUs)"
    Console(width=120).print(results_table(rows, title))
    write_json_atomic(output, {"model": model, "rows": rows, "torch_threads": torch.get_num_threads(),
                               "cpus": os.cpu_count(), "load_average_1m": os.getloadavg()[0],
                               "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    Console(stderr=True).print(f"wrote {output}")


if __name__ == "__main__":  # the vLLM engine spawns processes that import this module again
    main()
