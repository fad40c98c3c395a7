"""Reward accuracy: the implicit reward's agreement with a judge, on hand numbers and on tiny random models."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from harness.cli import cli
from harness.metrics.reward_accuracy import agreement, annotation_samples
from xlpref.data import MINI_DIR
from xlpref.jsonio import read_json
from xlpref.languages import cross_lingual_instruction


def test_agreement_counts_sides_ties_and_clear_pairs_by_hand():
    # margins: +1 (judge +), -1 (judge -), -3 (judge + but barely), +2 (judge 1.5: no side), 0 (tie, judge -)
    result = agreement([0, 1, 3, 0, 2], [1, 0, 0, 2, 2], [2.0, 1.0, 1.6, 1.5, 1.2], n_boot=500, seed=0)
    assert result["n_pairs"] == 5 and result["n_all"] == 4 and result["n_clear"] == 3
    assert result["agreement_all"] == pytest.approx(100 * (1 + 1 + 0 + 0.5) / 4)
    assert result["agreement_clear"] == pytest.approx(100 * (1 + 1 + 0.5) / 3)
    low, high = result["ci_all"]
    assert 0 <= low <= result["agreement_all"] <= high <= 100


def test_samples_take_the_english_instruction_by_id_for_other_languages():
    records = [{"id": 2, "instruction": "¿Capital?", "output_1": "a", "output_2": "b", "preference": 2.0}]
    samples = annotation_samples(records, "es", english={2: "Capital?"})
    assert [(s["sample_index"], s["prompt_en"], s["response"]) for s in samples] == [(0, "Capital?", "a"),
                                                                                       (1, "Capital?", "b")]
    with pytest.raises(Exception, match="no English X-AlpacaEval instruction"):
        annotation_samples([{**records[0], "id": 99}], "es", english={2: "Capital?"})


def crafted_annotations(lang: str) -> list[dict]:
    instructions = {r["id"]: r["instruction"] for r in read_json(MINI_DIR / "x_alpacaeval" / "instructions"
                                                                  / f"{lang}.json")}
    outputs = ["A short answer.", "A somewhat longer answer with more words in it.", "Yes.",
               "The capital is Canberra, which is in the south-east.", "Water boils at 100 degrees."]
    return [{"id": i, "instruction": instructions[i], "output_1": outputs[i % 5], "output_2": outputs[(i + 2) % 5],
             "preference": [2.0, 1.0, 1.9, 1.1, 1.5, 1.7][i % 6], "generator_1": "ref", "generator_2": "m"}
            for i in range(1, 9)]


def test_same_policy_and_reference_agree_at_exactly_chance(tmp_path):
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(crafted_annotations("en")), encoding="utf-8")
    run = CliRunner().invoke(cli, ["reward-accuracy", "--policy", "tiny-random-llama", "--reference",
                                   "tiny-random-llama", "--annotations", str(path), "--json", "--n-boot", "200"])
    assert run.exit_code == 0, run.output
    result = json.loads(run.stdout)["per_language"]["en"]
    # every reward is 0: each pair is a tie and counts one half
    assert result["agreement_all"] == 50.0 and result["agreement_clear"] == 50.0
    assert (result["n_pairs"], result["n_all"], result["n_clear"]) == (8, 7, 6)


def test_per_language_folder_matches_a_hand_scored_reward(tmp_path):
    import torch

    from xlpref.models import load_model
    from xlpref.reward import implicit_rewards, prompt_token_ids, response_token_ids

    for lang in ("en", "es"):
        (tmp_path / lang).mkdir()
        (tmp_path / lang / "annotations.json").write_text(json.dumps(crafted_annotations(lang)), encoding="utf-8")
    run = CliRunner().invoke(cli, ["reward-accuracy", "--policy", "tiny-random-llama-seed1", "--reference",
                                   "tiny-random-llama", "--annotations", str(tmp_path), "--data-dir",
                                   str(MINI_DIR), "--json", "--n-boot", "200", "--token-span", "response"])
    assert run.exit_code == 0, run.output
    assert json.loads(run.stdout)["token_span"] == "response"
    per_language = json.loads(run.stdout)["per_language"]
    assert sorted(per_language) == ["en", "es"]

    policy, tokenizer = load_model("tiny-random-llama-seed1")
    reference, _ = load_model("tiny-random-llama")
    english = {r["id"]: r["instruction"] for r in read_json(MINI_DIR / "x_alpacaeval" / "instructions" / "en.json")}
    records = crafted_annotations("es")
    items = []
    for record in records:
        prompt = prompt_token_ids(tokenizer, cross_lingual_instruction(english[record["id"]], "es"))
        items += [(prompt, response_token_ids(tokenizer, record[f"output_{side}"])) for side in (1, 2)]
    with torch.no_grad():
        rewards = [s.reward for s in implicit_rewards(policy, reference, items)]
    expected = agreement(rewards[0::2], rewards[1::2], [r["preference"] for r in records], n_boot=200, seed=42)
    assert per_language["es"]["agreement_all"] == pytest.approx(expected["agreement_all"])
    assert per_language["es"]["mean_margin"] == pytest.approx(expected["mean_margin"], abs=1e-3)


def test_bad_annotations_exit_2_naming_the_record(tmp_path, capsys):
    from harness.cli import main

    path = tmp_path / "annotations.json"
    path.write_text(json.dumps([{"instruction": "x", "output_1": "a", "output_2": "b", "preference": 3}]))
    with pytest.raises(SystemExit) as exit_info:
        main(["reward-accuracy", "--policy", "tiny-random-llama", "--reference", "tiny-random-llama",
              "--annotations", str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "record 0" in err and "preference" in err
