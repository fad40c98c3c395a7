"""The paper's published numbers as results rows ("kind": "published"), each citing its table.

The numbers are facts from the ICR paper, read from ``../shared/data/paper/icr_published_results.json``;
only the numbers are written (our row/metrics format, AlpacaEval column names, percent), never the
shared file itself. MT-Bench scores (table 3) are another benchmark on another scale and are left out.

Example::

    from harness.results.published_rows import import_published
    import_published("../shared/data/paper/icr_published_results.json", "results")
    # -> results/published/paper-icr-iter2/row.json, .../en/metrics.json, ...
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from harness.results.rows import PUBLISHED_DIR, read_row, write_row
from xlpref.errors import InputError
from xlpref.jsonio import read_json

PUBLISHED_ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo (multilingual prompt), published"
PUBLISHED_REFERENCE = "gpt-4-turbo-2024-04-09"

# Table 2 rows: paper label -> (row_id, model, run, iteration). The run ties iterations together for plots:
# the English DPO model is ICR's iteration 0 (METHOD.md).
TABLE2_ROWS = {
    "Llama-3-Base-8B-SFT (reference model)": ("paper-llama3-sft", "princeton-nlp/Llama-3-Base-8B-SFT", None, None),
    "Llama-3-Base-8B-SFT-DPO (English DPO model, iteration 0)":
        ("paper-icr-iter0", "princeton-nlp/Llama-3-Base-8B-SFT-DPO", "paper-icr", 0),
    "ICR iteration 1": ("paper-icr-iter1", "ICR iteration 1 of Llama-3-Base-8B-SFT-DPO", "paper-icr", 1),
    "ICR iteration 2": ("paper-icr-iter2", "ICR iteration 2 of Llama-3-Base-8B-SFT-DPO", "paper-icr", 2),
    "Meta-Llama-3-8B-Instruct": ("paper-llama3-8b-instruct", "meta-llama/Meta-Llama-3-8B-Instruct", None, None),
    "Language Imbalance Driven Rewarding (best of 2 iterations)":
        ("paper-lidr-best", "LIDR (best of 2 iterations) of Llama-3-Base-8B-SFT-DPO", "paper-lidr", None),
    "Llama-3-Base-8B-SFT-KTO (iteration 0)":
        ("paper-icr-kto-iter0", "Llama-3-Base-8B-SFT-KTO", "paper-icr-kto", 0),
    "ICR-KTO iteration 1":
        ("paper-icr-kto-iter1", "ICR-KTO iteration 1 of Llama-3-Base-8B-SFT-KTO", "paper-icr-kto", 1),
    "ICR-KTO iteration 2":
        ("paper-icr-kto-iter2", "ICR-KTO iteration 2 of Llama-3-Base-8B-SFT-KTO", "paper-icr-kto", 2),
}
# The paper's own 5-language averages, kept beside the rows they average (a check on our averaging).
AVERAGE_TABLE2_ROWS = {"SFT-DPO iteration 0": "paper-icr-iter0", "ICR iteration 1": "paper-icr-iter1",
                       "ICR iteration 2": "paper-icr-iter2"}
# Paper section -> the table name shown on the leaderboard; each is ranked on its own (the ablation
# was read off a plot, the low-resource setting trained on other languages).
PUBLISHED_TABLES = {"table2": "Table 2",
                    "reward_ablation_iteration1_lc_read_off_plot": "reward ablation figure, LC read off the plot",
                    "low_resource_win_rate_table5": "Table 5, low-resource setting"}
REWARD_NAMES = {"cross_lingual": "cross-lingual R_c", "multilingual": "multilingual R_m",
                "translate_to_english": "translate-to-English R_t"}


def _row_id_part(text: str) -> str:
    """``text`` (a paper's table label) in a row id: lowercase letters and digits, other runs -> '-'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{value!r} is not a number; expected a percentage", record=where)
    return float(value)


def published_rows(paper: dict, paper_path: str | Path = "paper json") -> list[tuple[dict, dict[str, dict]]]:
    """(row meta, {lang: metrics}) for every X-AlpacaEval number in the paper JSON."""
    for key in ("source", "table2"):
        if key not in paper:
            raise InputError("missing; expected the paper's published results", path=paper_path, field=key)
    source = paper["source"]
    averages = {AVERAGE_TABLE2_ROWS[k]: v for k, v in paper.get("average_table2", {}).items()
                if k in AVERAGE_TABLE2_ROWS}
    out = []

    def add(row_id, model, run, iteration, label, section, per_lang, **extra):
        meta = {"row_id": row_id, "model": model, "run": run, "iteration": iteration, "label": label,
                "kind": "published", "published_table": PUBLISHED_TABLES[section],
                "annotator": PUBLISHED_ANNOTATOR, "annotator_is_demo": False, "reference": PUBLISHED_REFERENCE,
                "source": f"{source}; section {section!r} of {Path(paper_path).name}",
                "annotator_detail": paper.get("annotator"), "created": None, **extra}
        out.append((meta, per_lang))

    for label, by_lang in paper["table2"].items():
        row_id, model, run, iteration = TABLE2_ROWS.get(label, (f"paper-{_row_id_part(label)}", label, None, None))
        per_lang = {lang: {name: _number(v[name], f"table2/{label}/{lang}/{name}")
                           for name in ("win_rate", "length_controlled_winrate") if name in v}
                    for lang, v in by_lang.items()}
        extra = {"published_average": averages[row_id]} if row_id in averages else {}
        add(row_id, model, run, iteration, label, "table2", per_lang, **extra)

    for reward, by_lang in paper.get("reward_ablation_iteration1_lc_read_off_plot", {}).items():
        name = REWARD_NAMES.get(reward, reward)
        # No run: a single iteration per reward is no trajectory to plot.
        add(f"paper-ablation-{_row_id_part(reward)}-iter1", f"ICR iteration 1, reward {name}", None, 1,
            f"ICR iteration 1, reward {name} (LC read off a plot)", "reward_ablation_iteration1_lc_read_off_plot",
            {lang: {"length_controlled_winrate": _number(v, f"ablation/{reward}/{lang}")}
             for lang, v in by_lang.items()})

    for iteration_label, by_lang in paper.get("low_resource_win_rate_table5", {}).items():
        match = re.fullmatch(r"iteration (\d+)", iteration_label)
        if not match:
            raise InputError(f"{iteration_label!r}; expected 'iteration <t>'", path=paper_path,
                             field="low_resource_win_rate_table5")
        t = int(match.group(1))
        add(f"paper-icr-lowres-iter{t}", f"ICR iteration {t} (low-resource setting: en, bn, sw, th)",
            "paper-icr-lowres", t, f"ICR low-resource iteration {t} (WR only)", "low_resource_win_rate_table5",
            {lang: {"win_rate": _number(v, f"table5/{iteration_label}/{lang}")} for lang, v in by_lang.items()})
    return out


def import_published(paper_json: str | Path, results_dir: str | Path) -> list[Path]:
    """Regenerate results/published/ from the paper JSON; returns the row folders written.

    Published rows the JSON does not produce are removed, so the folder always mirrors it.
    """
    paper_json = Path(paper_json)
    paper = read_json(paper_json)
    if not isinstance(paper, dict):
        raise InputError(f"expected a JSON object, found {type(paper).__name__}", path=paper_json)
    written = [write_row(results_dir, meta, {lang: {"metrics": m} for lang, m in per_lang.items()})
               for meta, per_lang in published_rows(paper, paper_json)]
    for folder in sorted((Path(results_dir) / PUBLISHED_DIR).glob("*/row.json")):
        folder = folder.parent.resolve()
        if folder not in written and read_row(folder).is_published:
            shutil.rmtree(folder)
    return written
