"""Multi-process training (xlpref.distributed): a real 2-rank gloo DPO job on CPU against one process.

Budget: about 60-90 s on 2 shared cores (one 2-process launch; two in-process trainings on a tiny model).

The comparison keeps the global batch: one process with batch 2 x grad_accum 2 against 2 ranks with
batch 2 x grad_accum 1 (4 pairs per optimizer step either way, the same shuffled order, the same
micro-batches). With two ranks the results came out bitwise identical here (the all-reduce adds two
gradients and halves the sum, as accumulation does, and halving is exact); other reduction orders
(more ranks, other all-reduce algorithms) round differently, about 1e-7 relative in float32, which
Adam's normalisation can amplify for near-zero gradient components. Tolerances: losses within 1e-4
relative, weights within 1e-4 absolute; a run with another global batch (the control below) was
6.3e-3 away.
"""

from __future__ import annotations

import importlib.util
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console
from safetensors.torch import load_file

from xlpref.distributed import (
    accelerate_config,
    check_launch,
    check_rank_records,
    launch_command,
    read_rank_records,
)
from xlpref.errors import InputError
from xlpref.jsonio import write_jsonl_atomic
from xlpref.training import TrainConfig, train_dpo

REPO = Path(__file__).resolve().parents[1]
PAIRS = [{"lang": "en", "prompt": f"Count to {i}.", "chosen": " ".join(str(k) for k in range(1, i + 1)),
          "rejected": "No." if i % 2 else "I will not count."} for i in range(1, 17)]
COMMON = dict(learning_rate=1e-3, epochs=1, max_length=128, seed=42)
LOSS_RTOL = 1e-4
WEIGHT_ATOL = 1e-4


def losses(history: list[dict]) -> list[float]:
    return [row["loss"] for row in history]


def max_weight_difference(a: Path, b: Path) -> float:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def test_two_ranks_match_one_process(tmp_path):
    single = train_dpo("tiny-random-llama", PAIRS, tmp_path / "single", TrainConfig(batch_size=2, grad_accum=2, **COMMON),
                       progress=False)
    # What each rank does alone: its per-device settings in one process (also the control for the tolerance).
    per_device = train_dpo("tiny-random-llama", PAIRS, tmp_path / "per_device",
                           TrainConfig(batch_size=2, grad_accum=1, **COMMON), progress=False)
    pairs_path = tmp_path / "pairs.jsonl"
    write_jsonl_atomic(pairs_path, PAIRS)
    out = tmp_path / "two_ranks"
    # The README's command, through the CLI: accelerate launch with configs/accelerate/cpu-multi.yaml.
    done = subprocess.run(
        [sys.executable, "-m", "harness.cli", "train", "--model", "tiny-random-llama", "--pairs", str(pairs_path),
         "-o", str(out), "--batch-size", "2", "--grad-accum", "1", "--lr", "1e-3", "--epochs", "1",
         "--max-length", "128", "--seed", "42", "--launcher", "accelerate", "--num-processes", "2"],
        cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-4000:]

    ranks = read_rank_records(out)
    # One 2-rank job, not two independent copies (those report world size 1, both rank 0).
    assert [(r["rank"], r["world_size"]) for r in ranks] == [(0, 2), (1, 2)]
    assert ranks[0]["pid"] != ranks[1]["pid"]
    # Each rank ran half the micro-batches and half the optimizer steps of one process with its settings.
    assert per_device.steps == per_device.micro_batches == 8
    assert [(r["micro_batches"], r["optimizer_steps"]) for r in ranks] == [(4, 4), (4, 4)]
    assert single.steps == 4 and single.micro_batches == 8

    # Same global batch: the same loss trajectory (losses are averaged over ranks; both ranks log it).
    assert losses(ranks[0]["loss_history"]) == losses(ranks[1]["loss_history"])
    two = losses(ranks[0]["loss_history"])
    assert len(two) == len(losses(single.metrics["loss_history"])) == 4
    assert two == pytest.approx(losses(single.metrics["loss_history"]), rel=LOSS_RTOL)
    assert two[-1] < two[0]  # the policy learned (chosen responses are repeated, so the NLL term falls)
    # ... and the same weights, which a run with another global batch misses by far.
    assert max_weight_difference(out, single.output_dir) <= WEIGHT_ATOL
    assert max_weight_difference(per_device.output_dir, single.output_dir) > 10 * WEIGHT_ATOL
    assert "processes" in done.stderr and str(out) in done.stdout


def test_independent_copies_are_refused(tmp_path):
    # Two single-rank copies of the worker would each report rank 0 of 1.
    copies = [{"rank": 0, "world_size": 1}, {"rank": 0, "world_size": 1}]
    with pytest.raises(RuntimeError, match="did not start one 2-rank job"):
        check_rank_records(copies, 2)
    with pytest.raises(RuntimeError):
        check_rank_records([{"rank": 0, "world_size": 2}], 2)  # a rank missing
    check_rank_records([{"rank": 0, "world_size": 2}, {"rank": 1, "world_size": 2}], 2)
    # A process asked to be one of 2 refuses to train alone, before loading anything.
    with pytest.raises(InputError, match="group of 1") as info:
        train_dpo("tiny-random-llama", PAIRS, tmp_path / "alone", TrainConfig(num_processes=2, **COMMON))
    assert info.value.field == "num_processes" and not (tmp_path / "alone").exists()


def test_launch_commands_and_bad_settings():
    cpu = launch_command("accelerate", 2, ["--model", "m"], config_file=REPO / "configs/accelerate/cpu-multi.yaml")
    assert cpu[1:5] == ["-m", "accelerate.commands.launch", "--config_file", str(REPO / "configs/accelerate/cpu-multi.yaml")]
    assert cpu[5:] == ["--num_processes", "2", "-m", "xlpref.train_worker", "--model", "m"]
    assert launch_command("torchrun", 8, [])[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                                                    "8", "-m", "xlpref.train_worker"]
    config = TrainConfig()
    for args, field in [(("tiny-random-llama", config, "mpirun", 2, None), "launcher"),
                        (("tiny-random-llama", config, "accelerate", 0, None), "num_processes"),
                        ((("model", "tokenizer"), config, "accelerate", 2, None), "model"),
                        (("tiny-random-llama", config, "torchrun", 2, "zero2"), "deepspeed"),
                        (("tiny-random-llama", TrainConfig(lora=True), "accelerate", 2, "zero3"), "deepspeed")]:
        with pytest.raises(InputError) as info:
            check_launch(*args)
        assert info.value.field == field


@pytest.mark.parametrize("extra, message", [
    (["--deepspeed", "zero3"], "need --launcher accelerate"),
    (["--launcher", "torchrun", "--num-processes", "2", "--deepspeed", "zero2"], "need --launcher accelerate"),
    (["--num-processes", "2"], "trains in a group of 1"),  # no launcher: one process cannot be one of two
    pytest.param(["--launcher", "accelerate", "--num-processes", "8", "--deepspeed", "zero3"], "pip install deepspeed",
                 marks=pytest.mark.skipif(importlib.util.find_spec("deepspeed") is not None,
                                          reason="deepspeed is installed here")),
])
def test_cli_refuses_launches_that_cannot_run(tmp_path, capsys, extra, message):
    from harness.cli import main

    pairs = tmp_path / "pairs.jsonl"
    write_jsonl_atomic(pairs, PAIRS)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--model", "tiny-random-llama", "--pairs", str(pairs), "-o", str(tmp_path / "out"), *extra])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and error.startswith("error: ") and message in error, error
    assert not (tmp_path / "out").exists()


def test_paper_config_asks_for_what_the_launcher_accepts(monkeypatch):
    from harness.config import load_config
    from xlpref.data import default_data_dir

    if not (default_data_dir() / "train_prompts" / "random_3000").is_dir():
        pytest.skip(f"shared data not found at {default_data_dir()}")
    monkeypatch.chdir(REPO)  # the config's data paths are relative to the repository
    training = load_config(REPO / "configs/paper/llama3-8b-icr.yaml").training
    assert (training.launcher, training.num_processes, training.deepspeed) == ("accelerate", 8, "zero3")
    assert accelerate_config(training.deepspeed) == REPO / "configs/accelerate/zero3.yaml"
    if importlib.util.find_spec("deepspeed") is None:  # this machine: the recipe names what is missing
        with pytest.raises(InputError, match="pip install deepspeed"):
            check_launch("m", TrainConfig(lora=training.lora), training.launcher, training.num_processes,
                         training.deepspeed)


def test_run_config_training_goes_through_the_launcher(tmp_path, monkeypatch):
    """harness.loop.train_policy hands launcher, process count and DeepSpeed stage to launch_training."""
    import xlpref.distributed
    from harness.config import load_config
    from harness.loop import RunContext, train_policy
    from harness.store import RunStore
    from xlpref.training import TrainResult

    calls = []

    def fake_launch(model, pairs, output_dir, config, **options):
        calls.append((model, len(pairs), config.num_processes, options))
        return TrainResult(Path(output_dir), {}, 3, None, 0.0, world_size=options["num_processes"])

    monkeypatch.setattr(xlpref.distributed, "launch_training", fake_launch)
    config = load_config(REPO / "configs/demo.yaml", overrides={
        "run_dir": str(tmp_path / "run"), "evaluation": {"is_enabled": False},
        "training": {"launcher": "torchrun", "num_processes": 4}})
    ctx = RunContext(config, RunStore(tmp_path / "run"), Console(file=io.StringIO()), prompts={}, instructions={},
                     references={})
    train_policy(ctx, 0, "tiny-random-llama", PAIRS)
    assert calls == [("tiny-random-llama", len(PAIRS), 4,
                      {"launcher": "torchrun", "num_processes": 4, "deepspeed": None})]
    assert ctx.store.is_done("iter_0/train")
