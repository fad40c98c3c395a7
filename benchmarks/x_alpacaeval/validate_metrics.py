"""Check the metric code against AlpacaEval 2's official leaderboard, model by model.

For every annotations file in ``alpaca_eval_annotations/`` (real AlpacaEval 2 annotations by GPT-4
Turbo against gpt4_1106_preview) it prints the official win rate and LC (the leaderboard CSV shipped
inside alpaca-eval), ours, and the absolute differences. LC is computed with the official difficulty
table; the official LC also used gamed-baseline regularisation, whose annotations are not available
offline, so ours is unregularised (``lc_gamed_regularisation: false``) and expected to differ a
little. ``--fit-difficulty`` also fits the instruction difficulty on all the models (about 30 s) and
reports its correlation with the official table.

Example::

    python -m benchmarks.x_alpacaeval.validate_metrics --out /tmp/validate_metrics.json --fit-difficulty
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from harness.metrics.annotations import assign_ids_by_instruction, load_annotations
from harness.metrics.difficulty import fit_instruction_difficulty, load_instruction_difficulty
from harness.metrics.winrate import compute_metrics
from xlpref.data import default_data_dir
from xlpref.jsonio import read_json, write_json_atomic


def official_leaderboard() -> pd.DataFrame:
    """AlpacaEval 2's leaderboard for the weighted GPT-4 Turbo annotator, as shipped inside alpaca-eval."""
    import alpaca_eval

    path = (Path(alpaca_eval.__file__).parent / "leaderboards" / "data_AlpacaEval_2" /
            "weighted_alpaca_eval_gpt4_turbo_leaderboard.csv")
    return pd.read_csv(path, index_col=0)


def validate(data_dir: Path, *, fit_difficulty: bool = False) -> dict:
    """Per model: official and our WR and LC, their differences; optionally the fitted difficulty's correlation."""
    leaderboard = official_leaderboard()
    difficulty = load_instruction_difficulty(data_dir / "alpaca_eval_lc" / "instruction_difficulty.csv")
    instructions = read_json(data_dir / "x_alpacaeval" / "instructions" / "en.json")
    rows, aligned = [], {}
    for path in sorted((data_dir / "alpaca_eval_annotations").glob("*.json")):
        model = path.stem  # the leaderboard's name (NullModel's records say generator 'example')
        annotations = load_annotations(path)
        ours = compute_metrics(annotations, instruction_difficulty=difficulty)
        # records carry no id: alpaca-eval indexes them by position; also index them by instruction text
        aligned[model] = assign_ids_by_instruction(annotations, instructions, path=path)
        is_in_order = bool((aligned[model]["id"].to_numpy() == np.arange(1, len(annotations) + 1)).all())
        lc_aligned = (ours["length_controlled_winrate"] if is_in_order else
                      compute_metrics(aligned[model], instruction_difficulty=difficulty)["length_controlled_winrate"])
        official = leaderboard.loc[model]
        rows.append({
            "model": model, "n_total": ours["n_total"], "is_in_instruction_order": is_in_order,
            "official_win_rate": float(official["win_rate"]), "win_rate": ours["win_rate"],
            "win_rate_abs_diff": abs(ours["win_rate"] - official["win_rate"]),
            "official_lc": float(official["length_controlled_winrate"]), "lc": ours["length_controlled_winrate"],
            "lc_abs_diff": abs(ours["length_controlled_winrate"] - official["length_controlled_winrate"]),
            "lc_by_instruction_text": lc_aligned,
            "official_avg_length": int(official["avg_length"]), "avg_length": ours["avg_length"],
        })
    frame = pd.DataFrame(rows)
    report = {
        "annotations": str(data_dir / "alpaca_eval_annotations"), "n_models": len(frame),
        "max_win_rate_abs_diff": float(frame["win_rate_abs_diff"].max()),
        "max_lc_abs_diff": float(frame["lc_abs_diff"].max()),
        "mean_lc_abs_diff": float(frame["lc_abs_diff"].mean()),
        "lc_note": "official LC used gamed-baseline regularisation (annotations not available offline); ours has none",
        "models": rows,
    }
    if fit_difficulty:
        fitted = fit_instruction_difficulty(aligned)
        common = fitted.index.intersection(difficulty.index)
        report["fitted_difficulty"] = {
            "n_models": len(aligned), "n_instructions": len(common), "glm_C": fitted.attrs["glm_C"],
            "pearson": float(np.corrcoef(fitted.loc[common], difficulty.loc[common])[0, 1]),
            "spearman": float(fitted.loc[common].rank().corr(difficulty.loc[common].rank())),
        }
    return report


def render(report: dict) -> Table:
    table = Table(title=f"Metrics vs AlpacaEval 2's leaderboard ({report['n_models']} models)")
    for name in ("model", "n", "WR official", "WR ours", "|Δ|", "LC official", "LC ours", "|Δ|", "LC by text"):
        table.add_column(name, justify="left" if name == "model" else "right", no_wrap=True)
    for r in report["models"]:
        by_text = "" if r["is_in_instruction_order"] else f"{r['lc_by_instruction_text']:.2f}"
        table.add_row(r["model"], str(r["n_total"]), f"{r['official_win_rate']:.3f}", f"{r['win_rate']:.3f}",
                      f"{r['win_rate_abs_diff']:.1e}", f"{r['official_lc']:.3f}", f"{r['lc']:.3f}",
                      f"{r['lc_abs_diff']:.3f}", by_text)
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    parser.add_argument("--fit-difficulty", action="store_true", help="also fit the difficulty (about 30 s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # the GLM's warnings for extreme LC changes are reported in the table
    report = validate(args.data_dir, fit_difficulty=args.fit_difficulty)
    console = Console(width=None if sys.stdout.isatty() else 120)  # the table's 9 columns need the room
    console.print(render(report))
    console.print(f"max |ΔWR| = {report['max_win_rate_abs_diff']:.2e}; max |ΔLC| = {report['max_lc_abs_diff']:.3f}, "
                  f"mean |ΔLC| = {report['mean_lc_abs_diff']:.3f} ({report['lc_note']})")
    if "fitted_difficulty" in report:
        fit = report["fitted_difficulty"]
        console.print(f"fitted difficulty vs official table ({fit['n_models']} models, {fit['n_instructions']} "
                      f"instructions): Pearson {fit['pearson']:.3f}, Spearman {fit['spearman']:.3f}")
    if args.out is not None:
        write_json_atomic(args.out, report)


if __name__ == "__main__":
    main()
