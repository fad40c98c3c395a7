"""``xlpref run --dry-run`` prints the plan and every pre-flight finding; a real run refuses on any of them first."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import run_cli

from xlpref.data import default_data_dir

REPO = Path(__file__).resolve().parents[1]


def test_demo_plan_counts_every_stage_and_creates_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    code, out, err = run_cli(["run", "configs/demo.yaml", "--dry-run", "--run-dir", tmp_path / "run"], capsys)
    assert code == 0, err
    assert "evaluate pi_0         24 outputs (en 8, es 8, de 8), 24 judge calls" in out
    assert "18 prompts (en 6, es 6, de 6) x 4 samples = 72 responses" in out
    assert "72 responses (cross-lingual reward)" in out and "at most 18 pairs" in out
    assert f"-> {tmp_path / 'run' / 'iter_0' / 'model'}" in out and "evaluate pi_1" in out
    assert "24 calls per evaluation x 2 evaluations = 48 calls" in out
    assert f"run directory {tmp_path / 'run'}: will be created" in out and "0 problems" in out
    assert not (tmp_path / "run").exists()


@pytest.fixture
def paper_workdir(tmp_path, monkeypatch):
    """A working folder whose ../shared/data is the shared data (the paper config's relative paths)."""
    data = default_data_dir()
    if not (data / "train_prompts" / "random_3000").is_dir():
        pytest.skip(f"the shared data (random_3000 prompts) not found at {data} (set XLPREF_DATA_DIR)")
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(data)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network: hub ids are looked up in the local cache only
    return tmp_path / "work"


def test_paper_plan_prints_without_gpu_network_or_key(paper_workdir, capsys):
    code, out, err = run_cli(["run", REPO / "configs" / "paper" / "llama3-8b-icr.yaml", "--dry-run"], capsys)
    assert code == 0, err
    assert "4025 outputs (en 805, es 805, ru 805, de 805, fr 805), 4025 judge calls" in out
    assert "15000 prompts (en 3000, es 3000, ru 3000, de 3000, fr 3000) x 10 samples = 150000 responses" in out
    assert "weighted_gpt4_turbo_multilingual: 4025 calls per evaluation x 3 evaluations = 12075 calls" in out
    assert "cost at $10 / $30 per million prompt / completion tokens: about $" in out
    assert "PROBLEM judge key: judge weighted_gpt4_turbo_multilingual: $OPENAI_API_KEY is not set" in out
    assert "PROBLEM model: policy princeton-nlp/Llama-3-Base-8B-SFT-DPO" in out or \
        "ok      model: policy princeton-nlp/Llama-3-Base-8B-SFT-DPO: hub id, in the local hub cache" in out
    assert "compute: 8 Ray workers x 1 GPUs: needs 8 GPUs" in out
    assert not (paper_workdir / "runs").exists()


def test_an_invalid_config_is_refused_by_the_dry_run_too(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("name: x\nlanguages: [en]\nmodels: {policy: a}\n")
    code, _, err = run_cli(["run", config, "--dry-run"], capsys)
    assert code == 2 and err.startswith("error: ") and "bad.yaml" in err


def tiny_config(tmp_path: Path, **replace: str) -> Path:
    text = (REPO / "tests" / "fixtures" / "tiny_run.yaml").read_text().replace("benchmarks/", f"{REPO}/benchmarks/")
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / "tiny.yaml"
    path.write_text(text + f"run_dir: {tmp_path / 'run'}\n")
    return path


def test_a_run_without_the_judge_key_stops_before_any_work_naming_every_problem(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    config = tiny_config(tmp_path, **{
        "judge: local_hf_logprob": "judge: weighted_gpt4_turbo_multilingual",
        "judge_options: {model: tiny-random-llama}": "judge_options: {}",
        "reference: tiny-random-llama": f"reference: {tmp_path / 'no-such-model'}/"})
    (tmp_path / "no-such-model").mkdir()  # a folder without config.json
    code, out, err = run_cli(["run", config], capsys)
    lines = [line for line in (out + err).splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, out + err
    assert "pre-flight found 2 problems" in lines[0] and "$OPENAI_API_KEY is not set" in lines[0]
    assert "no-such-model/: folder has no config.json" in lines[0]
    assert not (tmp_path / "run").exists()
