"""GPU code paths that a CPU can check: bf16 scoring precision, end-of-turn stop tokens, memory released
between stages, gradient checkpointing and the refusal of training that cannot fit.

Each test runs on CPU with a tiny random model; docs/scaling.md says which parts have run on a GPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import xlpref.logprobs as logprobs
from xlpref.models import build_tiny_model


def _bf16_model_with_large_logits(seed: int = 3):
    """The tiny Llama in bf16 with its (tied) output weights scaled so that logits reach about +-40,
    where bf16 keeps steps of 0.25: a logit rounded to bf16 is off by up to 0.125 nats."""
    model, tokenizer = build_tiny_model("tiny-random-llama", seed=seed)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(150.0)
    return model.to(torch.bfloat16), tokenizer


def _score_capturing_states(model, items, monkeypatch, **options):
    """Per-token log-probs from the scorer, with the hidden states and targets its projection saw."""
    seen = []
    original = logprobs._TokenLogprobs.__call__

    def recording(self, hidden, targets):
        values = original(self, hidden, targets)
        seen.append((hidden.clone(), targets.clone(), values.clone()))
        return values

    monkeypatch.setattr(logprobs._TokenLogprobs, "__call__", recording)
    logprobs.response_logprobs(model, items, **options)
    monkeypatch.setattr(logprobs._TokenLogprobs, "__call__", original)
    return seen


@torch.no_grad()
def _float64_logprobs(model, hidden, targets):
    weight = model.get_output_embeddings().weight.double()  # the same bf16 weights, exactly widened
    logits = hidden.double() @ weight.t()
    return torch.log_softmax(logits, dim=-1).gather(1, targets[:, None]).squeeze(1)


def _items(tokenizer):
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Explain why the sky is blue."}],
                                           add_generation_prompt=True)["input_ids"]
    response = tokenizer("The sea is calm and blue today. Das Meer ist heute ruhig.", add_special_tokens=False)
    return [(list(prompt), response["input_ids"]), (list(prompt), response["input_ids"][:7])]


def test_bf16_weights_are_scored_in_fp32_within_1e3_of_float64_per_token(monkeypatch):
    model, tokenizer = _bf16_model_with_large_logits()
    seen = _score_capturing_states(model, _items(tokenizer), monkeypatch)
    assert seen and all(hidden.dtype == torch.bfloat16 for hidden, _, _ in seen)
    for hidden, targets, values in seen:
        exact = _float64_logprobs(model, hidden, targets)
        assert exact.abs().max() > 1.0  # large logits: rounding them would show
        assert (values.double() - exact).abs().max() < 1e-3


@torch.no_grad()  # the scorer's states are inference tensors
def test_bf16_authors_rounding_option_rounds_logits_to_bf16_first(monkeypatch):
    model, tokenizer = _bf16_model_with_large_logits()
    seen = _score_capturing_states(model, _items(tokenizer), monkeypatch, is_rounded_to_weight_dtype=True)
    errors = []
    for hidden, targets, values in seen:
        weight = model.get_output_embeddings().weight
        rounded = (hidden.float() @ weight.float().t()).to(torch.bfloat16).double()  # the model's own bf16 logits
        authors = torch.log_softmax(rounded, dim=-1).gather(1, targets[:, None]).squeeze(1)
        assert (values.double() - authors).abs().max() < 1e-3
        errors.append((values.double() - _float64_logprobs(model, hidden, targets)).abs().max())
    assert max(errors) > 1e-2  # what fp32 scoring saves: bf16-rounded logits are this far from float64


def test_bf16_tiles_stay_within_the_memory_bound(monkeypatch):
    model, tokenizer = _bf16_model_with_large_logits()
    monkeypatch.setattr(logprobs, "LOGITS_TILE_ELEMENTS", 32 * 64)  # one row's tile: 64 columns
    widths = []
    original = logprobs._TokenLogprobs.project

    def recording(self, hidden, start, stop, out):
        widths.append((hidden.shape[0], stop - start))
        assert hidden.dtype == torch.float32 and out.dtype == torch.float32
        return original(self, hidden, start, stop, out)

    monkeypatch.setattr(logprobs._TokenLogprobs, "project", recording)
    items = _items(tokenizer)
    bounded = logprobs.response_logprobs(model, items)
    hidden_size = model.config.hidden_size
    assert widths and all(rows * width <= 32 * 64 and width * hidden_size <= 32 * 64 for rows, width in widths)
    monkeypatch.setattr(logprobs, "LOGITS_TILE_ELEMENTS", 1 << 21)
    assert bounded == pytest.approx(logprobs.response_logprobs(model, items), abs=1e-4)


# -- stop tokens -------------------------------------------------------------------------------------

def _model_closing_turns_with_a_token_other_than_eos():
    """The tiny Llama whose eos is ``</s>`` (its generation config lists only that) while its chat template
    closes turns with ``<end_of_turn>``, and whose output layer makes ``<end_of_turn>`` the likeliest token,
    as a chat model ends its turn (Llama-3 SFT: ``<|eot_id|>`` vs ``<|end_of_text|>``)."""
    model, tokenizer = build_tiny_model("tiny-random-llama")
    tokenizer.eos_token = "</s>"
    model.config.eos_token_id = model.generation_config.eos_token_id = tokenizer.eos_token_id
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    tied = model.get_output_embeddings()
    head = torch.nn.Linear(tied.in_features, tied.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(tied.weight)
        head.bias.zero_()
        head.bias[end_of_turn] = 50.0
    model.config.tie_word_embeddings = False
    model.lm_head = head
    return model, tokenizer, end_of_turn


def test_end_of_turn_token_is_found_from_the_chat_template():
    from xlpref.models import PLAIN_CHAT_TEMPLATE, build_tiny_tokenizer, end_of_turn_token_id

    tokenizer = build_tiny_tokenizer()
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    tokenizer.eos_token = "</s>"
    assert end_of_turn_token_id(tokenizer) == end_of_turn != tokenizer.eos_token_id
    tokenizer.chat_template = PLAIN_CHAT_TEMPLATE  # closes turns with eos
    assert end_of_turn_token_id(tokenizer) == tokenizer.eos_token_id
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] + '\\n' }}{% endfor %}"  # a newline: not a token of its own
    assert end_of_turn_token_id(tokenizer) == tokenizer.eos_token_id


def test_hf_sampling_stops_at_the_stop_token_of_the_template_not_at_max_new_tokens(monkeypatch):
    from xlpref.sampling import SampleRequest, SamplingParams, make_sampler

    model, tokenizer, end_of_turn = _model_closing_turns_with_a_token_other_than_eos()
    lengths = []
    generate = model.generate

    def recording(**kwargs):
        output = generate(**kwargs)
        lengths.append(output.shape[1] - kwargs["input_ids"].shape[1])
        return output

    monkeypatch.setattr(model, "generate", recording)
    sampler = make_sampler("hf", (model, tokenizer))
    records = sampler.sample([SampleRequest("a", "en", "Write a poem about the sea.", "")],
                             SamplingParams(n=2, max_new_tokens=16), progress=False)
    assert lengths == [1]  # generation ended at the end-of-turn token, not after 16 tokens
    assert [(r["n_response_tokens"], r["finish_reason"], r["response"]) for r in records] == [(0, "stop", "")] * 2


def test_evaluation_outputs_stop_at_the_stop_token_of_the_template(tmp_path):
    from harness.evaluation.model_outputs import generate_outputs
    from xlpref.data import MINI_DIR, load_instructions
    from xlpref.jsonio import read_jsonl
    from xlpref.sampling import SamplingParams

    model, tokenizer, _ = _model_closing_turns_with_a_token_other_than_eos()
    instructions = {lang: rows[:2] for lang, rows in
                    load_instructions(MINI_DIR / "x_alpacaeval" / "instructions", ["en"]).items()}
    generate_outputs((model, tokenizer), instructions, tmp_path, generator="tiny", progress=False,
                     params=SamplingParams(temperature=0.6, top_p=0.9, max_new_tokens=32, seed=1))
    records = read_jsonl(tmp_path / "generation.jsonl")
    assert [(r["n_response_tokens"], r["finish_reason"]) for r in records] == [(0, "stop")] * 2


def test_vllm_requests_carry_the_stop_token_of_the_template():
    from types import SimpleNamespace

    from xlpref.sampling import SampleRequest, SamplingParams
    from xlpref.sampling_vllm import VLLMSampler

    _, tokenizer, end_of_turn = _model_closing_turns_with_a_token_other_than_eos()
    sampler = object.__new__(VLLMSampler)  # the request parameters only: no engine on this machine's tiny model
    sampler.tokenizer, sampler._vllm = tokenizer, SimpleNamespace(SamplingParams=dict)
    sampler.stop_token_ids, sampler.is_seeded_per_request = VLLMSampler.stop_tokens_of(tokenizer), True
    request = sampler._vllm_params(SamplingParams(), [], SampleRequest("a", "en", "Hi", ""))
    assert end_of_turn in request["stop_token_ids"] and tokenizer.eos_token_id in request["stop_token_ids"]


# -- memory returned between stages -------------------------------------------------------------------

def test_release_frees_every_stage_model_and_memory_does_not_grow_across_iterations(tmp_path, monkeypatch):
    import gc
    import weakref

    import psutil

    import harness.loop as loop
    import xlpref.models as models
    from harness.config import load_config

    loaded = []  # (stage that loaded it, weak reference to the model)
    load_model = models.load_model

    def recording_load_model(*args, **kwargs):
        model, tokenizer = load_model(*args, **kwargs)
        loaded.append(weakref.ref(model))
        return model, tokenizer

    monkeypatch.setattr(models, "load_model", recording_load_model)
    alive_after_stage, rss = [], []
    stage_done = loop.RunContext.stage_done

    def checking_stage_done(self, name, seconds, **summary):
        gc.collect()
        alive_after_stage.append((name, sum(ref() is not None for ref in loaded)))
        rss.append((name, psutil.Process().memory_info().rss))
        return stage_done(self, name, seconds, **summary)

    monkeypatch.setattr(loop.RunContext, "stage_done", checking_stage_done)
    released = []
    release = loop._release
    monkeypatch.setattr(loop, "_release", lambda: (released.append(True), release()))
    config = load_config(Path(__file__).parent / "fixtures" / "tiny_run.yaml", overrides={"run_dir": str(tmp_path / "run"), "iterations": 3,
                                              "data": {"prompt_limit": 2, "eval_limit": 2},
                                              "sampling": {"n": 2, "max_new_tokens": 6},
                                              "evaluation": {"max_new_tokens": 6, "n_bootstrap": 100}})
    loop.run_icr(config, console=None)
    assert len(loaded) >= 8 and released  # policy, reference, judge, sampler and trainer models were loaded
    assert alive_after_stage and all(alive == 0 for _, alive in alive_after_stage), alive_after_stage
    trained = [value for name, value in rss if name.endswith("/train")]
    # The same point of iterations 1 and 2: nothing of iteration 1's models stays (allocator noise allowed).
    assert trained[2] - trained[1] < 64 * 2**20, [(name, value >> 20) for name, value in rss]


# -- training that fits an 8B model ------------------------------------------------------------------

PAIRS = [
    {"lang": "en", "prompt": "Write a short poem about the sea.", "chosen": "The sea is calm and blue today.",
     "rejected": "No."},
    {"lang": "es", "prompt": "Explica por qué el cielo es azul.", "chosen": "El aire dispersa más la luz azul.",
     "rejected": "Cielo."},
    {"lang": "ru", "prompt": "Напиши короткое стихотворение о море.", "chosen": "Море сегодня спокойное.",
     "rejected": "Нет."},
    {"lang": "zh", "prompt": "写一首关于大海的短诗。", "chosen": "今天的大海很平静。", "rejected": "不。"},
]


def test_gradient_checkpointing_defaults_on_with_cuda_and_off_on_cpu():
    from xlpref.training import TrainConfig, _trl_args

    assert TrainConfig().gradient_checkpointing is None
    assert TrainConfig().uses_gradient_checkpointing(use_cuda=True) is True
    assert TrainConfig().uses_gradient_checkpointing(use_cuda=False) is False
    assert TrainConfig(gradient_checkpointing=False).uses_gradient_checkpointing(use_cuda=True) is False
    args = _trl_args(TrainConfig(gradient_checkpointing=True), "/tmp/unused", use_cuda=False, progress=False)
    assert args.gradient_checkpointing is True and args.gradient_checkpointing_kwargs == {"use_reentrant": False}


def test_gradient_checkpointing_from_the_cli_trains_the_same_model_on_cpu(tmp_path):
    import json

    from click.testing import CliRunner

    from harness.cli import cli
    from xlpref.models import load_model
    from xlpref.training import MARKER

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in PAIRS), encoding="utf-8")
    common = ["train", "--model", "tiny-random-llama", "--pairs", str(pairs), "--epochs", "2", "--batch-size", "2",
              "--lr", "1e-3", "--max-length", "64"]
    for flag, out in (("--gradient-checkpointing", "on"), ("--no-gradient-checkpointing", "off")):
        result = CliRunner().invoke(cli, [*common, flag, "-o", str(tmp_path / out)], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    on, off = (json.loads((tmp_path / name / MARKER).read_text()) for name in ("on", "off"))
    assert on["config"]["gradient_checkpointing"] is True and off["config"]["gradient_checkpointing"] is False
    assert on["first_loss"] == pytest.approx(off["first_loss"], rel=1e-6)
    trained_on, _ = load_model(str(tmp_path / "on"), device="cpu")
    trained_off, _ = load_model(str(tmp_path / "off"), device="cpu")
    before, _ = build_tiny_model("tiny-random-llama")
    moved = max((a - b).abs().max().item() for a, b in zip(before.parameters(), trained_off.parameters()))
    apart = max((a - b).abs().max().item() for a, b in zip(trained_on.parameters(), trained_off.parameters()))
    assert moved > 1e-4 and apart < 1e-5  # recomputed activations, the same gradients


def test_full_fine_tuning_above_the_limit_is_refused_naming_zero_and_lora(tmp_path, monkeypatch):
    import xlpref.training as training
    from xlpref.distributed import launch_training
    from xlpref.errors import InputError

    n = training.count_parameters("tiny-random-llama")
    assert n == sum(p.numel() for p in build_tiny_model("tiny-random-llama")[0].parameters())
    monkeypatch.setattr(training, "FULL_FINE_TUNING_MAX_PARAMETERS", n - 1)
    with pytest.raises(InputError, match=r"--deepspeed zero3.*--lora"):
        training.train_dpo("tiny-random-llama", PAIRS, tmp_path / "out", training.TrainConfig(), progress=False)
    with pytest.raises(InputError, match=r"without ZeRO or LoRA"):  # before any process starts
        launch_training("tiny-random-llama", PAIRS, tmp_path / "out2", training.TrainConfig(), num_processes=2)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()
    training.check_full_fine_tuning("tiny-random-llama", training.TrainConfig(lora=True), is_deepspeed=False)
    training.check_full_fine_tuning("tiny-random-llama", training.TrainConfig(), is_deepspeed=True)


def test_training_dtypes_bf16_under_deepspeed_and_lora_and_the_reference_bf16_on_cuda():
    from xlpref.training import TrainConfig, training_dtypes

    full, lora = TrainConfig(), TrainConfig(lora=True)
    assert training_dtypes(full, use_cuda=False, is_deepspeed=True) == (torch.float32, torch.float32)
    assert training_dtypes(full, use_cuda=True, is_deepspeed=True) == (torch.bfloat16, torch.bfloat16)
    assert training_dtypes(lora, use_cuda=True, is_deepspeed=False) == (torch.bfloat16, torch.bfloat16)
    assert training_dtypes(full, use_cuda=True, is_deepspeed=False) == (torch.float32, torch.bfloat16)


def test_trl_config_comes_before_the_model_and_the_reference_is_loaded_not_copied(tmp_path, monkeypatch):
    import types

    import xlpref.training as training

    events = []
    trl_args, load = training._trl_args, training._load
    monkeypatch.setattr(training, "_trl_args", lambda *a, **k: (events.append("trl config"), trl_args(*a, **k))[1])
    monkeypatch.setattr(training, "_load", lambda *a, **k: (events.append("load"), load(*a, **k))[1])

    def no_copy(obj, *args):
        raise AssertionError(f"the reference must be loaded, not copied from the policy ({type(obj).__name__})")

    monkeypatch.setattr(training, "copy", types.SimpleNamespace(deepcopy=no_copy))
    config = training.TrainConfig(precompute_ref_log_probs=False, batch_size=4, max_length=64, learning_rate=1e-3)
    result = training.train_dpo("tiny-random-llama", PAIRS, tmp_path / "out", config, progress=False)
    assert events == ["trl config", "load", "load"] and result.steps == 1


# -- speed defaults for GPUs ---------------------------------------------------------------------------

def _offline_vllm_sampler(is_seeded_per_request: bool = True):
    """A VLLMSampler around a stand-in engine that records each generate call (no vLLM engine here)."""
    from types import SimpleNamespace

    from xlpref.models import build_tiny_tokenizer
    from xlpref.sampling_vllm import VLLMSampler

    calls = []

    def generate(prompts, params, use_tqdm):
        calls.append(params)
        completion = dict(token_ids=[7, 8], text="ok", finish_reason="length", stop_reason=None)
        return [SimpleNamespace(outputs=[SimpleNamespace(index=k, **completion) for k in range(p["n"])])
                for p in params]

    sampler = object.__new__(VLLMSampler)
    sampler.model_name, sampler.tokenizer = "stand-in", build_tiny_tokenizer()
    sampler.stop_token_ids, sampler.is_seeded_per_request = [5], is_seeded_per_request
    sampler._vllm, sampler.llm = SimpleNamespace(SamplingParams=dict), SimpleNamespace(generate=generate)
    return sampler, calls


def test_gpu_defaults_vllm_gets_at_least_256_prompts_per_generate_call():
    from xlpref.sampling import SampleRequest, SamplingParams

    requests = [SampleRequest(i, "en", f"Prompt number {i}.", "") for i in range(300)]
    sampler, calls = _offline_vllm_sampler()
    records = sampler.sample(requests, SamplingParams(n=2, batch_size=8, max_new_tokens=4), progress=False)
    assert [len(call) for call in calls] == [256, 44] and len(records) == 600
    assert len({call["seed"] for batch in calls for call in batch}) == 300  # one seed per request


def test_gpu_defaults_vllm_without_per_request_seeds_sends_no_seed():
    from xlpref.sampling import SampleRequest, SamplingParams

    sampler, calls = _offline_vllm_sampler(is_seeded_per_request=False)
    sampler.sample([SampleRequest("a", "en", "Hi", "")], SamplingParams(), progress=False)
    assert "seed" not in calls[0][0]


def test_gpu_defaults_lm_eval_batch_size_is_auto_on_cuda_and_1_on_cpu():
    from harness.evaluation.capabilities import lm_eval_batch_size
    from xlpref.errors import InputError

    assert lm_eval_batch_size(None, "cuda") == "auto" and lm_eval_batch_size(None, "cuda:1") == "auto"
    assert lm_eval_batch_size(None, "cpu") == 1 and lm_eval_batch_size(8, "cuda") == 8
    with pytest.raises(InputError, match="'auto'"):
        lm_eval_batch_size(0, "cpu")


def test_gpu_defaults_evaluation_outputs_use_the_sampling_engine_settings(tmp_path):
    from types import SimpleNamespace

    from harness.config import load_config
    from harness.loop import _vllm_options

    config = load_config(Path(__file__).parent / "fixtures" / "tiny_run.yaml",
                         overrides={"run_dir": str(tmp_path), "sampling": {"backend": "vllm", "tensor_parallel_size": 2,
                                                                          "is_seeded_per_request": False}})
    ctx = SimpleNamespace(config=config)
    assert _vllm_options(ctx, "vllm", 9) == {"tensor_parallel_size": 2,
                                             "is_seeded_per_request": False, "seed": 9}
    assert _vllm_options(ctx, "hf", 9) == {}
