"""Language codes: any ISO 639-1 code naming a language is accepted everywhere; anything else exits 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import run_cli

from harness.config import load_config
from xlpref.errors import InputError
from xlpref.languages import (
    cross_lingual_instruction,
    is_language_code,
    language_name,
    parse_languages,
)
from xlpref.sampling_prompts import requests_from_prompts

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("code, name", [("pt", "Portuguese"), ("it", "Italian"), ("sw", "Swahili"), ("nl", "Dutch"),
                                        ("zh", "Chinese")])
def test_iso_639_1_codes_name_their_language(code, name):
    assert is_language_code(code) and language_name(code) == name
    assert f"using only {name}," in cross_lingual_instruction("Say hi.", code)


@pytest.mark.parametrize("code", ["xx", "PT", "por", "pt-BR", "", "e", 12, None])
def test_codes_that_name_no_iso_639_1_language_are_refused(code):
    assert not is_language_code(code)
    with pytest.raises(InputError, match="expected an ISO 639-1 code"):
        language_name(code)


def test_flags_accept_pt_and_refuse_xx():
    assert parse_languages("en,pt,it") == ["en", "pt", "it"]
    with pytest.raises(InputError, match=r"field '--langs': unknown language code 'xx'"):
        parse_languages("pt,xx")


def scored(lang: str, prompt_id: int, response: str, reward: float) -> dict:
    return {"lang": lang, "id": prompt_id, "prompt": "p", "response": response, "reward": reward}


def test_pairs_refuses_a_record_whose_language_is_xx_and_writes_nothing(tmp_path, capsys):
    path = tmp_path / "scored.jsonl"
    rows = [scored("pt", 1, "a", 1.0), scored("pt", 1, "bb", 0.0), scored("xx", 2, "a", 1.0), scored("xx", 2, "b", 0.0)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, err = run_cli(["pairs", path, "-o", tmp_path / "out" / "pairs.jsonl"], capsys)
    assert code == 2 and (out + err).strip().count("\n") == 0, out + err
    assert "scored.jsonl: line 3: field 'lang': unknown language code 'xx'" in err
    assert not (tmp_path / "out").exists()


def test_pairs_accepts_a_language_outside_the_benchmark(tmp_path, capsys):
    path = tmp_path / "scored.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [scored("pt", 1, "a", 1.0), scored("pt", 1, "bb", 0.0)]))
    code, _, err = run_cli(["pairs", path, "-o", tmp_path / "pairs.jsonl", "--no-length-control"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "pairs.jsonl").read_text())["lang"] == "pt"


def test_prompt_records_in_portuguese_are_sampling_requests_and_xx_is_refused(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"lang": "pt", "id": 1, "instruction": "Diga olá.", "instruction_en": "Say hi."}) + "\n")
    assert [r.lang for r in requests_from_prompts(path, ["pt"])] == ["pt"]
    path.write_text(json.dumps({"lang": "xx", "id": 1, "instruction": "?"}) + "\n")
    with pytest.raises(InputError, match="line 1: field 'lang': unknown language code 'xx'"):
        requests_from_prompts(path, ["pt"])


def write_config(tmp_path: Path, languages: list[str]) -> Path:
    text = (REPO / "tests" / "fixtures" / "tiny_run.yaml").read_text().replace("benchmarks/", f"{REPO}/benchmarks/")
    text = text.replace("languages: [en, es]", f"languages: [{', '.join(languages)}]")
    path = tmp_path / "config.yaml"
    path.write_text(text + f"run_dir: {tmp_path / 'run'}\n")
    return path


def test_a_config_naming_pt_loads_and_the_run_fails_naming_the_missing_data_file(tmp_path, capsys):
    config = write_config(tmp_path, ["en", "pt"])
    assert load_config(config).languages == ["en", "pt"]
    code, out, err = run_cli(["run", config], capsys)
    assert code == 2, out + err
    assert err.startswith("error: ") and "train_prompts/mini/pt.jsonl: file not found" in err
    assert not (tmp_path / "run").exists()


def test_a_config_naming_xx_is_refused(tmp_path, capsys):
    code, _, err = run_cli(["run", write_config(tmp_path, ["en", "xx"])], capsys)
    assert code == 2 and "field 'languages'" in err and "unknown language code(s) ['xx']" in err
