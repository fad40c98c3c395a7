"""Tests of xlpref.training and ``xlpref train`` on tiny random models (budget: under 60 s in all).

Numbers are checked against an independent computation: log-probs from a plain transformers forward
over the chat-templated prompt and response (not trl's code).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from xlpref.errors import InputError
from xlpref.models import build_tiny_model, load_model
from xlpref.recipes import build_english_dpo_model
from xlpref.training import MARKER, TrainConfig, load_pairs_for_training, train_dpo

PAIRS = [
    {"id": f"p{i}", "lang": lang, "prompt": prompt, "chosen": chosen, "rejected": rejected}
    for i, (lang, prompt, chosen, rejected) in enumerate([
        ("en", "Write a short poem about the sea.", "The sea is calm and blue today.", "No."),
        ("en", "Explain why the sky is blue.", "Air scatters blue light more than red light.", "Sky."),
        ("es", "Escribe un poema corto sobre el mar.", "El mar está tranquilo hoy.", "No quiero."),
        ("es", "Explica por qué el cielo es azul.", "El aire dispersa más la luz azul.", "Cielo."),
        ("de", "Schreibe ein kurzes Gedicht über das Meer.", "Das Meer ist heute ruhig.", "Nein."),
        ("fr", "Écris un court poème sur la mer.", "La mer est calme aujourd'hui.", "Non."),
        ("ru", "Напиши короткое стихотворение о море.", "Море сегодня спокойное.", "Нет."),
        ("zh", "写一首关于大海的短诗。", "今天的大海很平静。", "不。"),
    ])
]
FAST = dict(learning_rate=1e-3, batch_size=8, max_length=128)


def response_logps(model, tokenizer, prompt: str, response: str) -> torch.Tensor:
    """Per-token log-probs of the templated response given the templated prompt (plain transformers)."""
    user = [{"role": "user", "content": prompt}]
    prompt_ids = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=True)["input_ids"]
    full_ids = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": response}],
                                             tokenize=True)["input_ids"]
    assert full_ids[: len(prompt_ids)] == prompt_ids
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([full_ids])).logits[0].float()
    logps = torch.log_softmax(logits[:-1], dim=-1).gather(1, torch.tensor(full_ids[1:])[:, None])[:, 0]
    return logps[len(prompt_ids) - 1:]


def margins(policy, reference, tokenizer, pairs) -> list[float]:
    """Implicit reward margin per pair: policy log-ratio chosen-vs-rejected minus the reference's."""
    out = []
    for p in pairs:
        pol = response_logps(policy, tokenizer, p["prompt"], p["chosen"]).sum() - \
            response_logps(policy, tokenizer, p["prompt"], p["rejected"]).sum()
        ref = response_logps(reference, tokenizer, p["prompt"], p["chosen"]).sum() - \
            response_logps(reference, tokenizer, p["prompt"], p["rejected"]).sum()
        out.append(float(pol - ref))
    return out


def max_weight_change(before, after) -> float:
    after_params = dict(after.named_parameters())
    return max((p - after_params[name]).abs().max().item() for name, p in before.named_parameters())


@pytest.fixture
def tiny():
    return build_tiny_model("tiny-random-llama")


def test_first_loss_is_log2_plus_chosen_nll(tmp_path, tiny):
    # At step 0 policy == reference: every DPO margin is 0, so the loss is log 2 + NLL(chosen), the NLL
    # being the mean over all chosen tokens of the batch (how trl's "sft" term pools them).
    model, tokenizer = tiny
    chosen_logps = torch.cat([response_logps(model, tokenizer, p["prompt"], p["chosen"]) for p in PAIRS])
    expected = math.log(2) + 1.0 * float(-chosen_logps.mean())
    result = train_dpo(tiny, PAIRS, tmp_path / "out", TrainConfig(epochs=1, **FAST), progress=False)
    assert result.first_loss == pytest.approx(expected, abs=1e-4)
    assert result.steps == 1


def test_ipo_with_precomputed_reference_and_nll_weight_matches_the_formula(tmp_path):
    # Reference log-probs computed once before training must give the same step-0 loss; IPO at
    # margin 0 is (0 - 1 / (2 beta))^2 = 25 for beta = 0.1, plus the weighted NLL.
    model, tokenizer = build_tiny_model("tiny-random-llama")
    chosen_logps = torch.cat([response_logps(model, tokenizer, p["prompt"], p["chosen"]) for p in PAIRS])
    config = TrainConfig(epochs=1, loss="ipo", nll_weight=0.5, precompute_ref_log_probs=True, **FAST)
    result = train_dpo((model, tokenizer), PAIRS, tmp_path / "ipo", config, progress=False)
    assert result.first_loss == pytest.approx(25.0 + 0.5 * float(-chosen_logps.mean()), abs=1e-4)


def test_speed_settings_keep_losses_and_weights_and_project_only_completions(tmp_path, monkeypatch):
    # trl's defaults (reference pass every step, LM head at every position off CUDA) against ours:
    # the same loss history and weights; with ours the head sees exactly the completion tokens.
    import copy

    import trl.trainer.utils as trl_utils

    rows: list[int] = []
    chunked = trl_utils._ChunkedLogProbFunction

    class Counting(chunked):
        @staticmethod
        def forward(ctx, hidden, *args):
            rows.append(hidden.shape[0])
            return chunked.forward(ctx, hidden, *args)

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", Counting)
    model, tokenizer = build_tiny_model("tiny-random-llama")
    results, weights, seen = {}, {}, {}
    for name, options in {"trl": dict(precompute_ref_log_probs=False, completion_only_head=False),
                          "ours": {}}.items():
        rows.clear()
        trained = copy.deepcopy(model)
        config = TrainConfig(epochs=2, learning_rate=1e-3, batch_size=4, max_length=128, **options)
        results[name] = train_dpo((trained, tokenizer), PAIRS, tmp_path / name, config, progress=False)
        weights[name], seen[name] = trained, list(rows)
    assert trl_utils._use_triton is not None and not trl_utils._use_triton(torch.device("cpu"))  # restored
    losses = {name: [row["loss"] for row in r.metrics["loss_history"]] for name, r in results.items()}
    assert losses["ours"] == pytest.approx(losses["trl"], abs=1e-4)
    assert max_weight_change(weights["trl"], weights["ours"]) < 1e-4
    # the completion tokens of chosen and rejected (end-of-turn included), as trl labels them
    completion_tokens = 0
    for p in PAIRS:
        user = [{"role": "user", "content": p["prompt"]}]
        prompt_ids = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=True)["input_ids"]
        for side in ("chosen", "rejected"):
            full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": p[side]}],
                                                 tokenize=True)["input_ids"]
            completion_tokens += len(full) - len(prompt_ids)
    assert sum(seen["ours"]) == 3 * completion_tokens  # the reference once before training, then two epochs
    assert sum(seen["trl"]) > 4 * 2 * completion_tokens  # every position, policy and reference at each step


def test_full_training_moves_weights_and_widens_the_margin(tmp_path, tiny):
    import copy

    reference = copy.deepcopy(tiny[0])
    config = TrainConfig(epochs=4, **FAST)
    result = train_dpo(tiny, PAIRS, tmp_path / "out", config, progress=False)
    trained, tokenizer = load_model(str(tmp_path / "out"), device="cpu")
    assert max_weight_change(reference, trained) > 1e-3
    widened = margins(trained, reference, tokenizer, PAIRS)
    assert sum(widened) / len(widened) > 0.5, widened
    assert sum(m > 0 for m in widened) >= 7, widened
    losses = [row["loss"] for row in result.metrics["loss_history"]]
    assert losses[-1] < losses[0]


def test_lora_is_merged_and_the_folder_loads_and_generates(tmp_path):
    reference, tokenizer = build_tiny_model("tiny-random-llama")
    config = TrainConfig(epochs=2, lora=True, lora_r=4, lora_alpha=8, **{**FAST, "learning_rate": 5e-3})
    out = tmp_path / "lora"
    train_dpo("tiny-random-llama", PAIRS, out, config, progress=False)
    assert not (out / "adapter_config.json").exists() and (out / "model.safetensors").exists()
    assert (out / "chat_template.jinja").exists() or "chat_template" in (out / "tokenizer_config.json").read_text()
    model, tokenizer = load_model(str(out), device="cpu")
    assert max_weight_change(reference, model) > 1e-4
    assert sum(margins(model, reference, tokenizer, PAIRS)) > 0
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    generated = model.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] > prompt["input_ids"].shape[1]


def test_same_seed_gives_the_same_weights_and_a_second_run_is_skipped(tmp_path):
    config = TrainConfig(epochs=1, batch_size=4, seed=7, learning_rate=1e-3, max_length=128)
    first = train_dpo("tiny-random-llama", PAIRS, tmp_path / "a", config, progress=False)
    train_dpo("tiny-random-llama", PAIRS, tmp_path / "b", config, progress=False)
    a, _ = load_model(str(tmp_path / "a"), device="cpu")
    b, _ = load_model(str(tmp_path / "b"), device="cpu")
    assert max_weight_change(a, b) < 1e-6
    again = train_dpo("tiny-random-llama", PAIRS, tmp_path / "a", config, progress=False)
    assert again.was_skipped and again.first_loss == first.first_loss and again.steps == first.steps == 2
    meta = json.loads((tmp_path / "a" / MARKER).read_text())
    assert meta["pairs_per_language"] == {"en": 2, "es": 2, "de": 1, "fr": 1, "ru": 1, "zh": 1}
    assert not (tmp_path / "a.tmp").exists()
    with pytest.raises(InputError, match="other pairs"):
        train_dpo("tiny-random-llama", PAIRS[:4], tmp_path / "a", config, progress=False)


def test_kto_runs_on_unpaired_examples(tmp_path):
    config = TrainConfig(loss="kto", nll_weight=0.0, epochs=1, batch_size=8, learning_rate=1e-3, max_length=128)
    result = train_dpo("tiny-random-llama", PAIRS, tmp_path / "kto", config, progress=False)
    # 16 unpaired examples, batch 8; at step 0 policy == reference, so every example's loss is
    # 1 - sigmoid(0) = 0.5 (trl's KTO, its KL estimate being 0 too)
    assert result.steps == 2 and result.first_loss == pytest.approx(0.5, abs=1e-6)


@pytest.mark.parametrize("changes, field", [
    (dict(loss="simpo"), "loss"), (dict(beta=0), "beta"), (dict(batch_size=0), "batch_size"),
    (dict(loss="kto"), "nll_weight"), (dict(max_prompt_length=1024), "max_prompt_length"),
    (dict(num_processes=0), "num_processes"),
])
def test_bad_config_names_the_field(changes, field):
    with pytest.raises(InputError) as info:
        TrainConfig(**changes).validate()
    assert info.value.field == field


def test_bad_pairs_file_names_line_and_field(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(PAIRS[0]) + "\n" + json.dumps({**PAIRS[1], "chosen": ""}) + "\n", encoding="utf-8")
    with pytest.raises(InputError) as info:
        load_pairs_for_training(path)
    assert (info.value.line, info.value.field) == (2, "chosen")


def test_english_dpo_model_is_cached(tmp_path):
    pairs = tmp_path / "en.jsonl"
    pairs.write_text("".join(json.dumps({k: p[k] for k in ("prompt", "chosen", "rejected")}) + "\n"
                             for p in PAIRS[:4]), encoding="utf-8")
    config = TrainConfig(epochs=1, lora=True, **FAST)
    out = build_english_dpo_model("tiny-random-llama", pairs, tmp_path / "en-dpo", config, progress=False)
    stamp = (out / MARKER).stat().st_mtime_ns
    assert build_english_dpo_model("tiny-random-llama", pairs, out, config, progress=False) == out
    assert (out / MARKER).stat().st_mtime_ns == stamp  # reused, not retrained
    config.epochs = 2  # other settings: the cache is rebuilt
    build_english_dpo_model("tiny-random-llama", pairs, out, config, progress=False)
    assert json.loads((out / MARKER).read_text())["config"]["epochs"] == 2


def test_cli_round_trip_and_bad_pairs_exit_2(tmp_path, capsys):
    from cli_helpers import run_cli
    from harness.cli import main

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in PAIRS), encoding="utf-8")
    out = tmp_path / "model"
    args = ["train", "--model", "tiny-random-llama", "--pairs", str(pairs), "-o", str(out), "--epochs", "1",
            "--batch-size", "8", "--lr", "1e-3", "--max-length", "128", "--beta", "0.2", "--nll-weight", "0.5"]
    code, out_text, err = run_cli(args, capsys)
    assert code == 0, out_text + err
    assert str(out) in out_text
    meta = json.loads((out / MARKER).read_text())
    assert meta["config"]["beta"] == 0.2 and meta["config"]["nll_weight"] == 0.5 and meta["steps"] == 1
    load_model(str(out), device="cpu")

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "c"}\n', encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--model", "tiny-random-llama", "--pairs", str(bad), "-o", str(tmp_path / "x")])
    assert exit_info.value.code == 2
