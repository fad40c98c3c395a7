"""Terminal tables never cut a number or a row id (80 columns, a file, a CI log); compare/check as JSON, CSV, Markdown."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from cli_helpers import run_cli
from results_fixtures import add_row

LANGS = ["en", "es", "de", "fr", "ru"]
LONG_ID = "demo-english-only-with-a-long-ablation-name-iter1"


@pytest.fixture()
def results(tmp_path) -> Path:
    """Five languages, long row ids and labels, annotations for paired intervals."""
    root = tmp_path / "results"
    prefs = [0.9, 0.1, 0.8, 0.3, 0.7, 0.6, 0.2, 0.95]
    add_row(root, "demo-lidr-iter0", {lang: (57.8531 + i, 51.4868 - i) for i, lang in enumerate(LANGS)},
            iteration=0, label="demo-lidr iteration 0", annotations={lang: prefs for lang in LANGS})
    add_row(root, "demo-lidr-iter1", {lang: (58.1697 + i, 48.3897 + i) for i, lang in enumerate(LANGS)},
            iteration=1, label="demo-lidr iteration 1", annotations={lang: prefs[::-1] for lang in LANGS})
    add_row(root, LONG_ID, {lang: (60.1234 - i, 55.5555 + i) for i, lang in enumerate(LANGS)}, run="long",
            iteration=1, label="demo-english-only-with-a-long-ablation-name iteration 1")
    return root


def _tokens(text: str) -> set[str]:
    """Every run of non-space characters, split also at the table's borders and at ±."""
    return set(re.split(r"[\s│┃|±*†,\[\]()]+", text))


def _csv_numbers_and_ids(path: Path) -> tuple[set[str], set[str]]:
    with path.open() as handle:
        records = list(csv.DictReader(handle))
    numbers = {f"{float(record[f'{lang}_{m}']):.2f}" for record in records for lang in LANGS for m in ("lc", "wr")
               if record[f"{lang}_{m}"]}
    return numbers, {record["row_id"] for record in records}


@pytest.mark.parametrize("width", [["--width", "80"], ["--width", "60"], []], ids=["80 columns", "60 columns", "a file"])
def test_leaderboard_keeps_every_number_and_row_id_whole(results, tmp_path, capsys, width):
    code, out, _ = run_cli(["leaderboard", "--results-dir", results, "--csv", tmp_path / "lb.csv", *width], capsys)
    assert code == 0
    numbers, row_ids = _csv_numbers_and_ids(tmp_path / "lb.csv")
    tokens = _tokens(out)
    assert numbers and numbers <= tokens, sorted(numbers - tokens)
    assert row_ids <= tokens, sorted(row_ids - tokens)
    assert "…" not in out
    if width:
        assert max(len(line) for line in out.splitlines()) <= int(width[1])


@pytest.mark.parametrize("width", [["--width", "80"], ["--width", "50"], ["--width", "24"], []],
                         ids=["80 columns", "50 columns", "24 columns", "a file"])
def test_compare_keeps_every_number_whole(results, capsys, width):
    code, out, _ = run_cli(["compare", "demo-lidr-iter0", "demo-lidr-iter1", "--results-dir", results,
                            "--n-boot", "200", *width], capsys)
    assert code == 0
    code, data, _ = run_cli(["compare", "demo-lidr-iter0", "demo-lidr-iter1", "--results-dir", results,
                             "--n-boot", "200", "--json", "-"], capsys)
    lines = json.loads(data)["languages"]
    expected = {f"{line[key]:.2f}" for line in lines for key in ("wr_a", "wr_b", "lc_a", "lc_b")}
    expected |= {f"{line[key]:+.2f}" for line in lines for key in ("delta_wr", "ci_low", "ci_high", "delta_lc")}
    tokens = _tokens(out)
    assert expected <= tokens, sorted(expected - tokens)
    assert "…" not in out


def test_check_at_80_columns_keeps_numbers_whole_and_exits_1_on_regression(results, capsys):
    code, out, _ = run_cli(["check", LONG_ID, "--against", "demo-lidr-iter1", "--results-dir", results,
                            "--metric", "wr", "--width", "80"], capsys)
    assert code == 1
    assert {"58.17", "60.12", "+1.95", "62.17", "-6.05", "regressed"} <= _tokens(out)
    assert "…" not in out


def test_compare_writes_json_csv_and_markdown_that_agree(results, tmp_path, capsys):
    paths = {name: tmp_path / f"compare.{name}" for name in ("json", "csv", "markdown")}
    code, out, _ = run_cli(["compare", "demo-lidr-iter0", LONG_ID, "--results-dir", results, "--n-boot", "200",
                            *[arg for name, path in paths.items() for arg in (f"--{name}", path)]], capsys)
    assert code == 0 and "B minus A" in out  # files written, the terminal table still printed
    document = json.loads(paths["json"].read_text())
    assert document["row_a"] == "demo-lidr-iter0" and document["row_b"] == LONG_ID
    by_lang = {line["lang"]: line for line in document["languages"]}
    assert list(by_lang) == [*LANGS, "avg"]
    assert by_lang["es"]["wr_b"] == pytest.approx(59.1234) and by_lang["es"]["delta_wr"] == pytest.approx(0.2703)
    assert by_lang["en"]["ci_low"] is None  # the long row has no annotations: no interval, null not NaN
    with paths["csv"].open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["lang"] for row in rows] == [*LANGS, "avg"] and float(rows[1]["wr_b"]) == pytest.approx(59.1234)
    markdown = paths["markdown"].read_text()
    assert re.search(r"^\| es \| 58\.85 \| 59\.12 \| \+0\.27 \|", markdown, re.MULTILINE)


def test_check_json_to_stdout_is_only_json_and_keeps_the_exit_code(results, capsys):
    code, out, _ = run_cli(["check", LONG_ID, "--against", "demo-lidr-iter1", "--results-dir", results,
                            "--metric", "wr", "--json", "-"], capsys)
    assert code == 1
    document = json.loads(out)
    assert document["passed"] is False and document["metric"] == "wr"
    assert [line["status"] for line in document["languages"]] == ["ok", "ok", "regressed", "regressed", "regressed",
                                                                  "regressed"]
    assert any("de: WR" in failure for failure in document["failures"])


def test_check_markdown_is_a_pull_request_comment(results, capsys):
    code, out, _ = run_cli(["check", "demo-lidr-iter1", "--against", "demo-lidr-iter0", "--results-dir", results,
                            "--metric", "wr", "--markdown", "-"], capsys)
    assert code == 0
    assert out.startswith("**✅ PASS** `demo-lidr-iter1` against `demo-lidr-iter0` (WR, tolerance 1.00 points)")
    assert "| lang | baseline | run | Δ | threshold | status |" in out
    assert "| avg | 59.85 | 60.17 | +0.32 | 58.85 | ok |" in out
