"""The run config's training block is the training stage's config, and plug-in names come from the registry."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
import yaml

from harness.config import TrainingConfig, load_config
from xlpref.errors import InputError
from xlpref.registry import names
from xlpref.training import TrainConfig

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "fixtures" / "tiny_run.yaml"


def write_config(tmp_path: Path, **blocks: dict) -> Path:
    raw = yaml.safe_load(TINY.read_text())
    for key, value in blocks.items():
        raw[key] = {**raw.get(key, {}), **value}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_the_run_training_block_has_every_train_config_field_and_default():
    run_block = TrainingConfig()
    assert set(TrainConfig.model_fields) <= set(TrainingConfig.model_fields)
    assert run_block.settings() == TrainConfig().settings()
    assert run_block.max_length == 1024


def test_xlpref_train_flags_default_to_the_train_config_defaults():
    from harness.commands.train_cmd import train

    defaults = TrainConfig()
    flags = {param.name: param.default for param in train.params if isinstance(param, click.Option)}
    for name in ("loss", "beta", "nll_weight", "lora", "lora_r", "lora_alpha", "learning_rate", "epochs", "batch_size",
                 "grad_accum", "max_length", "max_prompt_length", "precompute_ref_log_probs", "completion_only_head",
                 "num_processes"):
        assert flags[name] == getattr(defaults, name), name


def test_every_training_field_is_settable_from_yaml_and_reaches_the_iteration_config(tmp_path):
    config = load_config(write_config(tmp_path, training={"warmup_ratio": 0.1, "lr_scheduler_type": "cosine",
                                                          "lora_dropout": 0.05, "max_prompt_length": 32}))
    iteration = config.training.for_iteration(seed=config.seed + 1)
    assert type(iteration) is TrainConfig
    assert (iteration.warmup_ratio, iteration.lr_scheduler_type, iteration.lora_dropout) == (0.1, "cosine", 0.05)
    assert (iteration.max_prompt_length, iteration.max_length, iteration.seed) == (32, 96, 8)


@pytest.mark.parametrize("blocks, field, message", [
    ({"training": {"beta": 0}}, "training.beta", "a positive number"),
    ({"training": {"loss": "simpo"}}, "training.loss", "one of ['sigmoid', 'ipo', 'kto']"),
    ({"training": {"lr_scheduler_type": "step"}}, "training.lr_scheduler_type", "one of"),
    ({"training": {"seed": 3}}, "training.seed", "top-level seed"),
    ({"training": {"launcher": "slurm"}}, "training.launcher", "expected one of ['none', 'accelerate', 'torchrun']"),
    ({"sampling": {"backend": "tgi"}}, "sampling.backend", f"expected one of {names('sampler')}"),
    ({"annotator": {"name": "vibes"}}, "annotator.name", f"expected one of {names('annotator')}"),
    ({"annotator": {"reward": "length"}}, "annotator.reward", f"expected one of {names('reward')}"),
    ({"evaluation": {"backend": "tgi"}}, "evaluation.backend", f"expected one of {names('sampler')}"),
])
def test_a_bad_stage_setting_names_its_field_and_the_names_that_exist(tmp_path, blocks, field, message):
    with pytest.raises(InputError) as info:
        load_config(write_config(tmp_path, **blocks))
    assert info.value.field == field and message in str(info.value)


def test_the_manifest_leaves_out_the_training_seed_the_run_does_not_use(tmp_path):
    config = load_config(write_config(tmp_path))
    assert "seed" not in config.resolved()["training"] and config.resolved()["seed"] == 7
