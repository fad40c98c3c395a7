"""Outputs, annotation with order switching and caching, the evaluate / judge-agreement commands.

Budget (with tests/test_judges.py): under 60 s on 2 cores. The API judge runs against the fake
OpenAI-compatible server of tests/fake_openai_server.py; generation uses a tiny random model.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from cli_helpers import run_cli
from fake_openai_server import FakeOpenAIServer

from harness.evaluation.judging import annotate, evaluate_outputs
from harness.judges.loading import load_judge
from harness.evaluation.model_outputs import generate_outputs, load_model_outputs
from xlpref.data import MINI_DIR, default_data_dir, load_instructions, load_reference_outputs
from xlpref.errors import InputError


def is_switched(instruction: str, seed: int = 0) -> bool:
    """AlpacaEval's rule, written out independently of alpaca-eval's processor."""
    return random.Random("is_switched_outputs" + instruction + str(seed)).choices([False, True])[0]


def mini(lang: str = "es") -> tuple[list, list[dict]]:
    instructions = load_instructions(MINI_DIR / "x_alpacaeval" / "instructions", [lang])[lang]
    refs = load_reference_outputs(MINI_DIR / "x_alpacaeval" / "reference_outputs" / "xlpref-mini-reference"
                                  / f"{lang}.json", instructions)
    return instructions, refs


def marked_outputs(instructions, refs) -> tuple[list[dict], list[dict]]:
    """Even ids: the model's output is GOOD; odd ids: the reference's is."""
    model = [{"instruction": i.instruction, "output": f"{'GOOD' if i.id % 2 == 0 else 'BAD'} answer {i.id}",
              "generator": "marked-model", "dataset": i.dataset, "id": i.id} for i in instructions]
    refs = [{**r, "output": f"{'BAD' if r['id'] % 2 == 0 else 'GOOD'} reference {r['id']}"} for r in refs]
    return model, refs


def test_annotations_switch_order_map_back_and_cache(tmp_path, api_key):
    instructions, refs = mini("es")
    model_outputs, refs = marked_outputs(instructions, refs)
    with FakeOpenAIServer(p_good=0.9) as server:
        judge = load_judge("weighted_gpt4_turbo_multilingual", base_url=server.base_url)
        metrics = evaluate_outputs(model_outputs, refs, judge, tmp_path / "es")
        first_hits = server.hits
        annotations = json.loads((tmp_path / "es" / "annotations.json").read_text())
        # Unchanged outputs: every answer comes from the cache, no request reaches the server.
        again = evaluate_outputs(model_outputs, refs, judge, tmp_path / "es")
        assert server.hits == first_hits == len(instructions)
        assert json.loads((tmp_path / "es" / "annotations.json").read_text()) == annotations
        # One changed output: exactly one new request.
        changed = [dict(r) for r in model_outputs]
        changed[0]["output"] = "GOOD but different"
        evaluate_outputs(changed, refs, judge, tmp_path / "es")
        assert server.hits == first_hits + 1
    switches = [a["is_switched_outputs"] for a in annotations]
    assert any(switches) and not all(switches)
    for record in annotations:
        assert record["is_switched_outputs"] == is_switched(record["instruction"])
        assert record["preference"] == pytest.approx(1.9 if record["id"] % 2 == 0 else 1.1)
        assert record["generator_1"] == "xlpref-mini-reference" and record["generator_2"] == "marked-model"
    assert metrics["win_rate"] == pytest.approx(again["win_rate"]) == pytest.approx(50.0)
    assert metrics["annotator"] == "weighted_gpt4_turbo_multilingual" and metrics["annotator_is_demo"] is False
    assert metrics["reference"] == "xlpref-mini-reference" and metrics["n_total"] == len(instructions)
    # without a difficulty table LC predicts one value for every instruction: reported as not estimable
    assert metrics["length_controlled_winrate"] is None and "zero standard error" in metrics["lc_not_estimable"]
    # The API key was sent (see test_judges) but is nowhere in what the run wrote.
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert api_key not in path.read_text(errors="replace"), path


def test_server_death_keeps_finished_answers_and_rerun_resumes(tmp_path, api_key):
    from harness.judges.api import JudgeUnavailableError

    instructions, refs = mini("de")
    model_outputs, refs = marked_outputs(instructions, refs)
    cache = tmp_path / "judge_cache.jsonl"
    with FakeOpenAIServer(fail_after=4) as dying:  # answers 4 pairs, then only 500s
        judge = load_judge("weighted_gpt4_turbo_multilingual", base_url=dying.base_url, max_concurrency=1,
                           max_retries=0)
        with pytest.raises(JudgeUnavailableError, match="unavailable after 0 retries"):
            annotate(model_outputs, refs, judge, cache_path=cache, progress=False)
    assert len(cache.read_text().splitlines()) == 4  # the first chunk (4 pairs) was kept
    with FakeOpenAIServer() as healthy:
        judge = load_judge("weighted_gpt4_turbo_multilingual", base_url=healthy.base_url)
        annotations = annotate(model_outputs, refs, judge, cache_path=cache, progress=False)
        assert healthy.hits == len(instructions) - 4
    assert [a["preference"] for a in annotations] == pytest.approx(
        [1.9 if a["id"] % 2 == 0 else 1.1 for a in annotations])


def test_identical_outputs_need_no_judge_and_ids_must_match(tmp_path, api_key):
    _, refs = mini("en")
    same = [{"instruction": r["instruction"], "output": r["output"], "generator": "copy", "id": r["id"]}
            for r in refs[:3]]
    with FakeOpenAIServer() as server:
        judge = load_judge("weighted_gpt4_turbo_multilingual", base_url=server.base_url)
        annotations = annotate(same, refs, judge, cache_path=None, progress=False)
        assert server.hits == 0 and [a["preference"] for a in annotations] == [1.5, 1.5, 1.5]
        _, es_refs = mini("es")
        with pytest.raises(InputError, match="instruction differs from the reference's for id 1"):
            annotate(same, es_refs, judge, cache_path=None, progress=False)


def test_generate_outputs_tiny_model_and_resume(tmp_path, monkeypatch):
    from xlpref.models import build_tiny_model
    from xlpref.sampling import SamplingParams

    instructions = {lang: rows[:2] for lang, rows in
                    load_instructions(MINI_DIR / "x_alpacaeval" / "instructions", ["en", "zh"]).items()}
    params = SamplingParams(temperature=0.6, top_p=0.9, max_new_tokens=4, seed=1)
    paths = generate_outputs(build_tiny_model("tiny-random-llama"), instructions, tmp_path, generator="tiny",
                             params=params, progress=False)
    for lang, path in paths.items():
        outputs = load_model_outputs(path)
        assert path == tmp_path / lang / "model_outputs.json"
        assert [o["id"] for o in outputs] == [i.id for i in instructions[lang]]
        assert [o["instruction"] for o in outputs] == [i.instruction for i in instructions[lang]]
        assert all(set(o) == {"instruction", "output", "generator", "dataset", "id"} for o in outputs)
        assert {o["generator"] for o in outputs} == {"tiny"}
    before = paths["zh"].read_text()

    def no_model(*args, **kwargs):
        raise AssertionError("a finished generation must not load a model")

    monkeypatch.setattr("xlpref.sampling.make_sampler", no_model)
    assert generate_outputs("in-memory", instructions, tmp_path, generator="tiny", params=params,
                            progress=False)["zh"].read_text() == before


def test_evaluate_command_bring_your_own_outputs(tmp_path, api_key, capsys):
    instructions, refs = mini("fr")
    model_outputs, _ = marked_outputs(instructions, refs)
    outputs_file = tmp_path / "byo" / "fr" / "model_outputs.json"
    outputs_file.parent.mkdir(parents=True)
    outputs_file.write_text(json.dumps([{k: v for k, v in o.items() if k != "id"} for o in model_outputs[:6]]))
    with FakeOpenAIServer() as server:
        code, out, err = run_cli(["evaluate", str(tmp_path / "byo"), "--judge", "weighted_gpt4_turbo_multilingual",
                                  "--judge-option", f"base_url={server.base_url}", "--mini"], capsys)
        assert code == 0, err
        assert server.hits == 6
    metrics = json.loads((tmp_path / "byo" / "fr" / "weighted_gpt4_turbo_multilingual" / "metrics.json").read_text())
    assert metrics["n_total"] == 6 and metrics["reference"] == "xlpref-mini-reference"
    assert metrics["annotator"] == "weighted_gpt4_turbo_multilingual" and "win rate" in out
    assert metrics["target_language_rate"] is not None and "answer language" in out


def test_bad_outputs_file_exits_2(tmp_path, capsys):
    bad = tmp_path / "es" / "model_outputs.json"
    bad.parent.mkdir()
    bad.write_text(json.dumps([{"instruction": "a", "output": "b", "generator": "g"},
                               {"instruction": "c", "generator": "g"}]))
    code, _, err = run_cli(["evaluate", str(bad), "--judge", "local_hf_logprob", "--mini"], capsys)
    assert code == 2
    assert str(bad) in err and "record 1" in err and "field 'output'" in err


def test_judge_agreement_command(tmp_path, api_key, capsys):
    folder = default_data_dir() / "alpaca_eval_annotations"
    if not folder.is_dir():
        pytest.skip(f"AlpacaEval annotations not found at {folder}")
    target = tmp_path / "agreement.json"
    # A judge that always prefers the output shown second with probability 0.8.
    with FakeOpenAIServer(logprobs={"M": -0.2231435513142097, "m": -1.6094379124341003}) as server:
        code, _, err = run_cli(["--run-dir", str(tmp_path / "run"), "judge-agreement", "--judge",
                                "weighted_gpt4_turbo_multilingual", "--judge-option", f"base_url={server.base_url}",
                                "--n", "5", "--models", "vicuna-7b,NullModel", "-o", str(target)], capsys)
        assert code == 0, err
    result = json.loads(target.read_text())
    # Expected by hand: the judge's side is "model wins" exactly when AlpacaEval did not switch the pair.
    chosen = _chosen(folder, 5)
    clear, everything = [], []
    for model in ("vicuna-7b", "NullModel"):
        for r in json.loads((folder / f"{model}.json").read_text()):
            if r["instruction"] not in chosen:
                continue
            agree = (r["preference"] > 1.5) == (not is_switched(r["instruction"]))
            if r["preference"] != 1.5:
                everything.append(agree)
            if r["preference"] < 1.1 or r["preference"] > 1.9:
                clear.append(agree)
    assert [m["n"] for m in result["models"]] == [5, 5]
    assert result["n_clear"] == len(clear) and result["n_all"] == len(everything)
    assert result["agreement_clear"] == pytest.approx(sum(clear) / len(clear))
    assert result["agreement_all"] == pytest.approx(sum(everything) / len(everything))
    assert result["n_models"] == 2 and result["spearman"] in (-1.0, 1.0, None)
    assert result["command"].startswith("xlpref --seed 42 judge-agreement --judge weighted_gpt4_turbo_multilingual")


def _chosen(folder: Path, n: int, seed: int = 42) -> set[str]:
    shared = None
    for model in ("vicuna-7b", "NullModel"):
        texts = {r["instruction"] for r in json.loads((folder / f"{model}.json").read_text())}
        shared = texts if shared is None else shared & texts
    return set(random.Random(seed).sample(sorted(shared), n))
