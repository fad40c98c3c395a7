"""Judge faults: the API judge against a server that misbehaves on 30% of requests, and one that dies.

The server is tests/fake_openai_server.py on 127.0.0.1 (bounded: it stops itself after 300 requests or
60 s). Faults, drawn per request by a seeded RNG: HTTP 500; 429 with ``Retry-After: 1``; no answer
(the client's 1 s timeout runs out); a JSON body cut in half; a completion without logprobs. The
evaluation must end with every annotation exactly once and the same preferences as a fault-free run,
and the judge's counters must equal what the server counted and served. A server gone for good
gives one clear line (exit 1), the answers it gave are kept, and the rerun asks only for the rest.

Budget: under 40 s on 2 cores (no model; 20 pairs per evaluation).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from cli_helpers import run_cli
from fake_openai_server import FAULT_KINDS, FakeOpenAIServer

from harness.evaluation.judging import evaluate_outputs
from harness.judges.loading import load_judge, load_judge_config
from xlpref.data import MINI_DIR, load_instructions, load_reference_outputs

JUDGE = "weighted_gpt4_turbo_multilingual"
N_ITEMS = 20
FAULT_RATE = 0.3
TIMEOUT_S = 1.0
HANG_S = 4.0  # a "timeout" request gets no answer for this long; the client must give up sooner
RETRY_AFTER_S = 1.0
FAST_RETRIES = {"timeout_s": TIMEOUT_S, "retry_backoff_s": 0.05}


def marked_pairs() -> tuple[list[dict], list[dict]]:
    """Model outputs and references for 20 Spanish instructions: even ids, the model's output is GOOD."""
    instructions = load_instructions(MINI_DIR / "x_alpacaeval" / "instructions", ["es"])["es"][:N_ITEMS]
    refs = load_reference_outputs(MINI_DIR / "x_alpacaeval" / "reference_outputs" / "xlpref-mini-reference"
                                  / "es.json", instructions)
    model = [{"instruction": i.instruction, "output": f"{'GOOD' if i.id % 2 == 0 else 'BAD'} respuesta {i.id}",
              "generator": "marked-model", "dataset": i.dataset, "id": i.id} for i in instructions]
    refs = [{**r, "output": f"{'BAD' if r['id'] % 2 == 0 else 'GOOD'} referencia {r['id']}"} for r in refs]
    return model, refs


def flaky_server(**overrides) -> FakeOpenAIServer:
    settings = dict(fault_rate=FAULT_RATE, fault_seed=24, retry_after_headers={"Retry-After": "1"}, hang_s=HANG_S,
                    prompt_tokens=None, max_requests=300, lifetime_s=60)
    return FakeOpenAIServer(**{**settings, **overrides})


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_faults_are_retried_and_every_annotation_is_there_once(tmp_path, api_key):
    model_outputs, refs = marked_pairs()
    with FakeOpenAIServer(prompt_tokens=None) as clean:
        evaluate_outputs(model_outputs, refs, load_judge(JUDGE, base_url=clean.base_url, **FAST_RETRIES),
                         tmp_path / "clean", progress=False)
    with flaky_server() as flaky:
        judge = load_judge(JUDGE, base_url=flaky.base_url, max_retries=6, **FAST_RETRIES)
        metrics = evaluate_outputs(model_outputs, refs, judge, tmp_path / "flaky", progress=False)
    requests = flaky.requests
    faults = Counter(r["fault"] for r in requests if r["fault"])
    assert set(faults) == set(FAULT_KINDS), faults  # the seed gives every kind of fault
    assert sum(faults.values()) >= 0.2 * len(requests)
    assert flaky.stopped_because == "stopped"  # ended by the test, not by its bounds

    # Every pair judged once in the end: each fault cost exactly one more request for the same pair.
    annotations = json.loads((tmp_path / "flaky" / "annotations.json").read_text())
    assert sorted(a["id"] for a in annotations) == sorted(o["id"] for o in model_outputs)
    assert annotations == json.loads((tmp_path / "clean" / "annotations.json").read_text())
    assert [a["preference"] for a in annotations] == pytest.approx(
        [1.9 if a["id"] % 2 == 0 else 1.1 for a in annotations])
    cache = read_lines(tmp_path / "flaky" / "judge_cache.jsonl")
    assert len(cache) == len({r["key"] for r in cache}) == N_ITEMS
    assert len(requests) == N_ITEMS + sum(faults.values())
    by_pair: dict[str, list[dict]] = {}
    for request in requests:
        by_pair.setdefault(json.dumps(request["body"]["messages"]), []).append(request)
    assert len(by_pair) == N_ITEMS and all(tries[-1]["fault"] is None for tries in by_pair.values())
    for tries in by_pair.values():
        for failed, retry in zip(tries, tries[1:]):
            waited = retry["time"] - failed["time"]
            if failed["fault"] == "429":  # the client honoured Retry-After
                assert waited >= RETRY_AFTER_S - 0.05, waited
            if failed["fault"] == "timeout":  # it gave up after its own timeout, not the server's silence
                assert TIMEOUT_S <= waited < HANG_S, waited

    # Counters: every request sent, every HTTP error, the usage of every complete body, its price.
    counters = judge.counters
    print(f"\n{len(requests)} requests for {N_ITEMS} pairs, faults {dict(faults)}, counters {counters}")
    assert counters["calls"] == len(requests)
    assert counters["failed_calls"] == faults["500"] + faults["429"]
    assert counters["prompt_tokens"] == flaky.served["prompt_tokens"] > 0
    assert counters["completion_tokens"] == flaky.served["completion_tokens"] == flaky.served["ok"] + faults[
        "no_logprobs"]
    prices = load_judge_config(JUDGE).options
    assert counters["cost_usd"] == pytest.approx(
        (counters["prompt_tokens"] * prices["price_per_million_prompt_tokens"]
         + counters["completion_tokens"] * prices["price_per_million_completion_tokens"]) / 1e6)
    assert metrics["n_total"] == N_ITEMS and metrics["win_rate"] == pytest.approx(50.0)


def write_user_files(root: Path) -> tuple[Path, Path]:
    """What a user brings: a data folder (instructions + reference outputs) and a model's outputs."""
    model_outputs, refs = marked_pairs()
    data_dir, outputs = root / "data", root / "outputs"
    instructions = [{"id": r["id"], "dataset": r["dataset"], "instruction": r["instruction"]} for r in refs]
    for path, content in ((data_dir / "x_alpacaeval" / "instructions" / "es.json", instructions),
                          (data_dir / "x_alpacaeval" / "reference_outputs" / "marked-reference" / "es.json",
                           [{**r, "generator": "marked-reference"} for r in refs]),
                          (outputs / "es" / "model_outputs.json", model_outputs)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content, ensure_ascii=False), encoding="utf-8")
    return data_dir, outputs


def test_server_gone_for_good_then_rerun_resumes(tmp_path, api_key, capsys):
    data_dir, outputs = write_user_files(tmp_path)
    results = tmp_path / "judged"

    def evaluate(server: FakeOpenAIServer) -> tuple[int, str, str]:
        return run_cli(["evaluate", str(outputs), "--judge", JUDGE, "--data-dir", str(data_dir), "-o", str(results),
                        "--judge-option", f"base_url={server.base_url}", "--judge-option", "max_retries=2",
                        *[w for k, v in FAST_RETRIES.items() for w in ("--judge-option", f"{k}={v}")]], capsys)

    with flaky_server(stop_after_answers=7) as dying:
        code, _, err = evaluate(dying)
        answered = dying.served["ok"]
    with capsys.disabled():
        print(f"\ndying server: {len(dying.requests)} requests, {answered} answers; {err.strip().splitlines()[-1]}")
    assert dying.stopped_because == "stop_after_answers=7"
    cache = results / "es" / "judge_cache.jsonl"
    assert code == 1, err
    lines = err.strip().splitlines()  # the progress bar, then the error
    assert lines[-1].startswith("error: ") and sum(line.startswith("error") for line in lines) == 1, err
    assert "Traceback" not in err
    for words in (f"at {dying.base_url} unavailable",
                  f"of the {N_ITEMS} answers this evaluation asked for, {answered} are kept in {cache}",
                  "rerun the same command to resume"):
        assert words in err, err
    assert api_key not in err
    # Every answer the server gave is kept, none twice; nothing else was written but the judge's counters.
    kept = read_lines(cache)
    assert len(kept) == len({r["key"] for r in kept}) == answered >= 7
    assert sorted(p.name for p in (results / "es").iterdir()) == ["judge_cache.jsonl", "judge_calls.json"]
    first_calls = json.loads((results / "es" / "judge_calls.json").read_text())
    assert first_calls["calls"] >= answered and first_calls["invocations"] == 1

    with FakeOpenAIServer(prompt_tokens=None) as healthy:
        code, out, err = evaluate(healthy)
        assert healthy.hits == N_ITEMS - answered  # only the pairs without an answer
    assert code == 0, err
    assert f"{N_ITEMS - answered} judge calls" in " ".join(out.split())  # the summary's caption
    annotations = json.loads((results / "es" / "annotations.json").read_text())
    assert sorted(a["id"] for a in annotations) == list(range(1, N_ITEMS + 1))
    assert [a["preference"] for a in annotations] == pytest.approx(
        [1.9 if a["id"] % 2 == 0 else 1.1 for a in annotations])
    assert len(read_lines(cache)) == N_ITEMS
    # The counters (and so the cost) sum both invocations.
    calls = json.loads((results / "es" / "judge_calls.json").read_text())
    assert calls["calls"] == first_calls["calls"] + N_ITEMS - answered and calls["invocations"] == 2
    assert calls["prompt_tokens"] == first_calls["prompt_tokens"] + healthy.served["prompt_tokens"]
    assert calls["last_invocation"]["calls"] == N_ITEMS - answered
