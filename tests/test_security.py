"""Security: safe weight loading, no remote code, paths that stay inside, API keys that are never written.

- a static scan (ast) of the repository's Python files: every ``torch.load`` passes ``weights_only=True``,
  nothing passes ``weights_only=False`` or ``trust_remote_code=True``, every model ``from_pretrained``
  in xlpref/ and harness/ says ``use_safetensors`` (or reads a GGUF file);
- pickled weights: refused unless asked for, and even then a pickle that runs code is refused;
- path traversal: the run store, results rows, run names and ``xlpref check`` refuse '..', absolute
  paths and symlinks leaving their folder;
- API keys: a whole ``xlpref -vv run`` judged through a fake OpenAI-compatible server with a unique key
  in the environment; the key reaches the server, and no file of the run, no results row and no log
  line holds it; a key put into a config is refused before anything is written;
- the judge client talks only to its configured ``base_url`` (not ``$OPENAI_BASE_URL``, no redirects).

Budget: under 30 s on 2 cores (tiny random models, a local fake server).
"""

from __future__ import annotations

import ast
import inspect
import json
import logging
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from fake_openai_server import FakeOpenAIServer
import cli_helpers
from harness.judges.base import JudgeItem
from harness.judges.loading import load_judge, load_judge_config
from harness.results.rows import check_row_id, resolve_row, write_row
from harness.store import RunStore, safe_join
from xlpref.data import MINI_DIR
from xlpref.errors import InputError

REPO = Path(__file__).resolve().parents[1]
SECRET = "sk-xlpref-security-test-5d0e9c2b7a"
SKIPPED_DIRS = {".venv", ".git", "__pycache__", "runs", "results", "build", "dist", "node_modules"}


def run_cli(args: list, capsys) -> tuple[int, str]:
    """``xlpref ARGS`` in-process; returns (exit code, stdout + stderr)."""
    code, out, err = cli_helpers.run_cli(args, capsys)
    return code, out + err


# -- (a) static scan -----------------------------------------------------------------------------------

def python_files(*roots: str) -> list[Path]:
    """The repository's Python files under ``roots`` (default: all), without the venv, runs and results."""
    found = []
    for folder in [REPO / r for r in roots] if roots else [REPO]:
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = [d for d in dirnames if d not in SKIPPED_DIRS and not d.startswith(".")]
            found += [Path(dirpath) / f for f in filenames if f.endswith(".py")]
    return sorted(found)


def calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Call):
            yield node


def keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(REPO)}:{node.lineno}"


def test_every_torch_load_is_weights_only_and_nothing_turns_it_off():
    files = python_files()
    assert REPO / "xlpref" / "models.py" in files  # the scan does see the code
    problems = []
    for path in files:
        for call in calls(path):
            name = ast.unparse(call.func)
            if name in ("torch.load", "torch.serialization.load") and not is_true(keyword(call, "weights_only")):
                problems.append(f"{where(path, call)}: torch.load without weights_only=True")
            value = keyword(call, "weights_only")
            if isinstance(value, ast.Constant) and value.value is False:
                problems.append(f"{where(path, call)}: {name}(weights_only=False)")
    assert problems == []


def test_trust_remote_code_is_never_on_by_default():
    from harness.config import ModelsConfig
    from xlpref.models import load_model, load_tokenizer

    problems = []
    for path in python_files("xlpref", "harness", "benchmarks"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and is_true(keyword(node, "trust_remote_code")):
                problems.append(f"{where(path, node)}: trust_remote_code=True")
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args
                positional = args.posonlyargs + args.args
                pairs = list(zip(positional[len(positional) - len(args.defaults):], args.defaults))
                pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
                problems += [f"{where(path, node)}: default trust_remote_code=True" for a, d in pairs
                             if a.arg == "trust_remote_code" and is_true(d)]
            if isinstance(node, ast.AnnAssign) and ast.unparse(node.target) == "trust_remote_code" \
                    and is_true(node.value):
                problems.append(f"{where(path, node)}: field default trust_remote_code = True")
            if isinstance(node, ast.Dict):
                problems += [f"{where(path, node)}: {{'trust_remote_code': True}}" for k, v in zip(node.keys, node.values)
                             if isinstance(k, ast.Constant) and k.value == "trust_remote_code" and is_true(v)]
    for config in sorted((REPO / "configs").rglob("*.yaml")) + sorted((REPO / "benchmarks").rglob("*.yaml")):
        if "trust_remote_code: true" in config.read_text(encoding="utf-8").lower():
            problems.append(f"{config.relative_to(REPO)}: trust_remote_code: true")
    assert problems == []
    assert inspect.signature(load_model).parameters["trust_remote_code"].default is False
    assert inspect.signature(load_tokenizer).parameters["trust_remote_code"].default is False
    # A run config cannot switch remote code on at all: the key is unknown there.
    assert "trust_remote_code" not in ModelsConfig.model_fields


def test_model_from_pretrained_calls_say_safetensors():
    """Tokenizers and configs hold no pickles; PEFT adapters go through peft's torch_load, which defaults to weights_only=True."""
    from peft.utils.save_and_load import torch_load

    checked, problems = [], []
    for path in python_files("xlpref", "harness"):
        for call in calls(path):
            if not (isinstance(call.func, ast.Attribute) and call.func.attr == "from_pretrained"):
                continue
            receiver = ast.unparse(call.func.value)
            # Tokenizers and configs read no weights (config.json only); adapters are checked below.
            if "Tokenizer" in receiver or receiver in ("PeftModel", "AutoConfig"):
                continue
            checked.append(where(path, call))
            if keyword(call, "use_safetensors") is None and keyword(call, "gguf_file") is None:
                problems.append(f"{where(path, call)}: {receiver}.from_pretrained without use_safetensors")
    assert problems == [] and len(checked) >= 2, checked
    assert inspect.signature(torch_load).parameters["weights_only"].default is True


class _RunsCode:
    """A pickle payload that creates ``marker`` when unpickled (what a malicious .bin would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickled_weights_need_opt_in_and_code_in_a_pickle_never_runs(tmp_path):
    import torch

    from xlpref.models import build_tiny_model, load_model

    model, tokenizer = build_tiny_model("tiny-random-llama")
    folder = tmp_path / "bin-model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    marker = tmp_path / "code-ran"
    evil = {**model.state_dict(), "payload": _RunsCode(marker)}
    # Beside safetensors weights, a .bin is never read: the folder loads and the payload stays inert.
    torch.save(evil, folder / "pytorch_model.bin")
    loaded, _ = load_model(str(folder), device="cpu")
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight) and not marker.exists()
    # Only pickled weights: refused without an explicit opt-in.
    (folder / "model.safetensors").unlink()
    with pytest.raises(InputError, match=r"only pickled \*\.bin weights; expected \*\.safetensors"):
        load_model(str(folder), device="cpu")
    # With the opt-in, torch.load(weights_only=True) refuses the payload: a clear error, no code ran.
    with pytest.raises(InputError, match="objects other than tensors"):
        load_model(str(folder), device="cpu", allow_pickle_weights=True)
    assert not marker.exists()
    # ... and plain tensors load.
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    loaded, _ = load_model(str(folder), device="cpu", allow_pickle_weights=True)
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)


# -- (b) path traversal ------------------------------------------------------------------------------------

@pytest.mark.parametrize("parts", [("..",), ("../outside",), ("a", "..", "..", "x"), ("/etc/passwd",), ("",),
                                   (".",), ("a\x00b",), ("sub/../../x",)],
                         ids=["dotdot", "dotdot-slash", "dotdot-later", "absolute", "empty", "dot", "nul",
                              "embedded-dotdot"])
def test_safe_join_refuses_paths_leaving_the_root(tmp_path, parts):
    root = tmp_path / "run"
    root.mkdir()
    with pytest.raises(InputError):
        safe_join(root, *parts)
    store = RunStore(root)
    with pytest.raises(InputError):
        store.path(*parts)


def test_run_store_refuses_symlinks_and_writes_nothing_outside(tmp_path):
    root, outside = tmp_path / "run", tmp_path / "outside"
    outside.mkdir()
    store = RunStore(root)
    (root / "link").symlink_to(outside, target_is_directory=True)
    assert safe_join(root, "inside", "x.json") == root.resolve() / "inside" / "x.json"
    with pytest.raises(InputError, match="leaves"):
        store.path("link", "x.json")
    for name in ("link/x.json", "../outside/x.json", "../x.json"):
        with pytest.raises(InputError):
            store.write_json(name, {"x": 1})
        with pytest.raises(InputError):
            store.record_log(name.removesuffix(".json"), key=("id",))
    assert list(outside.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["outside", "run"]


@pytest.mark.parametrize("row_id", ["../x", "a/b", ".hidden", "..", "", "/abs", "published", "a\\b"])
def test_results_row_ids_must_be_plain_names(tmp_path, row_id):
    results = tmp_path / "results"
    results.mkdir()
    with pytest.raises(InputError, match="row id"):
        check_row_id(row_id)
    row = {"row_id": row_id, "model": "m", "kind": "ours", "annotator": "j", "reference": "r", "source": "test"}
    with pytest.raises(InputError):
        write_row(results, row, {"en": {"metrics": {"win_rate": 50.0}}})
    with pytest.raises(InputError):
        resolve_row(row_id, results)
    assert list(results.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["results"]


def test_check_command_refuses_a_row_outside_the_results(tmp_path, capsys):
    code, output = run_cli(["check", "../../etc", "--against", "x", "--results-dir", tmp_path], capsys)
    assert code == 2 and output.startswith("error: ") and "../../etc: not a row folder" in output
    assert "Traceback" not in output


def write_config(folder: Path, **changes) -> Path:
    config = {
        "name": "sec", "iterations": 0, "languages": ["en", "es"],
        "models": {"policy": "tiny-random-llama", "reference": "tiny-random-llama"},
        "data": {"train_prompts": str(MINI_DIR / "train_prompts" / "mini"),
                 "eval_instructions": str(MINI_DIR / "x_alpacaeval" / "instructions"), "eval_limit": 3,
                 "reference_outputs": str(MINI_DIR / "x_alpacaeval" / "reference_outputs" / "xlpref-mini-reference")},
        "evaluation": {"judge": "local_hf_logprob", "judge_options": {"model": "tiny-random-llama"},
                       "max_new_tokens": 4, "n_bootstrap": 100},
    }
    for key, value in changes.items():
        section, _, leaf = key.partition("__")
        if leaf:
            config[section] = {**config[section], leaf: value}
        else:
            config[key] = value
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.mark.parametrize("name", ["../evil", "..", ".hidden", "a/b", "/tmp/evil"])
def test_run_names_cannot_leave_the_runs_folder(tmp_path, monkeypatch, capsys, name):
    monkeypatch.chdir(tmp_path)  # where runs/<name> would go
    config = write_config(tmp_path, name=name)
    code, output = run_cli(["run", config], capsys)
    assert code == 2 and output.startswith("error: ") and "field 'name'" in output, output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


# -- (c) API keys ------------------------------------------------------------------------------------------------

def test_api_key_reaches_the_judge_but_no_file_or_log_of_a_run(tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    with FakeOpenAIServer(p_good=0.7) as server:
        config = write_config(tmp_path, run_dir=str(tmp_path / "run"), evaluation__judge="weighted_gpt4_turbo_multilingual",
                              evaluation__judge_options={"base_url": server.base_url, "retry_backoff_s": 0},
                              evaluation__results_dir=str(tmp_path / "results"))
        code, output = run_cli(["-vv", "run", config], capsys)
        requests = list(server.requests)
    assert code == 0, output
    # The key was really used: every judge request carried it (from the environment, nowhere else).
    assert len(requests) >= 1
    assert all({k.lower(): v for k, v in r["headers"].items()}["authorization"] == f"Bearer {SECRET}" for r in requests)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "manifest.json" for p in written) and any(p.name == "annotations.json" for p in written)
    assert any(p.name == "row.json" and p.is_relative_to(tmp_path / "results") for p in written)
    for path in written:
        assert SECRET.encode() not in path.read_bytes(), path
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["config"]["evaluation"]["judge_options"]["base_url"] == server.base_url
    assert SECRET not in output
    assert caplog.records and all(SECRET not in r.getMessage() for r in caplog.records)
    assert SECRET not in caplog.text


def test_a_key_in_a_config_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, run_dir=str(tmp_path / "run"), evaluation__judge="weighted_gpt4_turbo_multilingual",
                          evaluation__judge_options={"api_key": SECRET})
    code, output = run_cli(["run", config], capsys)
    assert code == 2 and "field 'evaluation.judge_options'" in output and "unknown judge option 'api_key'" in output
    assert SECRET not in output and not (tmp_path / "run").exists()
    with pytest.raises(InputError) as caught:
        load_judge_config("weighted_gpt4_turbo_multilingual", api_key=SECRET)
    assert SECRET not in str(caught.value)
    # The shipped judge configs name an environment variable and hold no key.
    for path in sorted((REPO / "benchmarks" / "x_alpacaeval" / "annotators").glob("*/configs.yaml")):
        text = path.read_text(encoding="utf-8")
        assert "sk-" not in text and "api_key:" not in text, path
        body = next(iter(yaml.safe_load(text).values()))
        if body["fn_completions"] == "openai_completions":
            assert body["xlpref"]["api_key_env"].isupper(), path


def test_a_refused_key_gives_one_line_without_the_key(tmp_path, capsys, monkeypatch):
    """The fake server's 401 body repeats the key (as some servers do); the CLI's message must not."""
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    outputs = tmp_path / "outputs"
    records = json.loads((MINI_DIR / "x_alpacaeval" / "reference_outputs" / "xlpref-mini-reference" / "es.json")
                         .read_text(encoding="utf-8"))
    (outputs / "es").mkdir(parents=True)
    (outputs / "es" / "model_outputs.json").write_text(json.dumps(
        [{**r, "output": "Una respuesta.", "generator": "m"} for r in records], ensure_ascii=False), encoding="utf-8")
    with FakeOpenAIServer(faults=["401"] * 100) as server:
        code, output = run_cli(["evaluate", outputs, "--judge", "weighted_gpt4_turbo_multilingual", "--mini",
                                "--judge-option", f"base_url={server.base_url}", "-o", tmp_path / "eval"], capsys)
        assert server.hits >= 1
    lines = [line for line in output.splitlines() if line.strip()]  # a progress bar may come first
    assert code == 2 and lines[-1].startswith("error: ") and "refused the API key from $OPENAI_API_KEY" in lines[-1]
    assert SECRET not in output and sum(line.startswith("error") for line in lines) == 1
    assert all(SECRET.encode() not in p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())


# -- (d) only the configured base_url ------------------------------------------------------------------------------

class RedirectServer:
    """Answers every POST with ``307`` to ``target`` (a judge that followed it would leak the key there)."""

    def __init__(self, target: str) -> None:
        self.hits = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                server.hits += 1
                self.send_response(307)
                self.send_header("Location", target + "/chat/completions")
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> "RedirectServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def test_judge_talks_only_to_its_base_url(monkeypatch):
    from harness.judges.api import JudgeUnavailableError

    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    items = [JudgeItem("q1", "BAD", "GOOD"), JudgeItem("q2", "GOOD", "BAD")]
    with FakeOpenAIServer() as configured, FakeOpenAIServer() as elsewhere:
        # $OPENAI_BASE_URL (which the openai package reads by default) does not redirect the judge.
        monkeypatch.setenv("OPENAI_BASE_URL", elsewhere.base_url)
        judge = load_judge("weighted_gpt4_turbo_multilingual", base_url=configured.base_url, retry_backoff_s=0)
        assert judge.preferences(items) == pytest.approx([1.9, 1.1])
        assert str(judge._get_client().base_url).rstrip("/") == configured.base_url
        assert configured.hits == 2 and elsewhere.hits == 0
        assert all(r["path"] == "/v1/chat/completions" for r in configured.requests)
        # A redirect to another host is not followed: the key never reaches it.
        with RedirectServer(elsewhere.base_url) as redirecting:
            judge = load_judge("weighted_gpt4_turbo_multilingual", base_url=redirecting.base_url, retry_backoff_s=0,
                               max_retries=1)
            with pytest.raises(JudgeUnavailableError, match="307"):
                judge.preferences(items[:1])
            assert redirecting.hits >= 1
        assert elsewhere.hits == 0
