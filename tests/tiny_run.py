"""The 2-iteration tiny run (tests/fixtures/tiny_run.yaml) as a user starts it: ``python -m harness.cli run``
in its own process, watched from outside through its stderr banners and the run's stages.json.

Example::

    proc = start_tiny_run(run_dir, log_path)
    timeline = watch(proc, run_dir, log_path)      # waits for the end; when each stage started, worked, ended
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "tests" / "fixtures" / "tiny_run.yaml"
#: The tiny run's stages in the order they run (harness.loop: evaluate, sample, pairs, train; evaluate).
STAGES = ("eval/iter_0", "iter_0/samples", "iter_0/pairs", "iter_0/train",
          "eval/iter_1", "iter_1/samples", "iter_1/pairs", "iter_1/train", "eval/iter_2")
#: The rule harness.loop prints when a stage starts working (after its skip check, before loading models).
BANNER = re.compile(r"iteration (\d+): (evaluate|sample|annotate|train)\b")
_BANNER_STAGE = {"evaluate": "eval/iter_{t}", "sample": "iter_{t}/samples", "annotate": "iter_{t}/pairs",
                 "train": "iter_{t}/train"}
POLL_S = 0.05
#: transformers' progress bar while it loads a model's weights: every stage loads one before its work.
MODEL_LOADING = "Loading weights"


def start_tiny_run(run_dir: Path, log_path: Path, *, tmp_dir: Path | None = None,
                   config: Path = TINY_CONFIG) -> subprocess.Popen:
    """``python -m harness.cli run tiny_run.yaml --run-dir RUN`` in a new session (its own process group);
    ``config``: another run config (its data paths relative to the repository)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if tmp_dir is not None:  # trl's working folder goes here, so a test can see what a kill leaves behind
        env["TMPDIR"] = str(tmp_dir)
    command = [sys.executable, "-m", "harness.cli", "run", str(config), "--run-dir", str(run_dir)]
    with open(log_path, "wb") as log:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log,
                                start_new_session=True)


def finished_stages(run_dir: Path) -> list[str]:
    """Stages in RUN/stages.json (written atomically, so always complete)."""
    path = run_dir / "stages.json"
    return list(json.loads(path.read_text(encoding="utf-8"))) if path.exists() else []


def _log(log_path: Path) -> str:
    return log_path.read_text(encoding="utf-8", errors="replace") if log_path.exists() else ""


def banners(log_path: Path) -> list[str]:
    """Stages whose start banner the run printed, in order."""
    return [_BANNER_STAGE[m.group(2)].format(t=m.group(1)) for m in BANNER.finditer(_log(log_path))]


def output_of(log_path: Path, stage: str) -> str:
    """What the run printed between ``stage``'s banner and the next banner ('' before it)."""
    text = _log(log_path)
    matches = list(BANNER.finditer(text))
    for index, match in enumerate(matches):
        if _BANNER_STAGE[match.group(2)].format(t=match.group(1)) == stage:
            end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
            return text[match.end():end]
    return ""


@dataclass
class Timeline:
    """Seconds from the process start to each stage's banner, its first model load, its entry in stages.json."""

    started: float
    banner_s: dict[str, float] = field(default_factory=dict)
    working_s: dict[str, float] = field(default_factory=dict)
    finished_s: dict[str, float] = field(default_factory=dict)
    returncode: int | None = None
    wall_s: float = 0.0

    def span(self, stage: str) -> float:
        """From the stage's first model load to its end: its work, without the imports before it."""
        return self.finished_s[stage] - self.working_s.get(stage, self.banner_s[stage])


def watch(proc: subprocess.Popen, run_dir: Path, log_path: Path, *, until_working: str | None = None,
          timeout_s: float = 900.0, timeline: Timeline | None = None) -> Timeline:
    """Poll the run until it exits, or until stage ``until_working`` loads its first model or ends,
    recording the stage timeline."""
    timeline = timeline or Timeline(started=time.monotonic())
    deadline = time.monotonic() + timeout_s
    while True:
        now = time.monotonic() - timeline.started
        for stage in banners(log_path):
            timeline.banner_s.setdefault(stage, now)
            if stage not in timeline.working_s and MODEL_LOADING in output_of(log_path, stage):
                timeline.working_s[stage] = now
        for stage in finished_stages(run_dir):
            timeline.finished_s.setdefault(stage, now)
        if until_working in timeline.working_s or until_working in timeline.finished_s:
            return timeline
        code = proc.poll()
        if code is not None:
            timeline.returncode = code
            timeline.wall_s = time.monotonic() - timeline.started
            for stage in finished_stages(run_dir):
                timeline.finished_s.setdefault(stage, timeline.wall_s)
            return timeline
        if time.monotonic() > deadline:
            kill_group(proc)
            raise TimeoutError(f"the tiny run did not end within {timeout_s:.0f} s; log: {log_path}")
        time.sleep(POLL_S)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the run's whole process group (no child survives) and reap it."""
    import signal

    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
