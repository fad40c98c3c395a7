"""Bad input through the real CLI: one ``error:`` line naming the place, exit code 2, nothing half-written.

Each case builds a broken copy of something a user passes (a data folder, a JSONL file, a config,
a CLI argument) under ``tmp_path`` and runs ``harness.cli.main`` in-process; three cases run
``python -m harness.cli`` in a fresh interpreter, as a user would. Every case checks:

- exit code 2;
- stdout + stderr is exactly one non-empty line, starting with ``error:``, holding the expected
  fragments (file name, line / record / field, what was expected), and no ``Traceback``;
- the output folder holds no file afterwards (no half-written output, no stray temporary file).

A full disk is simulated by giving :mod:`xlpref.jsonio` an ``os`` whose files fail with ENOSPC
(part-way through a write, or at fsync). Tests run as root in CI, so an unwritable run directory
is a path under a regular file (``chmod`` does not stop root).

Budget: under 30 s on 2 cores (one tiny model load, three subprocesses).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import yaml

import cli_helpers
from xlpref import jsonio
from xlpref.data import MAX_INSTRUCTION_CHARS, MINI_DIR

REPO = Path(__file__).resolve().parents[1]
ONE_MB = "x" * (1 << 20)


# -- running the CLI and checking a failure ----------------------------------------------------------

def run_cli(args: list, capsys) -> tuple[int, str]:
    """``xlpref ARGS`` in-process; returns (exit code, stdout + stderr)."""
    code, out, err = cli_helpers.run_cli(args, capsys)
    return code, out + err


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def assert_clean_failure(code: int, output: str, expected: tuple[str, ...], out_dir: Path, *,
                         is_only_line: bool = True) -> None:
    """Exit 2; one ``error:`` line (the last, and the only one unless a summary was printed before)."""
    lines = [line for line in output.splitlines() if line.strip()]
    assert "Traceback" not in output, output
    assert code == 2, output
    assert lines and lines[-1].startswith("error: "), output
    assert len(lines) == 1 or not is_only_line, output
    assert sum(line.startswith("error:") for line in lines) == 1, output
    for fragment in expected:
        assert fragment in lines[-1], f"{fragment!r} not in {lines[-1]!r}"
    assert files_under(out_dir) == [], f"left behind: {files_under(out_dir)}"


# -- building broken inputs ----------------------------------------------------------------------------

class Workspace:
    """``tmp_path`` with a lazily copied mini data set and an (initially absent) output folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.out = root / "out"
        self._data: Path | None = None

    @property
    def data(self) -> Path:
        if self._data is None:
            self._data = self.root / "data"
            shutil.copytree(MINI_DIR, self._data)
        return self._data

    def instructions(self, lang: str = "en") -> Path:
        return self.data / "x_alpacaeval" / "instructions" / f"{lang}.json"

    def prompts(self, lang: str = "en") -> Path:
        return self.data / "train_prompts" / "mini" / f"{lang}.jsonl"

    def references(self, lang: str = "en") -> Path:
        return self.data / "x_alpacaeval" / "reference_outputs" / "xlpref-mini-reference" / f"{lang}.json"

    def edit_json(self, path: Path, edit: Callable[[list], object]) -> None:
        records = json.loads(path.read_text(encoding="utf-8"))
        result = edit(records)
        path.write_text(json.dumps(records if result is None else result, ensure_ascii=False), encoding="utf-8")

    def edit_jsonl(self, path: Path, edit: Callable[[list[dict]], None]) -> None:
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        edit(records)
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")

    def file(self, name: str, content: str | bytes) -> Path:
        path = self.root / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    def check(self) -> list:
        """``data check`` of the (broken) copy; the summary would go to the output folder."""
        return ["data", "check", "--data-dir", self.data, "--summary-json", self.out / "summary.json"]

    def config(self, **changes) -> Path:
        """A valid run config on the mini copy (tiny models), with ``changes`` merged in (None deletes)."""
        config = {
            "name": "bad-input", "run_dir": str(self.out / "run"), "iterations": 1, "languages": ["en", "es"],
            "models": {"policy": "tiny-random-llama", "reference": "tiny-random-llama"},
            "data": {"train_prompts": str(self.data / "train_prompts" / "mini"),
                     "eval_instructions": str(self.data / "x_alpacaeval" / "instructions"),
                     "reference_outputs": str(self.data / "x_alpacaeval" / "reference_outputs" / "xlpref-mini-reference")},
            "sampling": {"n": 2, "max_new_tokens": 8},
            "evaluation": {"judge": "local_hf_logprob", "judge_options": {"model": "tiny-random-llama"}},
        }
        for dotted, value in changes.items():
            *parents, leaf = dotted.split("__")
            node = config
            for key in parents:
                node = node.setdefault(key, {})
            if value is None:
                node.pop(leaf, None)
            else:
                node[leaf] = value
        return self.file("config.yaml", yaml.safe_dump(config, allow_unicode=True))


def sample_line(**changes) -> dict:
    record = {"lang": "es", "id": "p1", "sample_index": 0, "prompt": "¿Hola?", "prompt_en": "Hello?",
              "response": "Hola, ¿qué tal?"}
    record.update(changes)
    return {k: v for k, v in record.items() if v is not None}


def scored_lines(bad: str) -> str:
    """Two valid scored records, then ``bad`` (raw JSON text) on line 3."""
    good = [{"lang": "es", "id": "p1", "sample_index": i, "prompt": "¿Hola?", "response": "Hola" * (i + 1),
             "reward": 0.5 * i, "n_response_tokens": i + 1} for i in range(2)]
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in good) + bad + "\n"


def jsonl(*records: dict) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def score_args(ws: Workspace, samples: Path) -> list:
    return ["score", samples, "--policy", "tiny-random-llama", "--reference", "tiny-random-llama",
            "-o", ws.out / "scored.jsonl"]


def sample_args(ws: Workspace, *extra) -> list:
    base = {"--model": "tiny-random-llama", "--prompts": MINI_DIR / "train_prompts" / "mini", "--langs": "en,es",
            "--n": "2", "-o": ws.out / "samples.jsonl"}
    for flag, value in zip(extra[::2], extra[1::2]):
        base[flag] = value
    return [word for flag, value in base.items() for word in (flag, value)]


ANNOTATION = {"instruction": "q", "output_1": "a", "output_2": "b", "preference": 1.5, "generator_1": "ref",
              "generator_2": "model"}


# -- the cases: (build(ws) -> argv, fragments the error line must hold) ------------------------------------

def _truncate(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    path.write_text(text[: len(text) // 2], encoding="utf-8")


def _insert_line(path: Path, number: int, text: str) -> None:
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines.insert(number - 1, text + "\n")
    path.write_text("".join(lines), encoding="utf-8")


def _latin1_instructions(ws: Workspace) -> list:
    path = ws.instructions("es")
    path.write_bytes(path.read_text(encoding="utf-8").encode("latin-1", errors="replace"))
    return ws.check()


def _set(index: int, **fields) -> Callable[[list], None]:
    def edit(records: list) -> None:
        for key, value in fields.items():
            if value is None:
                records[index].pop(key)
            else:
                records[index][key] = value
    return edit


DATA_CASES = [
    pytest.param(lambda ws: (_truncate(ws.instructions("de")), ws.check())[1],
                 ("instructions/de.json", "invalid JSON", "line "), id="data-truncated-json"),
    pytest.param(lambda ws: (ws.instructions("fr").write_text("", encoding="utf-8"), ws.check())[1],
                 ("instructions/fr.json", "line 1", "invalid JSON"), id="data-empty-file"),
    pytest.param(_latin1_instructions, ("instructions/es.json", "not valid UTF-8", "expected UTF-8"),
                 id="data-latin1-encoding"),
    pytest.param(lambda ws: (ws.edit_json(ws.instructions("en"), _set(3, instruction=None)), ws.check())[1],
                 ("instructions/en.json", "record 3", "field 'instruction'", "missing field"),
                 id="data-missing-field"),
    pytest.param(lambda ws: (ws.edit_json(ws.instructions("ru"), _set(5, id=2)), ws.check())[1],
                 ("instructions/ru.json", "record 5", "field 'id'", "duplicate id 2", "expected unique ids"),
                 id="data-duplicate-id"),
    pytest.param(lambda ws: (ws.edit_json(ws.instructions("en"), _set(0, id="one")), ws.check())[1],
                 ("instructions/en.json", "record 0", "field 'id'", "expected a positive integer id"),
                 id="data-id-wrong-type"),
    pytest.param(lambda ws: (ws.edit_json(ws.instructions("es"), _set(23, id=99)), ws.check())[1],
                 ("instructions/es.json", "id set differs from", "expected the same ids in every language"),
                 id="data-mismatched-languages"),
    pytest.param(lambda ws: (shutil.copy(ws.instructions("en"), ws.instructions("en").with_name("xx.json")),
                             ws.check())[1],
                 ("instructions/xx.json", "unknown language code 'xx'", "expected an ISO 639-1 code"),
                 id="data-unknown-language-file"),
    pytest.param(lambda ws: (ws.edit_json(ws.instructions("de"), _set(2, instruction="  ")), ws.check())[1],
                 ("instructions/de.json", "record 2", "field 'instruction'", "expected a non-empty string"),
                 id="data-empty-instruction"),
    pytest.param(lambda ws: (ws.edit_json(ws.instructions("zh"), _set(1, instruction=ONE_MB)), ws.check())[1],
                 ("instructions/zh.json", "record 1", "field 'instruction'", f"at most {MAX_INSTRUCTION_CHARS}"),
                 id="data-1mb-instruction"),
    pytest.param(lambda ws: (ws.edit_json(ws.instructions("en"), lambda rs: {"data": rs}), ws.check())[1],
                 ("instructions/en.json", "expected a JSON list"), id="data-not-a-list"),
    pytest.param(lambda ws: (ws.edit_json(ws.references("fr"), _set(4, output=None)), ws.check())[1],
                 ("xlpref-mini-reference/fr.json", "record 4", "field 'output'", "missing field"),
                 id="data-reference-missing-output"),
    pytest.param(lambda ws: (ws.edit_jsonl(ws.prompts("es"), lambda rs: rs.__setitem__(4, {**rs[4], "instruction_id":
                                                                                           rs[2]["instruction_id"]})),
                             ws.check())[1],
                 ("mini/es.jsonl", "line 5", "field 'instruction_id'", "duplicate instruction_id"),
                 id="data-prompts-duplicate-id"),
    pytest.param(lambda ws: (_insert_line(ws.prompts("de"), 2, "[1, 2]"), ws.check())[1],
                 ("mini/de.jsonl", "line 2", "expected a JSON object, found list"), id="data-prompts-line-not-object"),
    pytest.param(lambda ws: (ws.edit_jsonl(ws.data / "preference_pairs" / "en.jsonl",
                                           lambda rs: rs.__setitem__(6, {**rs[6], "rejected": rs[6]["chosen"]})),
                             ws.check())[1],
                 ("preference_pairs/en.jsonl", "line 7", "chosen equals rejected"), id="data-pairs-chosen-is-rejected"),
    pytest.param(lambda ws: ["data", "check", "--data-dir", ws.root / "missing"],
                 ("missing", "data folder not found"), id="data-missing-folder"),
]

SAMPLE_CASES = [
    pytest.param(lambda ws: ["sample", *sample_args(ws, "--n", "-3")], ("'n'", "got -3", "expected an integer >= 1"),
                 id="sample-negative-n"),
    pytest.param(lambda ws: ["sample", *sample_args(ws, "--n", "0")], ("'n'", "got 0", "expected an integer >= 1"),
                 id="sample-zero-n"),
    pytest.param(lambda ws: ["sample", *sample_args(ws, "--langs", "en,xx")],
                 ("--langs", "unknown language code 'xx'", "expected an ISO 639-1 code"), id="sample-unknown-language"),
    pytest.param(lambda ws: ["sample", *sample_args(ws, "--model", "no-such-model")],
                 ("unknown model 'no-such-model'", "expected one of"), id="sample-unknown-model"),
    pytest.param(lambda ws: ["sample", *sample_args(ws, "--model", ws.root)],
                 ("model folder has no config.json", "expected a save_pretrained folder"),
                 id="sample-model-folder-not-a-model"),
    pytest.param(lambda ws: ["sample", *sample_args(ws, "--prompts", ws.root / "no-prompts")],
                 ("no-prompts", "prompts not found", "expected a folder"), id="sample-missing-prompts"),
    pytest.param(lambda ws: ["sample", *sample_args(ws, "--prompts", ws.file("p.jsonl", jsonl(
        {"lang": "en", "id": 1, "instruction": "Hi"}, {"lang": "en", "instruction": "Bye"})))],
                 ("p.jsonl", "line 2", "field 'id'", "missing field"), id="sample-prompts-missing-field"),
    pytest.param(lambda ws: ["sample", *sample_args(ws, "--temperature", "-1")],
                 ("temperature", "got -1"), id="sample-negative-temperature"),
]

SCORE_CASES = [
    pytest.param(lambda ws: score_args(ws, ws.file("s.jsonl", jsonl(sample_line()) + '{"lang": "es", "id": "p2", "sam')),
                 ("s.jsonl", "line 2", "invalid JSON", "expected one JSON object per line"), id="score-truncated-line"),
    pytest.param(lambda ws: score_args(ws, ws.file("s.jsonl", jsonl(sample_line(), sample_line(sample_index=1,
                                                                                              prompt_en=None)))),
                 ("s.jsonl", "line 2", "field 'prompt_en'", "missing field"), id="score-missing-field"),
    pytest.param(lambda ws: score_args(ws, ws.file("s.jsonl", jsonl(sample_line()).encode("latin-1"))),
                 ("s.jsonl", "not valid UTF-8", "expected UTF-8"), id="score-latin1-bytes"),
    pytest.param(lambda ws: score_args(ws, ws.file("s.jsonl", jsonl(sample_line(sample_index=-1)))),
                 ("s.jsonl", "line 1", "field 'sample_index'", "expected an integer >= 0"),
                 id="score-negative-sample-index"),
    pytest.param(lambda ws: score_args(ws, ws.file("s.jsonl", jsonl(sample_line(lang="xx")))),
                 ("s.jsonl", "line 1", "field 'lang'", "unknown language code 'xx'"), id="score-unknown-language"),
    pytest.param(lambda ws: score_args(ws, ws.file("s.jsonl", "\n\n")), ("s.jsonl", "no records"),
                 id="score-empty-file"),
]

PAIRS_CASES = [
    pytest.param(lambda ws: ["pairs", ws.file("scored.jsonl", scored_lines(
        '{"lang": "es", "id": "p1", "sample_index": 2, "prompt": "q", "response": "r", "reward": NaN}')),
        "-o", ws.out / "pairs.jsonl"],
                 ("scored.jsonl", "line 3", "field 'reward'", "got nan", "expected a finite number"), id="pairs-nan-reward"),
    pytest.param(lambda ws: ["pairs", ws.file("scored.jsonl", scored_lines(
        '{"lang": "es", "id": "p1", "sample_index": 2, "prompt": "q", "response": "r", "reward": -Infinity}')),
        "-o", ws.out / "pairs.jsonl"],
                 ("scored.jsonl", "line 3", "field 'reward'", "got -inf", "expected a finite number"),
                 id="pairs-infinite-reward"),
    pytest.param(lambda ws: ["pairs", ws.file("scored.jsonl", scored_lines(
        '{"lang": "es", "id": "p1", "sample_index": 2, "prompt": "q", "response": "r"}')), "-o", ws.out / "pairs.jsonl"],
                 ("scored.jsonl", "line 3", "field 'reward'", "missing field"), id="pairs-missing-reward"),
    pytest.param(lambda ws: ["pairs", ws.file("scored.jsonl", scored_lines(
        '{"lang": "es", "id": "p1", "sample_index": 2, "prompt": "q", "response": "r", "reward": "0.3"}')),
        "-o", ws.out / "pairs.jsonl"],
                 ("scored.jsonl", "line 3", "field 'reward'", "expected a finite number"), id="pairs-reward-string"),
    pytest.param(lambda ws: ["pairs", ws.file("scored.jsonl", scored_lines(
        '{"lang": "es", "id": "p2", "sample_index": 0, "prompt": "q", "response": "r", "reward": 1.0}')),
        "-o", ws.file("blocker", "a regular file") / "pairs.jsonl"],
                 ("blocker/pairs.jsonl", "cannot create the folder", "expected a writable folder", "nothing was written"),
                 id="pairs-output-under-a-file"),
]

OTHER_CASES = [
    pytest.param(lambda ws: ["train", "--model", "tiny-random-llama", "--pairs", ws.file("p.jsonl", jsonl(
        {"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": "q", "chosen": "a"})), "-o", ws.out / "model"],
                 ("p.jsonl", "line 2", "field 'rejected'", "missing field"), id="train-pair-missing-rejected"),
    pytest.param(lambda ws: ["train", "--model", "tiny-random-llama", "--pairs", ws.file("p.jsonl", '{"prompt": "q", '
                                                                                                   '"chosen": "a"\n'),
                             "-o", ws.out / "model"],
                 ("p.jsonl", "line 1", "invalid JSON"), id="train-pairs-malformed"),
    pytest.param(lambda ws: ["metrics", ws.file("annotations.json", json.dumps([ANNOTATION, {**ANNOTATION,
                                                                                          "preference": 2.5}])),
                             "--json"],
                 ("annotations.json", "record 1", "field 'preference'", "expected a number in [1, 2]", "2.5"),
                 id="metrics-preference-out-of-range"),
]

RUN_CASES = [
    pytest.param(lambda ws: ["run", ws.config(sampling__temprature=0.5)],
                 ("config.yaml", "field 'sampling.temprature'", "unknown key"), id="run-config-unknown-key"),
    pytest.param(lambda ws: ["run", ws.config(sampling__n="ten")],
                 ("config.yaml", "field 'sampling.n'", "'ten'"), id="run-config-wrong-type"),
    pytest.param(lambda ws: ["run", ws.config(sampling__n=-1)],
                 ("config.yaml", "field 'sampling.n'", "greater than or equal to 1"), id="run-config-negative-n"),
    pytest.param(lambda ws: ["run", ws.config(models=None)],
                 ("config.yaml", "field 'models'", "missing required key"), id="run-config-missing-key"),
    pytest.param(lambda ws: ["run", ws.root / "nope.yaml"], ("nope.yaml", "config file not found"),
                 id="run-config-missing-file"),
    pytest.param(lambda ws: ["run", ws.config(data__train_prompts=str(ws.root / "gone"))],
                 ("config.yaml", "field 'data.train_prompts'", "path does not exist"), id="run-config-missing-data"),
    pytest.param(lambda ws: ["run", ws.config(languages=["en", "klingon"])],
                 ("config.yaml", "field 'languages'", "unknown language code", "klingon"),
                 id="run-config-unknown-language"),
    pytest.param(lambda ws: ["run", ws.file("config.yaml", "name: x\nlanguages: [en, es\nmodels: {}\n")],
                 ("config.yaml", "invalid YAML"), id="run-config-bad-yaml"),
    pytest.param(lambda ws: ["run", ws.file("config.yaml", b"name: d\xe9mo\n")],
                 ("config.yaml", "not valid UTF-8"), id="run-config-latin1"),
    pytest.param(lambda ws: ["run", ws.config(run_dir=str(ws.file("blocker", "a regular file") / "run"))],
                 ("blocker/run", "cannot create run directory", "expected a writable folder"),
                 id="run-unwritable-run-dir"),
    pytest.param(lambda ws: (ws.edit_jsonl(ws.prompts("es"), lambda rs: rs[3].update(instruction=ONE_MB)),
                             ["run", ws.config()])[1],
                 ("mini/es.jsonl", "line 4", "field 'instruction'", f"at most {MAX_INSTRUCTION_CHARS}"),
                 id="run-1mb-instruction"),
    pytest.param(lambda ws: (ws.edit_json(ws.instructions("es"), _set(0, instruction="")), ["run", ws.config()])[1],
                 ("instructions/es.json", "record 0", "field 'instruction'", "expected a non-empty string"),
                 id="run-empty-instruction"),
]

CASES = DATA_CASES + SAMPLE_CASES + SCORE_CASES + PAIRS_CASES + OTHER_CASES + RUN_CASES


@pytest.mark.parametrize("build, expected", CASES)
def test_bad_input_gives_one_clear_error(tmp_path, capsys, build, expected):
    ws = Workspace(tmp_path)
    code, output = run_cli(build(ws), capsys)
    assert_clean_failure(code, output, expected, ws.out)


# -- a full disk (simulated) -------------------------------------------------------------------------------

class _FullDiskFile:
    """A file whose writes stop with ENOSPC after ``room`` bytes (some bytes do reach the disk)."""

    def __init__(self, handle, room: int) -> None:
        self._handle = handle
        self._room = room

    def write(self, text):
        if len(text) > self._room:
            self._handle.write(text[: self._room])
            self._handle.flush()
            self._room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(text)
        return self._handle.write(text)

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()


class _FullDiskOS:
    """``os`` for :mod:`xlpref.jsonio`: files fill up after ``room`` bytes, or fsync fails."""

    def __init__(self, *, room: int | None = None, fail_fsync: bool = False) -> None:
        self._room = room
        self._fail_fsync = fail_fsync

    def fdopen(self, fd, *args, **kwargs):
        handle = os.fdopen(fd, *args, **kwargs)
        return handle if self._room is None else _FullDiskFile(handle, self._room)

    def fsync(self, fd):
        if self._fail_fsync:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return os.fsync(fd)

    def __getattr__(self, name):
        return getattr(os, name)


FULL_DISK_CASES = [
    pytest.param(lambda ws: ["pairs", ws.file("scored.jsonl", scored_lines(
        '{"lang": "es", "id": "p2", "sample_index": 0, "prompt": "q", "response": "r", "reward": 1.0}')),
        "-o", ws.out / "pairs.jsonl"], "pairs.jsonl", dict(room=40), id="pairs-disk-full-mid-write"),
    pytest.param(lambda ws: ["pairs", ws.file("scored.jsonl", scored_lines(
        '{"lang": "es", "id": "p2", "sample_index": 0, "prompt": "q", "response": "r", "reward": 1.0}')),
        "-o", ws.out / "pairs.jsonl"], "pairs.jsonl", dict(fail_fsync=True), id="pairs-disk-full-at-fsync"),
    # The data is valid, so its summary table is printed before the JSON summary fails to be written.
    pytest.param(lambda ws: ["data", "check", "--mini", "--summary-json", ws.out / "summary.json"], "summary.json",
                 dict(room=100), id="data-summary-disk-full"),
    pytest.param(lambda ws: ["run", ws.config()], "manifest.json", dict(room=10), id="run-manifest-disk-full"),
]


@pytest.mark.parametrize("build, written, disk", FULL_DISK_CASES)
def test_full_disk_gives_one_clear_error_and_no_partial_file(tmp_path, capsys, monkeypatch, build, written, disk):
    ws = Workspace(tmp_path)
    argv = build(ws)
    monkeypatch.setattr(jsonio, "os", _FullDiskOS(**disk))
    code, output = run_cli(argv, capsys)
    assert_clean_failure(code, output, (written, "No space left on device", "nothing was written"), ws.out,
                         is_only_line=argv[0] != "data")


# -- accepted on purpose ---------------------------------------------------------------------------------

def test_byte_order_marks_and_extra_fields_are_accepted(tmp_path, capsys):
    """A BOM (Windows editors write one) and extra fields (AlpacaEval files carry some) are not errors."""
    ws = Workspace(tmp_path)
    for path in (ws.instructions("en"), ws.prompts("es"), ws.references("de")):
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    ws.edit_json(ws.instructions("fr"), _set(0, source="translated", note="an extra field"))
    code, output = run_cli(ws.check(), capsys)
    assert code == 0, output
    assert "6 languages x 24 instructions" in output
    assert json.loads((ws.out / "summary.json").read_text())["instructions"]["en"] == 24


def test_score_accepts_a_byte_order_mark(tmp_path, capsys):
    ws = Workspace(tmp_path)
    samples = ws.file("s.jsonl", b"\xef\xbb\xbf" + jsonl(sample_line(), sample_line(sample_index=1)).encode())
    code, output = run_cli(score_args(ws, samples), capsys)
    assert code == 0, output
    scored = jsonio.read_jsonl(ws.out / "scored.jsonl")
    assert [(r["lang"], r["id"], r["sample_index"]) for r in scored] == [("es", "p1", 0), ("es", "p1", 1)]
    # The same model as policy and reference: every implicit reward is exactly 0.
    assert [r["reward"] for r in scored] == [0.0, 0.0]
    assert files_under(ws.out) == [ws.out / "scored.jsonl", ws.out / "scored.jsonl.options.json"]


# -- end to end: a fresh interpreter, as a user runs it ------------------------------------------------------

PROCESS_CASES = [
    pytest.param(lambda ws: (_truncate(ws.instructions("de")), ws.check())[1], "instructions/de.json",
                 id="process-data-truncated-json"),
    pytest.param(lambda ws: ["pairs", ws.file("scored.jsonl", scored_lines(
        '{"lang": "es", "id": "p1", "sample_index": 2, "prompt": "q", "response": "r", "reward": NaN}')),
        "-o", ws.out / "pairs.jsonl"], "field 'reward'", id="process-pairs-nan"),
    pytest.param(lambda ws: ["run", ws.config(training__lr=0.1)], "field 'training.lr'", id="process-run-unknown-key"),
]


@pytest.mark.parametrize("build, fragment", PROCESS_CASES)
def test_bad_input_end_to_end_in_a_fresh_process(tmp_path, build, fragment):
    ws = Workspace(tmp_path)
    argv = [str(a) for a in build(ws)]
    proc = subprocess.run([sys.executable, "-m", "harness.cli", *argv], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120)
    assert_clean_failure(proc.returncode, proc.stdout + proc.stderr, (fragment,), ws.out)
