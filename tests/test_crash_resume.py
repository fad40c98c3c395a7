"""Crash and resume, from outside: SIGKILL ``xlpref run`` at random points in every stage, rerun, compare.

The tiny 2-iteration run (tests/fixtures/tiny_run.yaml) is started as a user would (``python -m
harness.cli run``, its own process group) and killed with SIGKILL -- no handler runs, no file is
closed -- at a random moment (seeded RNG) inside a stage, then started again with the same command,
until it finishes. 24 kills are planned: 3 per evaluation and per scoring + pairs, 2 per sampling and
training, 1 in the report written after the last stage (leaderboard, deltas); a stage that ends
before taking its kills passes them to the next one, the last stage to the report. A kill's moment is
drawn once the stage loads its first model (a fresh process spends most of its first stage importing
torch and trl before that), within the stage's duration from there in the uninterrupted run, a window
shrunk by each kill already in that stage (a resumed stage keeps its finished work) and halved after
a stage ended before its kill (the machine got faster than during the uninterrupted run), so kills
fall in model loading, generation, judging, scoring, pair building, training and saving.
Where each kill landed is read from the run's stages.json. One more process is killed inside an
atomic write of the manifest, a window too short to hit by chance.

The finished run must equal the uninterrupted one (the session's ``tiny_reference_run``): the same
files, every record file parsed and equal (keys unique), the same metrics, leaderboard and deltas,
the same trained weights (sha256), and no ``*.partial.jsonl`` or temporary file left. Left out of the
comparison: times (``created``/``updated``/``finished``/``seconds``, trl's runtime figures), the git
revision of the last start, two hashes of paths holding the run directory, and ``judge_calls.json``
(the calls made by the last process: a resumed evaluation asks only for the pairs not yet cached).

Budget: about 5 minutes on an idle 2-core machine (25 process starts at ~6 s of imports and a
model load each, the run's own minute of work twice, and the work each kill throws away). A killed
run that falls short of the plan (fewer than 20 kills, or a stage without one: timing on a busy
machine) is checked all the same and then done once more.
"""

from __future__ import annotations

import hashlib
import json
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from tiny_run import POLL_S, REPO, STAGES, Timeline, finished_stages, kill_group, start_tiny_run, watch

SEED = 20250607
#: After the last stage, the run writes leaderboard.csv and deltas.csv (every restart redoes this).
REPORT = "report"
#: Kills planned per stage (24 in all); a stage that ends before taking its kills passes them on.
QUOTA = {**{stage: 3 if stage.startswith("eval/") or stage.endswith("/pairs") else 2 for stage in STAGES},
         REPORT: 1}
MIN_KILLS = 20
MAX_ATTEMPTS = 60
#: Keys of time; everything else must be equal.
VOLATILE_KEYS = frozenset({"created", "updated", "finished", "seconds", "train_runtime", "train_samples_per_second",
                           "train_steps_per_second"})
#: Hashes of something holding the run directory's absolute path (the config, the starting model's folder).
PATH_HASHES = {"manifest.json": "config_hash", "xlpref_train.json": "fingerprint"}
#: Per-invocation accounting: the judge calls the last (resumed) process made, fewer by design.
PROCESS_FILES = frozenset({"judge_calls.json"})
#: Record key of each JSONL artifact (no key may appear twice).
RECORD_KEYS = {"samples.jsonl": ("lang", "id", "sample_index"), "scored.jsonl": ("lang", "id", "sample_index"),
               "generation.jsonl": ("lang", "id", "sample_index"), "pairs.jsonl": ("lang", "id"),
               "judge_cache.jsonl": ("key",)}


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in VOLATILE_KEYS}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _records(path: Path, text: str) -> list[dict]:
    rows = [json.loads(line) for line in text.splitlines()]  # a torn line fails here
    key = RECORD_KEYS[path.name]
    keys = [tuple(row[k] for k in key) for row in rows]
    duplicated = [k for k, n in Counter(keys).items() if n > 1]
    assert not duplicated, f"{path}: duplicated records {duplicated[:3]}"
    if path.name == "judge_cache.jsonl":  # an append-only cache: its order is the order answers came in
        rows = sorted(rows, key=lambda row: row["key"])
    return rows


def artifacts(run_dir: Path) -> dict[str, object]:
    """Every file of the run, parsed and without volatile fields; weights as sha256."""
    found: dict[str, object] = {}
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
        name = str(path.relative_to(run_dir))
        if path.name in PROCESS_FILES:
            continue
        if path.suffix == ".safetensors":
            found[name] = hashlib.sha256(path.read_bytes()).hexdigest()
            continue
        text = path.read_text(encoding="utf-8").replace(str(run_dir), "<RUN>")  # row.json, leaderboard name models
        if path.suffix == ".jsonl":
            found[name] = _records(path, text)
        elif path.suffix == ".json":
            data = json.loads(text)
            if path.name in PATH_HASHES:
                data.pop(PATH_HASHES[path.name])
            if name == "manifest.json":
                data.pop("git_revision")  # the revision of the last start (a commit may land during the test)
            found[name] = _strip(data)
        else:
            found[name] = text
    return found


def _tail(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")[-3000:]



class ShortOfKills(Exception):
    """The run finished with fewer kills than planned, or none in some stage (timing on a busy machine)."""


class KillPlan:
    """Which stage the next kill aims at: the first unfinished stage with kills left in its quota."""

    def __init__(self) -> None:
        self.quota = dict(QUOTA)
        self.hits: Counter = Counter()
        # Kill windows are scaled down after a stage ended before its kill (this machine now runs
        # faster than during the uninterrupted run) and back up after each kill that landed.
        self.scale = 1.0

    def target(self, finished: list[str]) -> str | None:
        """None when every kill is done (the run may finish)."""
        # Kills left over at the end go to the report, which every restart of a finished run redoes.
        pending = [s for s in STAGES if s not in finished] + [REPORT]
        for stage in STAGES:  # a finished stage's kills left over go to the first unfinished one
            if stage in finished and self.hits[stage] < self.quota[stage]:
                self.quota[pending[0]] += self.quota[stage] - self.hits[stage]
                self.quota[stage] = self.hits[stage]
        return next((s for s in pending if self.hits[s] < self.quota[s]), None)


def _kill_once(proc, run_dir: Path, log_path: Path, rng: random.Random, plan: KillPlan, span) -> dict | None:
    """SIGKILL the run at a random moment in the stage the plan aims at; None when it ran to the end."""
    started = time.time()
    timeline = Timeline(started=time.monotonic())
    manifest = run_dir / "manifest.json"
    while proc.poll() is None:
        target = plan.target(finished_stages(run_dir))
        if target is None:
            watch(proc, run_dir, log_path, timeline=timeline)
            break
        # The moment is drawn once the stage loads its first model (a fresh process spends most of
        # its first stage importing torch and trl before that), within the stage's duration from
        # there in the uninterrupted run: the first kill in a stage within 60% of it, each further
        # kill within 60% of the previous window, as a resumed stage keeps its finished work.
        if target == REPORT:  # once this process is past every stage (it rewrote the manifest first)
            while proc.poll() is None and not (finished_stages(run_dir) == list(STAGES) and manifest.exists()
                                               and manifest.stat().st_mtime >= started):
                time.sleep(POLL_S)
        else:
            watch(proc, run_dir, log_path, until_working=target, timeline=timeline)
        delay = rng.uniform(0.0, 0.6 ** (plan.hits[target] + 1)) * span(target) * plan.scale
        until = time.monotonic() + delay
        while time.monotonic() < until and proc.poll() is None and target not in finished_stages(run_dir):
            time.sleep(POLL_S)
        if proc.poll() is not None:
            break
        if target in finished_stages(run_dir):
            plan.scale /= 2
            continue  # it ended before the kill: the plan passes the kill on
        plan.scale = min(1.0, plan.scale * 1.25)
        kill_group(proc)
        landed = next((s for s in STAGES if s not in finished_stages(run_dir)), REPORT)
        plan.hits[landed] += 1
        return {"target": target, "landed": landed, "delay_s": round(delay, 2),
                "process_s": round(time.monotonic() - timeline.started, 2),
                "written": _written_since(run_dir, started), "left": _leftovers(run_dir)}
    assert proc.returncode == 0, f"the resumed run exited {proc.returncode}:\n{_tail(log_path)}"
    return None


def _die_inside_atomic_write(target: Path) -> None:
    """A process SIGKILLed inside an atomic write of ``target`` (too short a window to hit by chance)."""
    code = ("import os, signal, sys\nfrom xlpref.jsonio import atomic_open\n"
            "with atomic_open(sys.argv[1]) as handle:\n"
            "    handle.write('{\"half\": ')\n    handle.flush()\n    os.kill(os.getpid(), signal.SIGKILL)\n")
    before = target.read_bytes()
    assert subprocess.run([sys.executable, "-c", code, str(target)], cwd=REPO).returncode == -signal.SIGKILL
    assert target.read_bytes() == before and list(target.parent.glob(f".{target.name}.*.tmp"))


def _written_since(run_dir: Path, since: float) -> list[str]:
    """Files the killed process wrote (the manifest, rewritten by every start, left out)."""
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")
                  if p.is_file() and p.stat().st_mtime >= since and p.name != "manifest.json")


def _leftovers(run_dir: Path) -> dict[str, int]:
    """Partial record logs (with their line counts) and temporary files or folders."""
    found = {str(p.relative_to(run_dir)): len(p.read_bytes().splitlines()) for p in run_dir.rglob("*.partial.jsonl")}
    found.update({str(p.relative_to(run_dir)): -1 for p in run_dir.rglob("*.tmp")})
    return found


def test_sigkill_in_every_stage_then_resume_equals_uninterrupted_run(tiny_reference_run, tmp_path):
    for attempt in range(2):
        try:
            return _sigkill_run(tiny_reference_run, tmp_path / f"try{attempt}")
        except ShortOfKills as exc:  # every check of the finished run passed; only the kill plan fell short
            if attempt == 1:
                pytest.fail(f"two killed runs fell short of the kill plan: {exc}")


def _sigkill_run(tiny_reference_run, tmp_path: Path) -> None:
    reference = tiny_reference_run.timeline
    tmp_path.mkdir()
    run_dir, tmp_dir = tmp_path / "killed", tmp_path / "tmp"
    tmp_dir.mkdir()
    rng, plan = random.Random(SEED), KillPlan()
    kills: list[dict] = []
    start = time.monotonic()

    def span(stage: str) -> float:
        if stage == REPORT:
            return reference.wall_s - reference.finished_s[STAGES[-1]]
        return reference.span(stage)

    for attempt in range(MAX_ATTEMPTS):
        log_path = tmp_path / f"attempt_{attempt:02d}.log"
        kill = _kill_once(start_tiny_run(run_dir, log_path, tmp_dir=tmp_dir), run_dir, log_path, rng, plan, span)
        if kill is None:
            break
        kills.append({"attempt": attempt, **kill})
        if attempt == 0:
            _die_inside_atomic_write(run_dir / "manifest.json")
    else:
        pytest.fail(f"the run did not finish after {MAX_ATTEMPTS} starts; kills: {kills}")
    elapsed = time.monotonic() - start
    (tmp_path / "kills.json").write_text(json.dumps({"elapsed_s": elapsed, "kills": kills}, indent=1))
    print(f"\n{len(kills)} kills, {len(kills) + 1} starts, {elapsed:.0f} s (uninterrupted run: "
          f"{reference.wall_s:.0f} s); kills per stage: {dict(plan.hits)}")
    for kill in kills:
        print(kill)

    assert finished_stages(run_dir) == list(STAGES)
    assert not _leftovers(run_dir), "partial record logs or temporary files left behind"
    # trl's working folder (in TMPDIR) of a killed training stays behind, but empty (no checkpoints).
    # The one exception is datasets' own temporary cache (hf_datasets-*: the reference log-probs trl
    # precomputes are written there as an Arrow file), which datasets removes at a normal exit only.
    leftovers = [p for p in tmp_dir.rglob("*") if p.is_file()
                 and not p.relative_to(tmp_dir).parts[0].startswith("hf_datasets-")]
    assert not leftovers, leftovers
    expected, got = artifacts(tiny_reference_run.run_dir), artifacts(run_dir)
    assert sorted(got) == sorted(expected), "the killed run's files differ from the uninterrupted run's"
    differing = [name for name in expected if got[name] != expected[name]]
    assert not differing, f"differing artifacts: {differing}"
    missed = [s for s in STAGES if plan.hits[s] == 0]
    if len(kills) < MIN_KILLS or missed:
        raise ShortOfKills(f"{len(kills)} kills (at least {MIN_KILLS} wanted), none in {missed}")
