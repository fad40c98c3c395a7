"""``xlpref reward-accuracy``: does the implicit reward rank answers as a judge did, per language?

``--annotations`` is an AlpacaEval annotations file, or a folder: either ``{lang}/annotations.json``
per language (an iteration's ``eval/iter_t``, judged per language) or ``*.json`` annotation files
of one language (AlpacaEval 2's ``alpaca_eval_annotations/<model>.json``, English). A file's language
is ``--lang``, else its folder's name when that is a language code, else English. Both outputs of
every pair are scored with the implicit reward of (``--policy``, ``--reference``) and the agreement
with the judge's preference is reported on clear pairs and on all, with bootstrap intervals
(:mod:`harness.metrics.reward_accuracy`). ``--limit N`` scores a seeded sample of N pairs per
language (``--seed``).

Example::

    xlpref reward-accuracy --policy gemma-3-270m-en-dpo --reference gemma-3-270m \\
        --annotations ../shared/data/alpaca_eval_annotations/vicuna-7b.json --limit 40
    xlpref reward-accuracy --policy runs/demo/iter_0/model --reference gemma-3-270m \\
        --annotations runs/demo/eval/iter_1 --json
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from harness.commands import global_seed
from harness.commands.score_cmd import TOKEN_SPANS
from xlpref.errors import InputError


def find_annotation_files(path: Path, lang: str | None) -> dict[str, list[Path]]:
    """{lang: annotation files} for a file or a folder (see the module docstring)."""
    from xlpref.languages import LANGUAGE_NAMES

    def language_of(file: Path) -> str:
        return lang or (file.parent.name if file.parent.name in LANGUAGE_NAMES else "en")

    if path.is_file():
        return {language_of(path): [path]}
    if not path.is_dir():
        raise InputError("not found; expected an annotations file or a folder of them", path=path)
    per_lang = {code: [path / code / "annotations.json"] for code in LANGUAGE_NAMES
                if (path / code / "annotations.json").is_file() and (lang is None or code == lang)}
    if per_lang:
        return per_lang
    files = sorted(path.glob("*.json"))
    if not files:
        raise InputError("no {lang}/annotations.json and no *.json files; expected AlpacaEval annotations",
                         path=path)
    return {lang or "en": files}


def load_pairs(files: list[Path], limit: int | None, seed: int) -> list[dict]:
    """The files' annotations (validated), or a seeded sample of ``limit`` of them."""
    from harness.metrics.annotations import load_annotations

    records = []
    for file in files:
        records += load_annotations(file).to_dict("records")
    if limit is not None and limit < len(records):
        records = random.Random(seed).sample(records, limit)
    return records


def english_instructions(data_dir: Path | None) -> dict[int, str] | None:
    """{id: English X-AlpacaEval instruction} from the data folder, or None where it is absent."""
    from xlpref.data import default_data_dir
    from xlpref.jsonio import read_json

    path = (data_dir or default_data_dir()) / "x_alpacaeval" / "instructions" / "en.json"
    return {r["id"]: r["instruction"] for r in read_json(path)} if path.is_file() else None


def render_accuracy(results: dict[str, dict], caption: str) -> Table:
    table = Table(title="implicit reward vs the judge: agreement in % (chance 50)", caption=caption,
                  caption_justify="left")
    for name in ("lang", "pairs", "clear n", "clear %", "clear interval", "all n", "all %", "all interval",
                 "mean margin"):
        table.add_column(name, justify="left" if name == "lang" else "right", no_wrap=True)

    def pct(value: Any) -> str:
        return "-" if value is None else f"{value:.1f}"

    def interval(value: Any) -> str:
        return "-" if value is None else f"[{value[0]:.1f}, {value[1]:.1f}]"

    for lang, r in results.items():
        table.add_row(lang, str(r["n_pairs"]), str(r["n_clear"]), pct(r["agreement_clear"]), interval(r["ci_clear"]),
                      str(r["n_all"]), pct(r["agreement_all"]), interval(r["ci_all"]),
                      "-" if r["mean_margin"] is None else f"{r['mean_margin']:+.2f}")
    return table


@click.command("reward-accuracy")
@click.option("--policy", required=True, help="pi_dpo: model spec, folder or hub id.")
@click.option("--reference", required=True, help="pi_ref: model spec, folder or hub id (same tokenizer).")
@click.option("--annotations", "annotations_path", required=True, type=click.Path(path_type=Path),
              help="AlpacaEval annotations: a file, {lang}/annotations.json folders, or a folder of *.json.")
@click.option("--reward", type=click.Choice(["cross-lingual", "multilingual"]), default="cross-lingual",
              show_default=True, help="What a response is conditioned on.")
@click.option("--token-span", type=click.Choice(TOKEN_SPANS), default="authors", show_default=True,
              help="Tokens the reward counts (as `xlpref score`; authors: the authors' span).")
@click.option("--lang", default=None, help="Language of the annotations (default: from the folder, else en).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="A seeded sample of N pairs per language.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Data folder with X-AlpacaEval's English instructions (cross-lingual, non-English annotations).")
@click.option("--n-boot", type=click.IntRange(min=100), default=2000, show_default=True, help="Bootstrap resamples.")
@click.option("--max-batch-tokens", type=click.IntRange(min=1), default=4096, show_default=True,
              help="Padded tokens (prompt included) per forward pass.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.pass_obj
def reward_accuracy(obj: Any, policy: str, reference: str, annotations_path: Path, reward: str, token_span: str, lang: str | None,
                    limit: int | None, data_dir: Path | None, n_boot: int, max_batch_tokens: int,
                    as_json: bool) -> None:
    """Agreement of the implicit reward's ranking with a judge's preferences, per language."""
    from harness.metrics.reward_accuracy import (
        CLEAR_MARGIN,
        agreement,
        annotation_samples,
    )
    from xlpref.languages import language_name
    from xlpref.models import load_model
    from xlpref.reward import check_same_tokenizer, score_records

    seed = global_seed(obj)
    if lang is not None:
        language_name(lang)
    files = find_annotation_files(annotations_path, lang)
    for code in files:
        language_name(code)
    english = english_instructions(data_dir) if reward == "cross-lingual" and set(files) - {"en"} else None
    if english is None and reward == "cross-lingual" and set(files) - {"en"}:
        raise InputError("cross-lingual scoring of non-English annotations needs X-AlpacaEval's English "
                         "instructions; expected --data-dir with x_alpacaeval/instructions/en.json", field="data-dir")
    pairs = {code: load_pairs(paths, limit, seed) for code, paths in files.items()}  # bad files fail before loading
    samples = {code: annotation_samples(records, code, english=english, where=str(files[code][0]))
               for code, records in pairs.items()}
    policy_model, tokenizer = load_model(policy)
    if reference == policy:
        reference_model = policy_model
    else:
        reference_model, reference_tokenizer = load_model(reference)
        check_same_tokenizer(tokenizer, reference_tokenizer)
    results = {}
    for code, records in samples.items():
        scored = score_records(records, policy_model, reference_model, tokenizer, reward,
                               progress=not as_json, max_batch_tokens=max_batch_tokens, token_span=token_span)
        rewards = {(r["id"], r["sample_index"]): r["reward"] for r in scored}
        n = len(pairs[code])
        results[code] = agreement([rewards[(i, 0)] for i in range(n)], [rewards[(i, 1)] for i in range(n)],
                                  [float(p["preference"]) for p in pairs[code]], n_boot=n_boot, seed=seed)
    report = {"policy": policy, "reference": reference, "reward": reward, "token_span": token_span, "annotations": str(annotations_path),
              "limit": limit, "seed": seed, "clear_margin": CLEAR_MARGIN, "per_language": results}
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    caption = (f"policy {policy}, reference {reference}, reward {reward}, tokens {token_span}; clear: |preference - 1.5| >= "
               f"{CLEAR_MARGIN}; {95}% bootstrap intervals over pairs ({n_boot} resamples, seed {seed})")
    Console().print(render_accuracy(results, caption))
