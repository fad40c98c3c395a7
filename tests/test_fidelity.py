"""The authors' judge, exactly (prompt text, rendered requests, seed-0 order), and labels that stay with what made them.

Expected requests are built here from alpaca-eval's own pieces (its template file with the authors'
sentence inserted, ``make_prompts``, ``prompt_to_chatml`` as its OpenAI decoder calls it, and its
``RandomSwitchTwoColumnsProcessor`` set up as its ``PairwiseAnnotator`` does), independently of
harness/judges and harness/evaluation.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest
from cli_helpers import run_cli
from fake_openai_server import FakeOpenAIServer

from benchmarks.x_alpacaeval import ANNOTATORS_DIR
from harness.judges.base import JudgeItem
from harness.judges.loading import load_judge, load_judge_config
from xlpref.data import MINI_DIR, load_instructions, load_reference_outputs
from xlpref.errors import InputError

SENTENCE = ("A good output should be in the same language as the instruction, except when the instruction explicitly "
            "requests the output in a different language.")
TEMPLATE = ANNOTATORS_DIR / "weighted_gpt4_turbo_multilingual" / "alpaca_eval_clf_multilingual.txt"
#: sha256 of the authors' template (AlpacaEval 2's weighted GPT-4 Turbo prompt + SENTENCE at the start of "## Task").
TEMPLATE_SHA256 = "10f5ddeae97ecab62bac9ff14d83c1fd1ce075d79b1db5efd750d7f92d772c26"


def authors_template() -> str:
    """alpaca-eval 0.6.6's own template with the sentence placed as the authors' fork places it."""
    import alpaca_eval

    original = (Path(alpaca_eval.__file__).parent / "evaluators_configs" / "alpaca_eval_clf_gpt4_turbo"
                / "alpaca_eval_clf.txt").read_text(encoding="utf-8")
    anchor = "## Task\n\nEvaluate the models based on"
    assert original.count(anchor) == 1
    return original.replace(anchor, f"## Task\n\n{SENTENCE} Evaluate the models based on")


def alpaca_eval_messages(frame: pd.DataFrame) -> list[list[dict]]:
    """alpaca-eval's rendering: ``make_prompts`` (batch size 1) then ``prompt_to_chatml`` per prompt."""
    from alpaca_eval import utils

    prompts, _ = utils.make_prompts(frame, template=authors_template(), batch_size=1)
    return [utils.prompt_to_chatml(prompt) for prompt in prompts]


def seed0_order(frame: pd.DataFrame) -> pd.DataFrame:
    """AlpacaEval's PairwiseAnnotator order randomisation with its default seed 0."""
    from alpaca_eval.processors import RandomSwitchTwoColumnsProcessor

    processor = RandomSwitchTwoColumnsProcessor(two_columns_to_switch=["output_1", "output_2"],
                                                random_seed_columns=["instruction"],
                                                _switch_column="is_switched_outputs", seed=0)
    return processor.preprocess(frame)


@pytest.fixture
def keys(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-fidelity")
    monkeypatch.setenv("VLLM_API_KEY", "sk-test-fidelity")


def test_template_file_is_pinned_and_equals_alpaca_eval_prompt_with_the_authors_sentence():
    assert hashlib.sha256(TEMPLATE.read_bytes()).hexdigest() == TEMPLATE_SHA256
    assert TEMPLATE.read_text(encoding="utf-8") == authors_template()
    for name in ("weighted_gpt4_turbo_multilingual", "weighted_vllm_multilingual", "local_hf_logprob"):
        assert load_judge_config(name).prompt_template == authors_template()


@pytest.mark.parametrize("judge_name", ["weighted_gpt4_turbo_multilingual", "weighted_vllm_multilingual"])
def test_every_request_equals_alpaca_eval_rendering_message_for_message(judge_name, keys):
    items = [JudgeItem("¿Cuál es la capital de Francia?", "París.", "La capital es París."),
             JudgeItem('Say "hi" in Thai: {braces} and """quotes"""', "สวัสดี", "สวัสดีครับ\n\nmore"),
             JudgeItem("Напиши стих.", "  leading and trailing spaces  ", "")]
    frame = pd.DataFrame([{"instruction": i.instruction, "output_1": i.output_1, "output_2": i.output_2}
                          for i in items])
    with FakeOpenAIServer() as server:
        judge = load_judge(judge_name, base_url=server.base_url, retry_backoff_s=0, max_concurrency=1)
        judge.preferences(items)
        sent = [request["body"]["messages"] for request in server.requests]
    assert sent == alpaca_eval_messages(frame)


def test_evaluate_command_sends_alpaca_eval_rendering_in_seed_0_order(tmp_path, keys, capsys):
    lang = "es"
    instructions = load_instructions(MINI_DIR / "x_alpacaeval" / "instructions", [lang])[lang]
    refs = load_reference_outputs(MINI_DIR / "x_alpacaeval" / "reference_outputs" / "xlpref-mini-reference"
                                  / f"{lang}.json", instructions)
    outputs = [{"instruction": i.instruction, "output": f"respuesta del modelo {i.id}", "generator": "m",
                "dataset": i.dataset} for i in instructions]
    path = tmp_path / "outs" / lang / "model_outputs.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(outputs, ensure_ascii=False), encoding="utf-8")
    with FakeOpenAIServer() as server:
        code, _, err = run_cli(["evaluate", tmp_path / "outs", "--judge", "weighted_gpt4_turbo_multilingual",
                                "--judge-option", f"base_url={server.base_url}", "--mini"], capsys)
        assert code == 0, err
        sent = [request["body"]["messages"] for request in server.requests]
    frame = pd.DataFrame({"instruction": [o["instruction"] for o in outputs],
                          "output_1": [r["output"] for r in refs], "output_2": [o["output"] for o in outputs]})
    shown = seed0_order(frame)
    assert 0 < shown["is_switched_outputs"].sum() < len(shown)  # both orders occur: the seed matters here
    expected = alpaca_eval_messages(shown)
    key = lambda messages: json.dumps(messages, sort_keys=True, ensure_ascii=False)  # noqa: E731
    assert sorted(map(key, sent)) == sorted(map(key, expected))  # concurrent requests arrive in any order
    annotations = json.loads((tmp_path / "outs" / lang / "weighted_gpt4_turbo_multilingual"
                              / "annotations.json").read_text(encoding="utf-8"))
    assert [a["is_switched_outputs"] for a in annotations] == shown["is_switched_outputs"].tolist()


def test_the_loop_judges_with_switch_seed_0_whatever_the_run_seed(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from xlpref.cluster import ComputeConfig

    import harness.evaluation.judging as judging
    import harness.evaluation.model_outputs as model_outputs
    import harness.judges.loading as judges_loading
    import harness.loop as loop
    import harness.trackers as trackers
    from harness.config import EvaluationConfig

    seen = []
    monkeypatch.setattr(model_outputs, "generate_outputs", lambda *a, **k: {"es": tmp_path / "es.json"})
    monkeypatch.setattr(judges_loading, "load_judge", lambda *a, **k: SimpleNamespace(is_demo=True))
    monkeypatch.setattr(judging, "evaluate_outputs", lambda *a, seed, **k: seen.append(seed) or {"n_total": 1})
    monkeypatch.setattr(loop, "_record_results", lambda *a, **k: None)
    monkeypatch.setattr(trackers, "log_iteration_metrics", lambda *a, **k: None)
    store = SimpleNamespace(path=lambda *parts: tmp_path.joinpath(*parts), is_done=lambda stage: False,
                            mark_done=lambda *a: None, root=tmp_path)
    for switch_seed in (None, 7):
        evaluation = EvaluationConfig() if switch_seed is None else EvaluationConfig(switch_seed=switch_seed)
        config = SimpleNamespace(evaluation=evaluation, seed=42, name="r", languages=["es"],
                                 data=SimpleNamespace(instruction_difficulty=None),
                                 training=SimpleNamespace(report_to=[]), compute=ComputeConfig())
        ctx = loop.RunContext(config, store, SimpleNamespace(rule=lambda *a: None), {}, {"es": []}, {"es": []})
        loop.evaluate_policy(ctx, 1, "policy")
    assert seen == [0, 7]


@pytest.mark.parametrize("option", ["is_demo=false", "description=GPT-4 judge"])
def test_judge_labels_cannot_be_overridden_by_an_option(option, capsys, tmp_path):
    from harness.judges.loading import parse_option_value

    key, value = option.split("=", 1)
    with pytest.raises(InputError, match=f"'{key}' cannot be overridden"):
        load_judge_config("local_hf_logprob", **{key: parse_option_value(value)})
    path = tmp_path / "es" / "model_outputs.json"
    path.parent.mkdir()
    path.write_text(json.dumps([{"instruction": "a", "output": "b", "generator": "g"}]), encoding="utf-8")
    code, _, err = run_cli(["evaluate", tmp_path, "--judge", "local_hf_logprob", "--judge-option", option, "--mini"],
                           capsys)
    assert code == 2 and "cannot be overridden" in err


def test_a_judge_config_of_its_own_may_say_what_it_is(tmp_path):
    folder = tmp_path / "annotators" / "my_judge"
    folder.mkdir(parents=True)
    source = (ANNOTATORS_DIR / "local_hf_logprob" / "configs.yaml").read_text(encoding="utf-8")
    (folder / "configs.yaml").write_text(source.replace("is_demo: true", "is_demo: false"), encoding="utf-8")
    (tmp_path / "annotators" / "weighted_gpt4_turbo_multilingual").mkdir()
    (tmp_path / "annotators" / "weighted_gpt4_turbo_multilingual" / TEMPLATE.name).write_bytes(TEMPLATE.read_bytes())
    assert load_judge_config(folder).options["is_demo"] is False


def test_capability_scores_go_only_into_the_row_of_the_evaluated_model(tmp_path, capsys):
    from results_fixtures import add_row

    from harness.commands.capabilities_cmd import is_rows_model
    from harness.results.rows import read_row

    results = tmp_path / "results"
    folder = add_row(results, "demo-iter1", {"en": (14.0, 12.0)}, iteration=1, run="demo", model="iter_0/model")
    code, _, err = run_cli(["capabilities", "--model", "tiny-random-llama", "--tasks", "xlpref_toy_mc", "--include-path",
                            Path(__file__).parent / "fixtures" / "lm_eval_tasks", "--row", "demo-iter1",
                            "--results-dir", results], capsys)
    assert code == 2 and "holds the scores of model 'iter_0/model', not 'tiny-random-llama'" in err
    assert not (Path(folder) / "capabilities.json").exists()
    row = read_row(folder)
    assert is_rows_model(row, "iter_0/model")
    assert is_rows_model(row, str(tmp_path / "runs" / "demo" / "iter_0" / "model"))
    assert not is_rows_model(row, str(tmp_path / "runs" / "other" / "iter_0" / "model"))
    assert not is_rows_model(row, "tiny-random-llama")


def test_metrics_uses_the_instruction_difficulty_default_of_evaluate(tmp_path, monkeypatch, capsys):
    import numpy as np

    from harness.metrics.difficulty import load_instruction_difficulty
    from harness.metrics.winrate import compute_metrics

    data = tmp_path / "data"
    (data / "alpaca_eval_lc").mkdir(parents=True)
    table = data / "alpaca_eval_lc" / "instruction_difficulty.csv"
    rng = np.random.default_rng(3)
    difficulty = rng.normal(0, 1.5, 40)
    table.write_text("index,instruction_difficulty\n" + "".join(f"{i},{d:.6f}\n" for i, d in enumerate(difficulty)))
    annotations = [{"id": i + 1, "instruction": f"q{i}", "output_1": "r" * int(rng.integers(5, 90)),
                    "output_2": "m" * int(rng.integers(5, 90)), "generator_1": "ref", "generator_2": "m",
                    "preference": float(1 + 1 / (1 + np.exp(-1.2 * difficulty[i] - rng.normal(0, 0.3))))}
                   for i in range(30)]
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(annotations), encoding="utf-8")
    monkeypatch.setenv("XLPREF_DATA_DIR", str(data))
    code, out, err = run_cli(["metrics", path, "--json"], capsys)
    assert code == 0, err
    printed = json.loads(out)
    expected = compute_metrics(annotations, instruction_difficulty=load_instruction_difficulty(table))
    assert printed["lc_difficulty"] == "official-csv" and printed["length_controlled_winrate"] is not None
    assert printed["length_controlled_winrate"] == pytest.approx(expected["length_controlled_winrate"])
    code, out, _ = run_cli(["metrics", path, "--no-instruction-difficulty", "--json"], capsys)
    assert code == 0 and json.loads(out)["lc_difficulty"] == "none"
