"""How many judged pairs a different order seed shows the other way round (AlpacaEval's switch, per language).

AlpacaEval (and the authors) randomise which output the judge sees first with
``RandomSwitchTwoColumnsProcessor`` seeded by the instruction text and seed 0; a judge with a
position bias then sees each pair in one fixed order. This counts, per language, the instructions
whose order under ``--seed`` differs from seed 0. docs/fidelity.md cites its output.

Example::

    python -m benchmarks.x_alpacaeval.order_seeds --instructions ../shared/data/x_alpacaeval/instructions --seed 42
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def switched(instructions: list[str], seed: int) -> list[bool]:
    """alpaca-eval's switch decision per instruction (its processor, as harness.evaluation.judging sets it up)."""
    import pandas as pd
    from alpaca_eval.processors import RandomSwitchTwoColumnsProcessor

    processor = RandomSwitchTwoColumnsProcessor(two_columns_to_switch=["output_1", "output_2"],
                                                random_seed_columns=["instruction"],
                                                _switch_column="is_switched_outputs", seed=seed)
    frame = pd.DataFrame({"instruction": instructions, "output_1": "a", "output_2": "b"})
    return processor.preprocess(frame)["is_switched_outputs"].tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instructions", required=True, type=Path, help="Folder of X-AlpacaEval {lang}.json files.")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    report = {}
    for path in sorted(args.instructions.glob("*.json")):
        texts = [row["instruction"] for row in json.loads(path.read_text(encoding="utf-8"))]
        base, other = switched(texts, 0), switched(texts, args.seed)
        report[path.stem] = {"instructions": len(texts), "order_differs": sum(a != b for a, b in zip(base, other))}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
