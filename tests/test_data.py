"""Data loaders on the bundled mini set and the shared data; bad input gives one clear error, exit 2."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import unicodedata
from pathlib import Path

import pytest

from benchmarks.x_alpacaeval import BENCHMARK_FILE, Benchmark, Decoding, load_benchmark, verify_checksums
from cli_helpers import run_cli
from xlpref.data import (
    HUB_FILES, MINI_DIR, default_data_dir, load_instructions, load_preference_pairs, load_reference_outputs,
    load_train_prompts,
)
from xlpref.errors import InputError
from xlpref.languages import LANGUAGE_NAMES

MINI_LANGS = ["de", "en", "es", "fr", "ru", "zh"]
MINI_REF = "x_alpacaeval/reference_outputs/xlpref-mini-reference"


@pytest.fixture()
def mini_copy(tmp_path: Path) -> Path:
    return Path(shutil.copytree(MINI_DIR, tmp_path / "data"))


def shared_dir() -> Path:
    folder = default_data_dir()
    if not (folder / "x_alpacaeval" / "instructions").is_dir():
        pytest.skip(f"shared data not found at {folder} (set XLPREF_DATA_DIR)")
    return folder


# -- the bundled mini set ---------------------------------------------------------------------

def test_mini_instructions_are_translations_with_shared_ids():
    by_lang = load_instructions(MINI_DIR / "x_alpacaeval" / "instructions")
    assert sorted(by_lang) == MINI_LANGS
    english = [r.instruction for r in by_lang["en"]]
    for lang, records in by_lang.items():
        assert [r.id for r in records] == list(range(1, 25))
        assert {r.dataset for r in records} == {"xlpref-mini"}
        if lang != "en":  # translated, not English left in place
            assert all(r.instruction != e for r, e in zip(records, english))
    scripts = {"ru": "CYRILLIC", "zh": "CJK"}
    for lang, script in scripts.items():
        assert all(any(script in unicodedata.name(c, "") for c in r.instruction) for r in by_lang[lang])


def test_mini_references_align_by_id_in_every_language():
    by_lang = load_instructions(MINI_DIR / "x_alpacaeval" / "instructions")
    for lang, instructions in by_lang.items():
        refs = load_reference_outputs(MINI_DIR / MINI_REF / f"{lang}.json", instructions)
        assert [r["id"] for r in refs] == [i.id for i in instructions]
        assert all(r["instruction"] == i.instruction for r, i in zip(refs, instructions))
        assert {r["generator"] for r in refs} == {"xlpref-mini-reference"}
        assert all(0 < len(r["output"]) < 400 for r in refs)  # short answers keep the CPU demo fast


def test_mini_train_prompts_aligned_by_sha256_of_english():
    prompts = load_train_prompts(MINI_DIR / "train_prompts" / "mini")
    assert sorted(prompts) == MINI_LANGS
    assert all(len(p) >= 24 for p in prompts.values())
    for p in prompts["en"]:
        assert p.instruction_id == hashlib.sha256(p.instruction.encode("utf-8")).hexdigest()
    for lang, rows in prompts.items():
        assert [p.instruction_id for p in rows] == [p.instruction_id for p in prompts["en"]]
        # Marks live on the English lines and are carried to every language.
        assert sum(p.is_translation_task for p in rows) == 3
    marked = [p.instruction for p in prompts["en"] if p.is_translation_task]
    assert all(text.startswith("Translate") for text in marked)
    evaluation = {r.instruction for r in load_instructions(MINI_DIR / "x_alpacaeval" / "instructions", ["en"])["en"]}
    assert not evaluation & {p.instruction for p in prompts["en"]}
    assert len(load_train_prompts(MINI_DIR / "train_prompts" / "mini", ["en", "de"], limit=5)["de"]) == 5


def test_mini_preference_pairs_are_length_balanced():
    pairs = load_preference_pairs(MINI_DIR / "preference_pairs" / "en.jsonl")
    assert len(pairs) >= 48
    assert len({p.prompt for p in pairs}) == len(pairs)
    chosen = sum(len(p.chosen) for p in pairs) / len(pairs)
    rejected = sum(len(p.rejected) for p in pairs) / len(pairs)
    assert abs(chosen - rejected) / chosen < 0.1


# -- reference alignment when ids are missing ------------------------------------------------------

def _mini_en():
    return load_instructions(MINI_DIR / "x_alpacaeval" / "instructions", ["en"])["en"]


def test_references_without_ids_align_by_instruction_text(tmp_path):
    rows = json.loads((MINI_DIR / MINI_REF / "en.json").read_text())
    for row in rows:
        del row["id"]
    random.Random(0).shuffle(rows)
    path = tmp_path / "en.json"
    path.write_text(json.dumps(rows))
    aligned = load_reference_outputs(path, _mini_en())
    assert [r["id"] for r in aligned] == list(range(1, 25))
    assert all(r["instruction"] == i.instruction for r, i in zip(aligned, _mini_en()))


def test_references_without_ids_or_matching_text_align_by_position(tmp_path):
    rows = json.loads((MINI_DIR / MINI_REF / "en.json").read_text())
    for row in rows:
        del row["id"]
        row["instruction"] = row["instruction"].upper()
    path = tmp_path / "en.json"
    path.write_text(json.dumps(rows))
    aligned = load_reference_outputs(path, _mini_en())
    assert [r["output"] for r in aligned] == [r["output"] for r in rows]
    path.write_text(json.dumps(rows[:-1]))
    with pytest.raises(InputError, match="23 outputs without ids for 24 instructions"):
        load_reference_outputs(path, _mini_en())


# -- the shared data ----------------------------------------------------------------------------------

def test_shared_data_13_languages_by_805_with_references():
    folder = shared_dir()
    by_lang = load_instructions(folder / "x_alpacaeval" / "instructions")
    assert sorted(by_lang) == sorted(LANGUAGE_NAMES)
    assert {len(v) for v in by_lang.values()} == {805}
    assert all([r.id for r in v] == list(range(1, 806)) for v in by_lang.values())
    refs = folder / "x_alpacaeval" / "reference_outputs" / "gpt-4-turbo-2024-04-09"
    assert "id" not in json.loads((refs / "en.json").read_text())[0]  # the case alignment exists for
    english = load_reference_outputs(refs / "en.json", by_lang["en"])
    assert all(r["instruction"] == i.instruction and r["id"] == i.id for r, i in zip(english, by_lang["en"]))
    spanish = load_reference_outputs(refs / "es.json", by_lang["es"])
    assert [r["id"] for r in spanish] == list(range(1, 806))
    prompts = load_train_prompts(folder / "train_prompts" / "random_1000")
    assert len(prompts) == 9 and {len(v) for v in prompts.values()} == {1000}


def test_shared_data_matches_benchmark_checksums():
    status = verify_checksums(load_benchmark(), shared_dir())
    assert len(status) >= 13 and set(status.values()) == {"match"}


# -- the benchmark definition -------------------------------------------------------------------------

def test_benchmark_definition_follows_method():
    bench = load_benchmark()
    assert bench.decoding == Decoding(temperature=0.6, top_p=0.9, max_new_tokens=2048, n=1)
    assert bench.reference_generator == "gpt-4-turbo-2024-04-09"
    assert bench.languages == LANGUAGE_NAMES
    assert bench.training_languages == ["en", "es", "ru", "de", "fr"]
    assert bench.hub_dataset == "zhihz0535/X-AlpacaEval" and len(bench.hub_revision) == 40
    assert bench.hub_files == HUB_FILES
    assert all(f"x_alpacaeval/instructions/{lang}.json" in bench.sha256 for lang in LANGUAGE_NAMES)


def test_benchmark_checksums_detect_a_changed_file(tmp_path):
    target = tmp_path / "x_alpacaeval" / "instructions" / "en.json"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"[]\n")
    bench = Benchmark("t", {"en": "English"}, 1, [], [], "g", [], Decoding(0.6, 0.9, 8), "d", "r", {},
                      sha256={"x_alpacaeval/instructions/en.json": hashlib.sha256(b"[]\n").hexdigest(),
                              "x_alpacaeval/instructions/es.json": "0" * 64})
    assert verify_checksums(bench, tmp_path) == {"x_alpacaeval/instructions/en.json": "match",
                                                 "x_alpacaeval/instructions/es.json": "absent"}
    target.write_bytes(b"[ ]\n")
    assert verify_checksums(bench, tmp_path)["x_alpacaeval/instructions/en.json"] == "differs"


def test_bad_benchmark_definition_names_the_field(tmp_path):
    path = tmp_path / "benchmark.yaml"
    text = BENCHMARK_FILE.read_text()
    path.write_text(text.replace("  max_new_tokens: 2048", "  max_new_tokens: many"))
    with pytest.raises(InputError) as info:
        load_benchmark(path)
    assert info.value.field == "decoding.max_new_tokens" and "expected int" in str(info.value)


# -- bad input: one clear message, exit code 2, nothing written ----------------------------------------

def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, ensure_ascii=False, indent=1))


def _edit_lines(path: Path, edit) -> None:
    lines = path.read_text().splitlines()
    edit(lines)
    path.write_text("\n".join(lines) + "\n")


def _drop_key(row: dict, key: str) -> dict:
    row.pop(key)
    return row


INS = "x_alpacaeval/instructions"
BAD_INPUTS = {
    "missing file": (
        lambda d: (d / INS / "de.json").unlink(),
        [f"{MINI_REF}/de.json", "no instructions for language 'de'", f"{INS}/de.json"]),
    "bad JSON": (
        lambda d: (d / INS / "fr.json").write_text((d / INS / "fr.json").read_text()[:-20]),
        [f"{INS}/fr.json", "line ", "invalid JSON"]),
    "bad JSONL line": (
        lambda d: _edit_lines(d / "train_prompts/mini/es.jsonl", lambda ls: ls.__setitem__(4, '{"instruction": "x",')),
        ["train_prompts/mini/es.jsonl", "line 5", "invalid JSON", "expected one JSON object per line"]),
    "missing field": (
        lambda d: _edit_json(d / INS / "ru.json", lambda rows: rows[3].pop("instruction")),
        [f"{INS}/ru.json", "record 3", "field 'instruction'", "missing field"]),
    "missing JSONL field": (
        lambda d: _edit_lines(d / "train_prompts/mini/de.jsonl",
                              lambda ls: ls.__setitem__(1, json.dumps(_drop_key(json.loads(ls[1]), "instruction_id")))),
        ["train_prompts/mini/de.jsonl", "line 2", "field 'instruction_id'", "missing field"]),
    "duplicate id": (
        lambda d: _edit_json(d / INS / "es.json", lambda rows: rows[5].update(id=1)),
        [f"{INS}/es.json", "record 5", "field 'id'", "duplicate id 1", "expected unique ids"]),
    "id sets differ": (
        lambda d: _edit_json(d / INS / "zh.json", lambda rows: rows.pop()),
        [f"{INS}/zh.json", "id set differs", "1 missing (e.g. [24])", "expected the same ids in every language"]),
    "training id sets differ": (
        lambda d: _edit_lines(d / "train_prompts/mini/fr.jsonl", lambda ls: ls.pop(0)),
        ["train_prompts/mini/fr.jsonl", "id set differs", "expected the same ids in every language"]),
    "empty instruction": (
        lambda d: _edit_json(d / INS / "en.json", lambda rows: rows[0].update(instruction="   ")),
        [f"{INS}/en.json", "record 0", "field 'instruction'", "expected a non-empty string"]),
    "unknown language code": (
        lambda d: shutil.copy(d / INS / "en.json", d / INS / "xx.json"),
        [f"{INS}/xx.json", "unknown language code 'xx'", "expected an ISO 639-1 code"]),
    "non-integer id": (
        lambda d: _edit_json(d / INS / "de.json", lambda rows: rows[2].update(id="3")),
        [f"{INS}/de.json", "record 2", "field 'id'", "expected a positive integer id"]),
    "reference missing an output": (
        lambda d: _edit_json(d / MINI_REF / "fr.json", lambda rows: rows.pop(6)),
        [f"{MINI_REF}/fr.json", "1 instruction ids have no output (e.g. [7])", "expected one output per instruction"]),
    "preference pair missing a field": (
        lambda d: _edit_lines(d / "preference_pairs/en.jsonl",
                              lambda ls: ls.__setitem__(3, json.dumps(_drop_key(json.loads(ls[3]), "rejected")))),
        ["preference_pairs/en.jsonl", "line 4", "field 'rejected'", "missing field"]),
    "not UTF-8": (
        lambda d: (d / INS / "en.json").write_bytes(b"[\xff]"),
        [f"{INS}/en.json", "not valid UTF-8", "expected UTF-8"]),
    "not a list": (
        lambda d: (d / MINI_REF / "en.json").write_text('{"id": 1}'),
        [f"{MINI_REF}/en.json", "expected a JSON list"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_one_clear_message_exit_2_nothing_written(case, mini_copy, tmp_path, capsys):
    corrupt, expected = BAD_INPUTS[case]
    corrupt(mini_copy)
    summary = tmp_path / "out" / "summary.json"
    code, out, err = run_cli(["data", "check", "--data-dir", mini_copy, "--summary-json", summary], capsys)
    assert code == 2, (out, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    for part in expected:
        assert part in err, f"{part!r} not in {err!r}"
    assert not summary.parent.exists()  # validation happens before anything is written
    assert out == ""


def test_missing_data_dir_exit_2(tmp_path, capsys):
    code, _, err = run_cli(["data", "check", "--data-dir", tmp_path / "nowhere"], capsys)
    assert code == 2 and "nowhere: data folder not found" in err and "--mini" in err


def test_valid_mini_copy_writes_summary(mini_copy, tmp_path, capsys):
    summary = tmp_path / "summary.json"
    code, out, _ = run_cli(["data", "check", "--data-dir", mini_copy, "--summary-json", summary], capsys)
    assert code == 0 and "6 languages x 24 instructions" in out
    report = json.loads(summary.read_text())
    assert report["instructions"] == {lang: 24 for lang in MINI_LANGS}
    assert report["references"] == {"xlpref-mini-reference": {lang: 24 for lang in MINI_LANGS}}
    assert report["train_prompts"]["mini"]["zh"] == 26 and report["translation_tasks"] == {"mini": 3}
    assert report["preference_pairs"] == 52
    # A copy is not the benchmark's data: its instruction files differ from benchmark.yaml's checksums.
    assert report["checksum_counts"]["differs"] == 6 and report["checksum_counts"]["match"] == 0
    assert [p.name for p in summary.parent.iterdir() if p.name.startswith(".")] == []


def test_fetch_offline_fails_clearly_and_writes_nothing(tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    code, _, err = run_cli(["data", "fetch", "--out", tmp_path / "xae", "--langs", "en,es"], capsys)
    assert code == 2 and "cannot download zhihz0535/X-AlpacaEval/english.json" in err
    assert not (tmp_path / "xae").exists()
    code, _, err = run_cli(["data", "fetch", "--out", tmp_path / "xae", "--langs", "en,de"], capsys)
    assert code == 2 and "'de' is not in the hub release" in err
