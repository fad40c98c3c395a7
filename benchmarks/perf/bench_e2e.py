"""End to end: one iteration of the demo loop, timed per stage from the run's ``stages.json``.

Two sources (by default the fresh run happens only when the existing run is missing):

- ``run_dir``: an existing run (e.g. the one ``make demo`` leaves in ``runs/demo``): its stages as
  recorded, nothing re-run;
- a fresh run: ``configs/demo.yaml`` extended with smaller limits (``prompt_limit``, ``eval_limit``,
  token limits; results kept out of the repository's ``results/``), run by ``xlpref run`` in a
  subprocess into a temporary folder, one iteration, then its ``stages.json``.

The demo's policy (``gemma-3-270m-en-dpo``) is built on first use, which is set-up, not the iteration:
without it the fresh run is skipped with that reason unless ``build_policy`` is set.

Example::

    from benchmarks.perf.bench_e2e import E2EConfig, run_e2e
    print(run_e2e(E2EConfig(run_dir="runs/demo", is_fresh=False)))
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO / "configs" / "demo.yaml"


@dataclass
class E2EConfig:
    run_dir: str | None = "runs/demo"
    is_fresh: bool | None = None  # None: only when run_dir has no stages.json
    prompt_limit: int = 4
    eval_limit: int = 4
    sampling_max_new_tokens: int = 32
    eval_max_new_tokens: int = 32
    build_policy: bool = False
    timeout_s: int = 1500

    @classmethod
    def quick(cls) -> "E2EConfig":
        return cls(prompt_limit=2, eval_limit=2, sampling_max_new_tokens=16, eval_max_new_tokens=16)


def stage_rows(stages: dict[str, dict]) -> list[dict]:
    """(stage, seconds, tokens) in the order the stages ran, plus the total."""
    rows = [{"stage": name, "seconds": float(info.get("seconds", 0.0)), "tokens": info.get("tokens"),
             "records": info.get("records", info.get("pairs", info.get("items")))} for name, info in stages.items()]
    return rows + [{"stage": "total", "seconds": sum(r["seconds"] for r in rows), "tokens": None, "records": None}]


def _policy_is_built() -> bool:
    from xlpref.models import ENGLISH_DPO_SPEC, cache_dir
    from xlpref.training import completed_training

    return completed_training(cache_dir() / "models" / ENGLISH_DPO_SPEC) is not None


def fresh_run(config: E2EConfig) -> dict:
    """Run one reduced demo iteration with ``xlpref run`` in a subprocess; its stages or the reason it failed."""
    from xlpref.jsonio import read_json

    demo = yaml.safe_load(DEMO_CONFIG.read_text(encoding="utf-8"))
    if demo.get("models", {}).get("policy") == "gemma-3-270m-en-dpo" and not (config.build_policy or _policy_is_built()):
        return {"error": "the demo's English DPO policy (gemma-3-270m-en-dpo) is not built yet: run `make demo` "
                         "once (or pass --e2e-build-policy); its build is set-up, not part of an iteration"}
    with tempfile.TemporaryDirectory(prefix="xlpref-bench-e2e-") as folder:
        run_dir = Path(folder) / "run"
        config_path = Path(folder) / "bench_demo.yaml"
        overrides = {
            "extends": str(DEMO_CONFIG), "name": "bench-demo", "iterations": 1, "run_dir": str(run_dir),
            "data": {"prompt_limit": config.prompt_limit, "eval_limit": config.eval_limit},
            "sampling": {"max_new_tokens": config.sampling_max_new_tokens},
            "evaluation": {"max_new_tokens": config.eval_max_new_tokens, "results_dir": None},
        }
        config_path.write_text(yaml.safe_dump(overrides), encoding="utf-8")
        command = [sys.executable, "-m", "harness.cli", "run", str(config_path), "--iterations", "1"]
        start = time.perf_counter()
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=config.timeout_s, cwd=REPO)
        except subprocess.TimeoutExpired:
            return {"error": f"the demo iteration exceeded {config.timeout_s} s"}
        seconds = time.perf_counter() - start
        stages_path = run_dir / "stages.json"
        if done.returncode != 0 or not stages_path.exists():
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            return {"error": f"`xlpref run` exit code {done.returncode}: {' | '.join(tail)}"}
        return {"config": overrides, "process_seconds": seconds, "stages": stage_rows(read_json(stages_path))}


def run_e2e(config: E2EConfig, *, log: Any = print) -> dict:
    """Stage breakdowns of an existing run and of a fresh reduced demo iteration."""
    from xlpref.jsonio import read_json

    result: dict[str, Any] = {}
    if config.run_dir:
        path = (REPO / config.run_dir if not Path(config.run_dir).is_absolute() else Path(config.run_dir))
        stages_path = path / "stages.json"
        if stages_path.exists():
            result["existing_run"] = {"run_dir": str(path), "stages": stage_rows(read_json(stages_path))}
        else:
            result["existing_run"] = {"error": f"no stages.json in {path} (run `make demo` first)"}
    is_fresh = config.is_fresh if config.is_fresh is not None else "stages" not in result.get("existing_run", {})
    if is_fresh:
        log("e2e: running one reduced demo iteration (xlpref run, subprocess)")
        result["fresh_run"] = fresh_run(config)
        if "error" in result["fresh_run"]:
            log(f"e2e: not available: {result['fresh_run']['error']}")
    return result
