"""Any evaluated model becomes a leaderboard row (`xlpref evaluate ... --row NAME`); rows by folder path."""

from __future__ import annotations

import json
from pathlib import Path

from cli_helpers import run_cli
from fake_openai_server import FakeOpenAIServer

from harness.results.rows import read_row
from xlpref.data import MINI_DIR, load_instructions

JUDGE = "weighted_gpt4_turbo_multilingual"


def write_outputs(folder: Path, langs: list[str], generator: str, n: int = 6) -> Path:
    for lang in langs:
        instructions = load_instructions(MINI_DIR / "x_alpacaeval" / "instructions", [lang])[lang][:n]
        path = folder / lang / "model_outputs.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps([{"instruction": i.instruction, "output": f"answer {i.id} by {generator}",
                                     "generator": generator, "dataset": i.dataset, "id": i.id}
                                    for i in instructions]))
    return folder


def evaluate_as_row(outputs: Path, row: str, results: Path, server, capsys) -> tuple[int, str, str]:
    return run_cli(["evaluate", outputs, "--judge", JUDGE, "--judge-option", f"base_url={server.base_url}", "--mini",
                    "--row", row, "--results-dir", results], capsys)


def test_an_evaluated_folder_becomes_a_row_that_the_leaderboard_compare_and_check_read(tmp_path, api_key, capsys):
    results = tmp_path / "results"
    mine = write_outputs(tmp_path / "mine", ["es", "fr"], "my-model")
    theirs = write_outputs(tmp_path / "theirs", ["es", "fr"], "their-model")
    with FakeOpenAIServer() as server:
        code, _, err = evaluate_as_row(mine, "my-model-v1", results, server, capsys)
        assert code == 0, err
        code, _, err = evaluate_as_row(theirs, "their-model-v1", results, server, capsys)
        assert code == 0, err
    row = read_row(results / "my-model-v1")
    assert row.model == "my-model" and row.kind == "ours" and row.annotator == JUDGE
    assert row.reference == "xlpref-mini-reference" and row.languages == ["es", "fr"]
    assert row.metrics["es"]["n_total"] == 6 and len(row.annotations("es")) == 6
    outputs = json.loads((results / "my-model-v1" / "fr" / "model_outputs.json").read_text())
    assert outputs[0]["output"].endswith("by my-model")
    code, out, err = run_cli(["leaderboard", "--results-dir", results, "--width", "200"], capsys)
    assert code == 0, err
    assert "my-model-v1" in out and "their-model-v1" in out
    # compare and check take a row by id or by its folder's path
    code, out, err = run_cli(["compare", results / "my-model-v1", "their-model-v1", "--results-dir", results,
                              "--n-boot", "100", "--json", "-"], capsys)
    assert code == 0, err
    assert json.loads(out)["row_a"] == "my-model-v1" and json.loads(out)["row_b"] == "their-model-v1"
    code, out, err = run_cli(["check", results / "my-model-v1", "--against", results / "their-model-v1",
                              "--results-dir", results, "--metric", "wr", "--tolerance", "100", "--json", "-"], capsys)
    assert code == 0, err
    assert json.loads(out)["passed"] is True


def test_a_bad_row_name_fails_before_any_judging(tmp_path, api_key, capsys):
    outputs = write_outputs(tmp_path / "mine", ["es"], "my-model")
    with FakeOpenAIServer() as server:
        code, _, err = evaluate_as_row(outputs, "../escape", tmp_path / "results", server, capsys)
        assert server.hits == 0
    assert code == 2 and "not a plain name" in err
    assert not (tmp_path / "results").exists()


def test_an_outputs_folder_that_is_no_row_gets_a_hint_not_a_name_error(tmp_path, capsys):
    outputs = write_outputs(tmp_path / "outputs", ["es"], "my-model")
    code, _, err = run_cli(["compare", outputs, "demo-iter0", "--results-dir", tmp_path], capsys)
    assert code == 2
    assert "no row.json" in err and "--row NAME" in err and "not a plain name" not in err
