"""The hf sampler, prompt loading, resumable sampling into a record log, and ``xlpref sample``."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from cli_helpers import run_cli
from harness.cli import main
from xlpref.records import RecordLog
from xlpref.errors import InputError
from xlpref.jsonio import read_jsonl
from xlpref.models import PLAIN_CHAT_TEMPLATE, build_tiny_model, build_tiny_tokenizer
from xlpref.sampling import (
    RECORD_FIELDS,
    SAMPLE_KEY,
    HFSampler,
    SampleRequest,
    SamplingParams,
    chat_prompt_ids,
    cut_at_stop,
    make_sampler,
    sample_to_log,
    stop_strings,
)
from xlpref.sampling_prompts import requests_from_prompts

PROMPTS = {
    "en": ["Write a haiku about the sea.",
           "Explain why the sky is blue in simple words for a child, with one everyday example.",
           "List three fruits."],
    "es": ["Escribe un haiku sobre el mar.",
           "Explica por qué el cielo es azul con palabras sencillas para un niño, con un ejemplo cotidiano.",
           "Enumera tres frutas."],
    "ru": ["Напиши хайку о море.", "Объясни ребёнку простыми словами, почему небо голубое, с одним примером.",
           "Назови три фрукта."],
}
IDS = ["a1", "b2", "c3"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sampler(one_torch_thread) -> HFSampler:
    model, tokenizer = build_tiny_model("tiny-random-llama")
    # The default init (std 0.02) gives nearly flat logits, so greedy decoding repeats one special token
    # whatever the prompt; larger weights make outputs depend on the prompt, which the tests need.
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() > 1:
                param.normal_(0, 0.5 if "embed" in name else 0.2)
    return make_sampler("hf", (model, tokenizer))


@pytest.fixture()
def prompts_dir(tmp_path):
    folder = tmp_path / "prompts"
    folder.mkdir()
    for lang, texts in PROMPTS.items():
        lines = [json.dumps({"instruction": t, "instruction_id": i}, ensure_ascii=False) for i, t in zip(IDS, texts)]
        (folder / f"{lang}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def test_records_have_contract_fields_and_n_samples_per_prompt(sampler, prompts_dir):
    requests = requests_from_prompts(prompts_dir, ["es", "ru"])
    records = sampler.sample(requests, SamplingParams(n=3, max_new_tokens=6, batch_size=4), progress=False)
    assert len(records) == 2 * 3 * 3
    for record in records:
        assert set(RECORD_FIELDS) <= set(record)
        assert record["prompt"] == PROMPTS[record["lang"]][IDS.index(record["id"])]
        assert record["prompt_en"] == PROMPTS["en"][IDS.index(record["id"])]
        assert (record["backend"], record["seed"], record["temperature"]) == ("hf", 42, 0.9)
        assert 1 <= record["n_response_tokens"] <= 6 and record["finish_reason"] in ("stop", "length")
        assert record["is_translation_task"] is False  # meta copied from the training prompts
    # Request order (langs as given, then prompt order), samples 0..n-1 each.
    assert [(r["lang"], r["id"], r["sample_index"]) for r in records] == [
        (lang, i, k) for lang in ("es", "ru") for i in IDS for k in range(3)]
    assert len({r["response"] for r in records}) > 9  # samples differ


def test_same_seed_same_samples_other_seed_other_samples(sampler, prompts_dir):
    requests = requests_from_prompts(prompts_dir, ["en"])
    first = sampler.sample(requests, SamplingParams(n=2, max_new_tokens=8, seed=1), progress=False)
    again = sampler.sample(requests, SamplingParams(n=2, max_new_tokens=8, seed=1), progress=False)
    other = sampler.sample(requests, SamplingParams(n=2, max_new_tokens=8, seed=2), progress=False)
    assert first == again
    assert [r["response"] for r in first] != [r["response"] for r in other]


def test_greedy_output_does_not_depend_on_batching_or_left_padding(sampler, prompts_dir):
    requests = requests_from_prompts(prompts_dir, ["en", "es", "ru"])
    lengths = {len(chat_prompt_ids(sampler.tokenizer, r.prompt)) for r in requests}
    assert len(lengths) > 3  # prompts of different lengths: batches of 4 are left-padded
    alone = sampler.sample(requests, SamplingParams(n=1, temperature=0, max_new_tokens=10, batch_size=1),
                           progress=False)
    batched = sampler.sample(requests, SamplingParams(n=2, temperature=0, max_new_tokens=10, batch_size=4),
                             progress=False)
    assert [r["response"] for r in alone] == [r["response"] for r in batched if r["sample_index"] == 0]
    assert [r["response"] for r in batched if r["sample_index"] == 0] == \
        [r["response"] for r in batched if r["sample_index"] == 1]  # greedy: both samples equal
    assert len({r["response"] for r in alone}) > 4  # outputs depend on the prompt


class Interrupted(Exception):
    pass


def test_resumed_run_equals_uninterrupted_run(sampler, prompts_dir, tmp_path):
    requests = requests_from_prompts(prompts_dir, ["en", "es", "ru"])
    params = SamplingParams(n=2, max_new_tokens=8, batch_size=2)
    reference = sample_to_log(sampler, requests, params, RecordLog(tmp_path / "ref.jsonl", SAMPLE_KEY), progress=False)

    log = RecordLog(tmp_path / "out.jsonl", SAMPLE_KEY)
    append = log.append

    def append_then_crash(records):
        append(records)
        raise Interrupted

    log.append = append_then_crash
    with pytest.raises(Interrupted):
        sample_to_log(sampler, requests, params, log, progress=False)
    partial = tmp_path / "out.partial.jsonl"
    lines = partial.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2 * 2  # one batch of two prompts, two samples each
    # A crash in the middle of the next append: one full record and a torn line. The first batch is then
    # only partly done and must be generated again, giving the same record.
    partial.write_text(lines[0] + "\n" + lines[1][:20], encoding="utf-8")

    resumed = sample_to_log(sampler, requests, params, RecordLog(tmp_path / "out.jsonl", SAMPLE_KEY), progress=False)
    assert resumed == reference
    assert read_jsonl(tmp_path / "out.jsonl") == reference
    assert not partial.exists()


def test_resume_refuses_samples_made_with_other_settings(sampler, prompts_dir, tmp_path):
    requests = requests_from_prompts(prompts_dir, ["en"])
    log = RecordLog(tmp_path / "s.jsonl", SAMPLE_KEY)
    log.append(sampler.sample(requests[:1], SamplingParams(max_new_tokens=4, seed=1), progress=False))
    with pytest.raises(InputError, match="seed=1"):
        sample_to_log(sampler, requests, SamplingParams(max_new_tokens=4, seed=2), log, progress=False)


def test_stop_string_cuts_the_response(sampler, prompts_dir):
    requests = requests_from_prompts(prompts_dir, ["en"])[:1]
    params = SamplingParams(n=1, max_new_tokens=16, batch_size=1)
    full = sampler.sample(requests, params, progress=False)[0]["response"]
    stop = next(full[i:i + 2] for i in range(4, len(full) - 1)
                if full[i:i + 2].isprintable() and not set(full[i:i + 2]) & {" ", "\ufffd"})
    cut = sampler.sample(requests, SamplingParams(n=1, max_new_tokens=16, batch_size=1, stop=(stop,)),
                         progress=False)[0]
    assert cut["response"] == full[: full.index(stop)].strip()
    assert cut["finish_reason"] == "stop" and cut["n_response_tokens"] < 16


def test_end_of_turn_token_ends_the_response_and_is_not_counted(sampler, prompts_dir):
    requests = requests_from_prompts(prompts_dir, ["en"])[:1]
    params = SamplingParams(n=1, temperature=0, max_new_tokens=12)
    model, tokenizer = sampler.model, sampler.tokenizer
    tokens = model.generate(**tokenizer([tokenizer.apply_chat_template(
        [{"role": "user", "content": requests[0].prompt}], tokenize=False, add_generation_prompt=True)],
        add_special_tokens=False, return_tensors="pt"), do_sample=False, max_new_tokens=12)[0, -12:].tolist()
    position = next(i for i in range(3, 12) if tokens[i] not in tokens[:i])
    generation_config = copy.deepcopy(model.generation_config)
    try:
        # Pretend the token greedy decoding emits at `position` is the model's end of turn.
        model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokens[position]]
        record = HFSampler((model, tokenizer)).sample(requests, params, progress=False)[0]
    finally:
        model.generation_config = generation_config
    assert record["n_response_tokens"] == position and record["finish_reason"] == "stop"
    assert record["response"] == tokenizer.decode(tokens[:position], skip_special_tokens=True).strip()


def test_plain_template_stops_at_the_next_user_turn():
    tokenizer = build_tiny_tokenizer()
    assert stop_strings(tokenizer, SamplingParams()) == []
    tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
    assert stop_strings(tokenizer, SamplingParams(stop=("###",))) == ["###", "\n\nUser:"]
    assert cut_at_stop("Hola.\n\nUser: más", ["###", "\n\nUser:"]) == ("Hola.", True)


def test_prompts_from_x_alpacaeval_folder_and_jsonl_file(tmp_path):
    folder = tmp_path / "instructions"
    folder.mkdir()
    for lang in ("en", "es"):
        records = [{"id": i + 1, "dataset": "helpful_base", "instruction": text}
                   for i, text in enumerate(PROMPTS[lang])]
        (folder / f"{lang}.json").write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    requests = requests_from_prompts(folder, ["es"], limit=2)
    assert [(r.id, r.lang, r.prompt_en, dict(r.meta)) for r in requests] == [
        (1, "es", PROMPTS["en"][0], {"dataset": "helpful_base"}),
        (2, "es", PROMPTS["en"][1], {"dataset": "helpful_base"})]

    file = tmp_path / "prompts.jsonl"
    rows = [{"lang": "en", "id": 7, "instruction": "Hi."}, {"lang": "es", "id": 7, "instruction": "Hola."},
            {"lang": "de", "id": "x", "instruction": "Hallo.", "instruction_en": "Hello.", "source": "demo"}]
    file.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    requests = requests_from_prompts(file, ["es", "de"])
    assert requests == [SampleRequest(7, "es", "Hola.", "Hi."), SampleRequest("x", "de", "Hallo.", "Hello.",
                                                                               {"source": "demo"})]
    file.write_text(json.dumps({"lang": "es", "id": 1, "instruction": "Hola."}) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match="line 1.*no English instruction"):
        requests_from_prompts(file, ["es"])


@pytest.mark.parametrize("params", [dict(n=0), dict(top_p=0.0), dict(temperature=-1.0), dict(max_new_tokens=0)])
def test_bad_sampling_params_raise_input_error(params):
    with pytest.raises(InputError, match=next(iter(params))):
        SamplingParams(**params)


def test_prompt_folder_without_english_is_refused(prompts_dir):
    (prompts_dir / "en.jsonl").unlink()
    with pytest.raises(InputError, match="no en.jsonl"):
        requests_from_prompts(prompts_dir, ["es"])


def test_cli_round_trip_and_rerun_is_a_no_op(prompts_dir, tmp_path, capsys):
    out = tmp_path / "samples.jsonl"
    args = ["--seed", "3", "sample", "--model", "tiny-random-llama", "--prompts", str(prompts_dir), "--langs", "en,es",
            "--n", "2", "--max-new-tokens", "4", "--limit", "2", "-o", str(out)]
    code, out_text, err = run_cli(args, capsys)
    assert code == 0, out_text + err
    records = read_jsonl(out)
    assert [(r["lang"], r["id"], r["sample_index"]) for r in records] == [
        (lang, i, k) for lang in ("en", "es") for i in IDS[:2] for k in range(2)]
    assert {r["seed"] for r in records} == {3} and {r["model"] for r in records} == {"tiny-random-llama"}
    code, out_text, err = run_cli(args, capsys)
    assert code == 0 and "already finished" in " ".join((out_text + err).split())  # rich may wrap
    assert read_jsonl(out) == records


@pytest.mark.parametrize("change, message", [
    ({"--n": "0"}, "field 'n'"),
    ({"--langs": "en,xx"}, "unknown language code 'xx'"),
    ({"--prompts": "missing-folder"}, "prompts not found"),
])
def test_cli_bad_input_exits_2(prompts_dir, tmp_path, capsys, change, message):
    options = {"--model": "tiny-random-llama", "--prompts": str(prompts_dir), "--langs": "en", "--n": "1",
               "-o": str(tmp_path / "s.jsonl"), **change}
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", *[part for item in options.items() for part in item]])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
