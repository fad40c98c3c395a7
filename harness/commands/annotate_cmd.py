"""``xlpref annotate``: preference pairs from any registered annotator (``implicit-reward``, ``lidr``).

The annotator is chosen by its registry name, as the loop chooses it from ``annotator.name``; both
write the PAIRS.jsonl contract of ``xlpref pairs`` (``id``, ``lang``, ``prompt``, ``chosen``,
``rejected``, ``chosen_reward``, ``rejected_reward``, ``alpha``) and ``PAIRS.summary.json`` beside it,
and print the summary per language. Intermediate records (LIDR's answers and translations, the
implicit reward's scores) are kept in ``--work-dir`` (default ``PAIRS.work/`` beside the output):
rerunning the same command after a crash generates or scores only what is missing.

Example::

    xlpref annotate --annotator lidr --policy gemma-3-270m --prompts benchmarks/x_alpacaeval/mini/train_prompts/mini \\
        --langs en,es,de --limit 4 --max-new-tokens 64 -o lidr_pairs.jsonl
    xlpref annotate --annotator implicit-reward --samples samples.jsonl --policy M1 --reference M2 -o pairs.jsonl
"""

from __future__ import annotations

import time
from pathlib import Path

import click
from rich.console import Console

from harness.commands import compute_options, global_seed, write_stage_summary, writes_output
from xlpref.registry import names

# The inputs each annotator reads (option names as the user types them).
REQUIRED_INPUTS = {"lidr": ("--prompts", "--langs"), "implicit-reward": ("--samples", "--reference")}


def _read_samples(path: Path, reward: str) -> list[dict]:
    from xlpref.errors import InputError
    from xlpref.jsonio import iter_jsonl
    from xlpref.reward import check_sample_record, make_reward_function

    reward_fn = make_reward_function(reward)
    records = []
    for line, record in iter_jsonl(path):
        check_sample_record(record, reward_fn, path=path, line=line)
        records.append(record)
    if not records:
        raise InputError("no records; expected one sample record per line", path=path)
    return records


@click.command()
@click.option("--annotator", "annotator_name", required=True,
              help=f"The annotator, by registry name: {', '.join(names('annotator'))}.")
@click.option("--policy", required=True, help="pi_t (lidr: answers and translates) or pi_dpo (implicit-reward).")
@click.option("--prompts", "prompts_path", type=click.Path(path_type=Path), default=None,
              help="lidr: training prompts folder of {lang}.jsonl (or a JSONL file of lang, id, instruction).")
@click.option("--langs", default=None, help="lidr: languages, e.g. en,es,de (English pairs when en is listed).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="lidr: first N prompts per language.")
@click.option("--samples", "samples_path", type=click.Path(path_type=Path), default=None,
              help="implicit-reward: SAMPLES.jsonl from `xlpref sample`.")
@click.option("--reference", default=None, help="implicit-reward: pi_ref (same tokenizer as the policy).")
@click.option("--reward", type=click.Choice(names("reward")),
              default="cross-lingual", show_default=True, help="implicit-reward: the conditioning.")
@click.option("--token-span", type=click.Choice(["authors", "response", "response+eot"]), default="authors",
              show_default=True, help="implicit-reward: tokens summed (see `xlpref score --help`).")
@click.option("--no-length-control", is_flag=True, help="implicit-reward: alpha = 0.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=None,
              help="Generated tokens per answer / translation (default: the annotator's).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="lidr: prompts per generation batch.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="PAIRS.jsonl to write.")
@click.option("--work-dir", type=click.Path(path_type=Path), default=None,
              help="Resumable intermediate records (default: PAIRS.work/ beside the output).")
@compute_options
@click.pass_obj
@writes_output("output", is_folder=False)
def annotate(obj, annotator_name: str, policy: str, prompts_path: Path | None, langs: str | None, limit: int | None,
             samples_path: Path | None, reference: str | None, reward: str, token_span: str, no_length_control: bool,
             max_new_tokens: int | None, batch_size: int | None, output: Path, work_dir: Path | None, compute) -> None:
    """Build preference pairs with the annotator ANNOTATOR and write PAIRS.jsonl + PAIRS.summary.json."""
    from harness.store import RunStore, check_output_options, record_output_options
    from xlpref.errors import InputError
    from xlpref.jsonio import write_json_atomic, write_jsonl_atomic
    from xlpref.languages import parse_languages
    from xlpref.registry import resolve

    annotator_cls = resolve("annotator", annotator_name)
    given = {"--prompts": prompts_path, "--langs": langs, "--samples": samples_path, "--reference": reference}
    for option in REQUIRED_INPUTS.get(annotator_name, ()):
        if given[option] is None:
            raise InputError(f"annotator {annotator_name!r} needs {option}; expected "
                             f"{' and '.join(REQUIRED_INPUTS[annotator_name])}", field=option)
    for other, inputs in REQUIRED_INPUTS.items():
        unused = [option for option in inputs if other != annotator_name and given[option] is not None
                  and option not in REQUIRED_INPUTS.get(annotator_name, ())]
        if unused:
            raise InputError(f"{', '.join(unused)} belong to annotator {other!r}, not {annotator_name!r}",
                             field=unused[0])
    if samples_path is not None and output.resolve() == samples_path.resolve():
        raise InputError("output is the input file; expected another path", path=output)
    options = {k: v for k, v in {"max_new_tokens": max_new_tokens, "batch_size": batch_size}.items() if v is not None}
    console = Console()
    if annotator_name == "lidr":
        from xlpref.lidr import prompts_from_requests
        from xlpref.sampling_prompts import requests_from_prompts

        languages = parse_languages(langs)
        # English answers are always needed: they are the chosen side of every pair.
        requests = requests_from_prompts(prompts_path, ["en", *[lang for lang in languages if lang != "en"]],
                                         limit=limit)
        inputs = {"prompts": prompts_from_requests(requests), "languages": languages}
    else:
        if batch_size is not None:
            raise InputError("--batch-size is a lidr option; implicit-reward batches by --max-new-tokens "
                             "and its token budget", field="--batch-size")
        if "max_new_tokens" in options:  # implicit-reward generates only translations (translate-to-english)
            options["translation_max_new_tokens"] = options.pop("max_new_tokens")
        options |= {"reward": reward, "token_span": token_span, "length_control": not no_length_control}
        inputs = {"samples": _read_samples(samples_path, reward), "reference": reference}
    annotator = annotator_cls(None, seed=global_seed(obj), console=console, **options)
    store = RunStore(work_dir or output.with_name(output.stem + ".work"))
    # The work folder's records were made with the options recorded beside the output; resume only with those.
    resolved = check_output_options(output, {"annotator": annotator_name, "policy": policy, "reference": reference,
                                  "samples": str(samples_path.resolve()) if samples_path else None,
                                  "prompts": str(prompts_path.resolve()) if prompts_path else None, "langs": langs,
                                  "limit": limit, **options},
                         has_work=any(p.is_file() for p in store.root.rglob("*.jsonl")))
    record_output_options(output, resolved)
    start = time.perf_counter()
    result = annotator.annotate(policy=policy, store=store, compute=compute, **inputs)
    if annotator.compute_report:
        write_stage_summary(output, "annotate", {"seconds": round(time.perf_counter() - start, 2),
                                                 "pairs": len(result.pairs), "compute": annotator.compute_report})
    summary_path = output.with_name(output.stem + ".summary.json")
    write_jsonl_atomic(output, result.pairs)
    write_json_atomic(summary_path, result.summary)
    console.print(f"wrote {len(result.pairs)} pairs ({annotator_name}) to {output} and the summary to {summary_path}; "
                  f"intermediate records in {store.root}")
