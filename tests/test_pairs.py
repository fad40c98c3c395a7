"""Pairs: hand-built cases for every rule, a brute-force cross-check, and the ``pairs`` CLI."""

from __future__ import annotations

import json
import math
import random

import pytest

from xlpref.errors import InputError
from xlpref.pairs import alpha_grid, build_pairs, render_pairs_summary

PAIR_FIELDS = {"id", "lang", "prompt", "chosen", "rejected", "chosen_reward", "rejected_reward", "alpha"}


def group(lang, id_, candidates, prompt="p"):
    return [{"lang": lang, "id": id_, "prompt": prompt, "response": text, "reward": reward}
            for text, reward in candidates]


def test_argmax_argmin_without_length_control():
    rows = group("es", 1, [("b", 0.5), ("best", 2.0), ("worst", -1.0)], prompt="Escribe")
    result = build_pairs(rows, length_control=False, language_rates=False)
    assert result.pairs == [{"id": 1, "lang": "es", "prompt": "Escribe", "chosen": "best", "rejected": "worst",
                             "chosen_reward": 2.0, "rejected_reward": -1.0, "alpha": 0.0}]
    assert result.summary["es"] == {"pairs": 1, "skipped_few_distinct": 0, "skipped_equal_rewards": 0,
                                    "skipped_upper_bound": 0, "alpha": 0.0, "mean_len_chosen": 4.0,
                                    "mean_len_rejected": 5.0}


def test_ties_go_to_the_first_in_input_order():
    rows = group("en", 7, [("x", 1.0), ("top1", 3.0), ("low1", -2.0), ("top2", 3.0), ("low2", -2.0)])
    pair = build_pairs(rows, length_control=False).pairs[0]
    assert (pair["chosen"], pair["rejected"]) == ("top1", "low1")


def test_skipped_groups_are_counted():
    rows = (group("de", "single", [("only one", 1.0)])
            + group("de", "same", [("identical", 1.0), ("identical", 2.0)])
            + group("de", "equal", [("a", 0.25), ("bb", 0.25), ("ccc", 0.25)])
            + group("de", "ok", [("a", 0.0), ("bb", 1.0)]))
    result = build_pairs(rows, length_control=False)
    assert [p["id"] for p in result.pairs] == ["ok"]
    summary = result.summary["de"]
    assert (summary["pairs"], summary["skipped_few_distinct"], summary["skipped_equal_rewards"]) == (1, 2, 1)


def test_upper_bound_excludes_high_scores_from_chosen_only():
    rows = group("fr", 1, [("low", 1.0), ("too good", 5.0), ("mid", 3.0)])
    pair = build_pairs(rows, length_control=False, upper_bound=4.0).pairs[0]
    assert (pair["chosen"], pair["rejected"]) == ("mid", "low")
    # At the bound itself a candidate is not eligible: only "low" is left, which is also the lowest.
    result = build_pairs(rows, length_control=False, upper_bound=3.0)
    assert result.pairs == [] and result.summary["fr"]["skipped_upper_bound"] == 1
    # Everything at or above the bound: nothing can be chosen.
    result = build_pairs(rows, length_control=False, upper_bound=0.5)
    assert result.pairs == [] and result.summary["fr"]["skipped_upper_bound"] == 1


def test_length_control_changes_the_chosen_response_and_picks_the_smallest_tied_alpha():
    # s = r - a*len. a < 0.0445: L beats S1 (diff len +10 against S2); a in (0.0445, 0.2): S1 beats L and
    # S1, S2 have equal length, so |mean diff| = 0 on the whole interval: the smallest grid alpha in it wins.
    rows = group("es", 1, [("L" * 20, 2.0), ("S" * 10, 1.555), ("T" * 10, 0.0)])
    raw = build_pairs(rows, length_control=False).pairs[0]
    assert raw["chosen"] == "L" * 20
    controlled = build_pairs(rows, alpha_step=0.01)
    assert controlled.summary["es"]["alpha"] == 0.05
    assert controlled.pairs[0]["chosen"] == "S" * 10 and controlled.pairs[0]["rejected"] == "T" * 10
    assert controlled.pairs[0]["chosen_reward"] == 1.555  # raw reward, not the length-controlled score
    assert build_pairs(rows, alpha_step=0.001).summary["es"]["alpha"] == 0.045


def test_alpha_is_per_language():
    rows = group("es", 1, [("L" * 20, 2.0), ("S" * 10, 1.555), ("T" * 10, 0.0)])
    rows += group("ru", 1, [("длинный", 1.0), ("коротки", 0.0)])  # equal lengths: alpha 0 already gives 0
    summary = build_pairs(rows, alpha_step=0.01).summary
    assert summary["es"]["alpha"] == 0.05 and summary["ru"]["alpha"] == 0.0


def test_non_latin_lengths_are_code_points():
    thai, bengali, chinese = "\u0e17\u0e30\u0e40\u0e25", "\u09b8\u09ae\u09c1\u09a6\u09cd\u09b0", "\u5927\u6d77"
    assert len(thai.encode()) == 12 and len(bengali.encode()) == 18  # bytes would give other numbers
    rows = (group("th", 1, [(thai, 1.0), ("x", 0.0)]) + group("bn", 1, [(bengali, 1.0), ("x", 0.0)])
            + group("zh", 1, [(chinese, 1.0), ("x", 0.0)]))
    summary = build_pairs(rows, length_control=False).summary
    assert summary["th"]["mean_len_chosen"] == 4.0
    assert summary["bn"]["mean_len_chosen"] == 6.0
    assert summary["zh"]["mean_len_chosen"] == 2.0


def test_pairs_keep_first_appearance_order_and_fields():
    rows = group("es", 2, [("a", 1.0), ("b", 0.0)]) + group("en", 1, [("c", 1.0), ("d", 0.0)])
    rows += group("es", 1, [("e", 1.0), ("f", 0.0)]) + group("es", 2, [("g", 5.0)])
    result = build_pairs(rows)
    assert [(p["lang"], p["id"]) for p in result.pairs] == [("es", 2), ("en", 1), ("es", 1)]
    assert all(set(p) == PAIR_FIELDS for p in result.pairs)
    assert result.pairs[0]["chosen"] == "g"  # the late record joins its group


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_reward_names_file_line_and_field(bad):
    rows = group("es", 1, [("a", 1.0), ("b", bad)])
    with pytest.raises(InputError) as info:
        build_pairs(rows, source="scored.jsonl")
    assert (info.value.path, info.value.line, info.value.field) == ("scored.jsonl", 2, "reward")


def test_missing_field_and_bad_options_are_input_errors():
    with pytest.raises(InputError, match="field 'response'"):
        build_pairs([{"lang": "es", "id": 1, "prompt": "p", "reward": 1.0}])
    rows = group("es", 1, [("a", 1.0), ("b", 0.0)])
    with pytest.raises(InputError, match="alpha_step"):
        build_pairs(rows, alpha_step=0)
    with pytest.raises(InputError, match="upper_bound"):
        build_pairs(rows, upper_bound=math.nan)


def test_alpha_grid_is_exact():
    grid = alpha_grid(0.001)
    assert len(grid) == 1000 and grid[0] == 0.0 and grid[1] == 0.001 and grid[-1] == 0.999
    assert 0.3 in set(grid.tolist())  # 300 * 0.001 is 0.30000000000000004 before rounding
    assert alpha_grid(0.3).tolist() == [0.0, 0.3, 0.6, 0.9]


def _brute_force(records, step, bound):
    """Plain-Python pairs per language, straight from the rules (the numpy path must agree)."""
    groups = {}
    for r in records:
        groups.setdefault((r["lang"], r["id"]), []).append(r)
    alphas = [round(k * step, 10) for k in range(int(1 / step) + 2) if round(k * step, 10) < 1]
    out = {}
    for lang in dict.fromkeys(k[0] for k in groups):
        usable = [g for (l, _), g in groups.items() if l == lang and len({c["response"] for c in g}) >= 2
                  and max(c["reward"] for c in g) != min(c["reward"] for c in g)]

        def pairs_at(a, usable=usable):
            made = []
            for g in usable:
                s = [c["reward"] - a * len(c["response"]) for c in g]
                eligible = [i for i in range(len(g)) if bound is None or s[i] < bound]
                if not eligible:
                    continue
                best = max(eligible, key=lambda i: (s[i], -i))
                worst = min(range(len(g)), key=lambda i: (s[i], i))
                if s[best] > s[worst]:
                    made.append((g[best]["response"], g[worst]["response"]))
            return made

        def objective(a, pairs_at=pairs_at):
            made = pairs_at(a)
            return abs(sum(len(c) - len(r) for c, r in made) / len(made)) if made else math.inf

        best_alpha = min(alphas, key=lambda a: (objective(a), a))
        if objective(best_alpha) == math.inf:
            best_alpha = 0.0
        out[lang] = (best_alpha, pairs_at(best_alpha))
    return out


@pytest.mark.parametrize("bound", [None, 0.5])
def test_vectorised_search_matches_brute_force(bound):
    rng = random.Random(7)
    records = []
    for lang in ("es", "th"):
        for id_ in range(25):
            for _ in range(rng.randint(1, 5)):
                text = rng.choice("abc\u0e01\u0e02") * rng.randint(1, 40)
                # Longer responses score higher, as real rewards tend to: length control has work to do.
                records.append({"lang": lang, "id": id_, "prompt": "p", "response": text,
                                "reward": round(rng.uniform(-1, 1) + 0.05 * len(text), 2)})
    result = build_pairs(records, alpha_step=0.01, upper_bound=bound)
    expected = _brute_force(records, 0.01, bound)
    assert any(alpha > 0 for alpha, _ in expected.values())
    for lang, (alpha, made) in expected.items():
        assert result.summary[lang]["alpha"] == alpha
        assert [(p["chosen"], p["rejected"]) for p in result.pairs if p["lang"] == lang] == made


def test_summary_renders_a_row_per_language():
    from rich.console import Console

    summary = build_pairs(group("es", 1, [("a", 1.0), ("b", 0.0)]) + group("zh", 1, [("c", 1.0)])).summary
    console = Console(record=True, width=140)
    console.print(render_pairs_summary(summary))
    text = console.export_text()
    rows = [line.split("│")[1:-1] for line in text.splitlines() if line.startswith("│ ")]
    assert [[cell.strip() for cell in row] for row in rows] == [
        ["es", "1", "0", "0", "0", "0", "1.0", "1.0", "-", "-", "-"],
        ["zh", "0", "1", "0", "0", "0", "-", "-", "-", "-", "-"],
    ]


def test_pairs_cli_round_trip_and_nan_error(tmp_path, capsys):
    from cli_helpers import run_cli
    from harness.cli import main

    scored = tmp_path / "scored.jsonl"
    rows = group("es", 1, [("corto", 1.0), ("una respuesta larga", 2.0)]) + group("es", 2, [("x", 0.0)])
    scored.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "pairs.jsonl"
    code, out_text, err = run_cli(["pairs", scored, "-o", out, "--no-length-control"], capsys)
    assert code == 0, out_text + err
    assert "es" in out_text + err and "wrote 1 pairs" in out_text + err
    written = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert written == build_pairs(rows, length_control=False).pairs
    summary = json.loads((tmp_path / "pairs.summary.json").read_text())
    assert summary["es"]["pairs"] == 1 and summary["es"]["skipped_few_distinct"] == 1

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n\n" + '{"lang": "es", "id": 1, "prompt": "p", "response": "y", '
                   '"reward": NaN}\n', encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        main(["pairs", str(bad), "-o", str(tmp_path / "never.jsonl")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "line 3" in err and "field 'reward'" in err and "bad.jsonl" in err
    assert not (tmp_path / "never.jsonl").exists()
