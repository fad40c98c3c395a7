"""Capability suites (lm-eval) on tiny models with a local multilingual task; scores onto the leaderboard.

Budget: under 60 s on 2 shared cores (two lm-eval runs of 6 documents; the rest needs no model).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from results_fixtures import add_row

from harness.evaluation.capabilities import (
    RECOMMENDED,
    primary_metric,
    recommended_tasks,
    record_capabilities,
    resolve_local_tasks,
    run_capability_suite,
)
from harness.cli import main
from harness.results.rows import read_row
from xlpref.errors import InputError

TASKS = Path(__file__).parent / "fixtures" / "lm_eval_tasks"
TOY = "xlpref_toy_mc"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No hub: a task whose data is on the hub must fail clearly, whatever the shell exports."""
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def toy_docs() -> list[dict]:
    return [json.loads(line) for line in (TASKS / f"{TOY}.jsonl").read_text(encoding="utf-8").splitlines()]


def hand_accuracies(model_dir: str, docs: list[dict]) -> tuple[float, float]:
    """acc and acc_norm computed directly with transformers, as lm-eval defines them for multiple choice.

    Context "{question}\\nAnswer:", continuation " {choice}"; a choice's log-likelihood is the sum over
    its tokens; acc_norm divides it by the choice's length in characters.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    hits, norm_hits = 0, 0
    for doc in docs:
        context = f"{doc['question']}\nAnswer:"
        context_ids = tokenizer.encode(context)
        lls = []
        for choice in doc["choices"]:
            whole = tokenizer.encode(context + " " + choice)
            with torch.no_grad():
                logprobs = model(torch.tensor([whole])).logits[0].log_softmax(-1)
            lls.append(sum(logprobs[i - 1, whole[i]].item() for i in range(len(context_ids), len(whole))))
        hits += max(range(4), key=lambda i: lls[i]) == doc["answer"]
        norm_hits += max(range(4), key=lambda i: lls[i] / len(doc["choices"][i])) == doc["answer"]
    return hits / len(docs), norm_hits / len(docs)


def test_suite_on_local_task_matches_a_hand_computed_accuracy():
    from xlpref.models import resolve_model_path

    scores = run_capability_suite("tiny-random-llama", [TOY], include_path=TASKS, limit=6, batch_size=8)
    score = scores[TOY]
    assert score["metric"] == "acc_norm" and score["n_docs"] == 6 and score["n_docs_total"] == 10
    assert 0.0 <= score["value"] <= 1.0
    # Standard error of a mean of 6 zero/one values (lm-eval's sample standard deviation / sqrt(n)).
    p = score["value"]
    assert score["stderr"] == pytest.approx(math.sqrt(p * (1 - p) * 6 / 5 / 6))
    _, acc_norm = hand_accuracies(resolve_model_path("tiny-random-llama"), toy_docs()[:6])
    assert score["value"] == pytest.approx(acc_norm)


def test_cli_writes_scores_into_a_row_and_the_leaderboard_shows_them(tmp_path, capsys):
    from xlpref.models import build_tiny_model

    model_dir = tmp_path / "llama-seed1"  # another seed, as a plain save_pretrained folder
    model, tokenizer = build_tiny_model("tiny-random-llama", seed=1)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    results = tmp_path / "results"
    add_row(results, "demo-iter1", {"en": (14.0, 12.0), "es": (11.0, 9.5)}, iteration=1, model=str(model_dir))
    out = tmp_path / "caps.json"
    main(["--seed", "1", "capabilities", "--suite", "lm-eval", "--model", str(model_dir), "--tasks", TOY,
          "--include-path", str(TASKS), "--limit", "6", "--batch-size", "8",
          "--row", "demo-iter1", "--results-dir", str(results), "-o", str(out)])
    assert TOY in capsys.readouterr().out
    report = json.loads(out.read_text())
    score = report["scores"][TOY]
    assert score["n_docs"] == 6 and report["n-samples"][TOY] == {"original": 10, "effective": 6}
    assert report["results"][TOY]["acc_norm,none"] == score["value"]
    assert report["config"]["seed"] == 1 and report["config"]["lm_eval_version"] == "0.4.13"
    _, acc_norm = hand_accuracies(str(model_dir), toy_docs()[:6])
    assert score["value"] == pytest.approx(acc_norm)
    # The leaderboard reads accuracies in percent, like the win rates.
    assert read_row(results / "demo-iter1").capabilities == {TOY: pytest.approx(100 * score["value"])}
    main(["leaderboard", "--results-dir", str(results), "--width", "200"])
    printed = capsys.readouterr().out
    assert TOY in printed and f"{100 * score['value']:.2f}" in printed
    assert f"cap_{TOY}" in (results / "leaderboard.csv").read_text().splitlines()[0]


@pytest.mark.parametrize("argv, message", [
    (["--suite", "helm", "--tasks", TOY], "helm"),
    (["--tasks", TOY, "--include-path", "no/such/folder"], "no/such/folder"),
    (["--tasks", "xlpref_toy_offline_hub", "--include-path", str(TASKS)], "xlpref_toy_offline_hub"),
    (["--tasks", RECOMMENDED, "--langs", "en,th"], "'th'"),
    (["--tasks", TOY, "--include-path", str(TASKS), "--row", "no-such-row"], "no-such-row"),
])
def test_bad_input_exits_2_with_a_clear_message(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["capabilities", "--model", "tiny-random-llama", "--results-dir", str(tmp_path), *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_relative_data_files_are_made_absolute_and_functions_kept(tmp_path):
    source = tmp_path / "tasks"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "data.jsonl").write_text('{"q": "x"}\n')
    (source / "sub" / "utils.py").write_text("def process(docs):\n    return docs\n")
    (source / "sub" / "t.yaml").write_text(
        "task: t\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: data.jsonl\n"
        "process_docs: !function utils.process\n")
    resolved = resolve_local_tasks(source, tmp_path / "work")
    assert resolved != source and (resolved / "sub" / "utils.py").exists()
    assert not (resolved / "sub" / "data.jsonl").exists()  # data is referred to, not copied
    # Read back as lm-eval reads it: the !function tag still names the helper beside the copied YAML.
    from lm_eval.tasks._yaml_loader import load_yaml

    config = load_yaml(resolved / "sub" / "t.yaml")
    assert config["dataset_kwargs"]["data_files"]["test"] == str((source / "sub" / "data.jsonl").resolve())
    assert callable(config["process_docs"]) and config["process_docs"].__name__ == "process"
    # Nothing relative: lm-eval reads the folder itself.
    (source / "sub" / "t.yaml").write_text("task: t\ndataset_path: some/hub-dataset\n")
    assert resolve_local_tasks(source, tmp_path / "work2") == source


def test_primary_metric_prefers_acc_norm_and_reads_filters():
    assert primary_metric({"alias": "t", "acc,none": 0.5, "acc_stderr,none": 0.1, "acc_norm,none": 0.4,
                           "acc_norm_stderr,none": "N/A"}) == ("acc_norm", 0.4, None)
    assert primary_metric({"exact_match,strict-match": 0.2, "exact_match_stderr,strict-match": 0.05}) == (
        "exact_match,strict-match", 0.2, 0.05)
    assert primary_metric({"alias": "group", " ": " "}) is None
    # Lower-is-better metrics are not scores the leaderboard can rank.
    assert primary_metric({"word_perplexity,none": 30.0, "bits_per_byte,none": 1.2, "acc,none": 0.3},
                          {"word_perplexity": False, "bits_per_byte": False, "acc": True}) == ("acc", 0.3, None)
    assert primary_metric({"word_perplexity,none": 30.0}, {"word_perplexity": False}) is None


def test_record_capabilities_merges_in_percent_and_refuses_published_rows(tmp_path):
    row = add_row(tmp_path, "demo-iter0", {"en": (10.0, 9.0)})
    record_capabilities(row, {"arc_es": {"metric": "acc_norm", "value": 0.25, "stderr": 0.1}})
    record_capabilities(row, {"bleu_task": {"metric": "bleu", "value": 12.5, "stderr": None}})
    assert read_row(row).capabilities == {"arc_es": 25.0, "bleu_task": 12.5}
    published = add_row(tmp_path, "paper-row", {"en": (30.0, 20.0)}, kind="published", run=None, iteration=None)
    with pytest.raises(InputError, match="published"):
        record_capabilities(published, {"arc_es": {"metric": "acc", "value": 0.5, "stderr": None}})


def test_recommended_tasks_are_lm_eval_task_files():
    import lm_eval

    tasks = recommended_tasks()
    assert tasks[:4] == ["arc_challenge", "hellaswag", "m_mmlu_en", "truthfulqa_mc2"] and "m_mmlu_ru" in tasks
    # Checked against lm-eval's task files rather than its index (indexing ~14,700 configs takes ~15 s of CPU).
    files = {path.stem: path for path in (Path(lm_eval.__file__).parent / "tasks").rglob("*.yaml")}
    assert set(tasks) <= set(files)
    for task in tasks:
        assert re.search(rf"^task: {task}$", files[task].read_text(encoding="utf-8"), re.MULTILINE), task
