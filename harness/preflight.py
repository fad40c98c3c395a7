"""Pre-flight and plan of a run: everything that can be known before work, checked in one pass.

:func:`preflight` lists every problem it finds (none stops the others from being looked for): the
judge's key variable is set, every model resolves (a built-in spec, a local folder with a
config.json, a hub id in the local cache or a reachable hub), the run and results folders can be
written, the data files of every language exist, and the GPUs the config asks for are here.
``xlpref run`` runs it before any work and refuses to start on a problem; ``xlpref run --dry-run``
prints :func:`plan` with the findings and starts nothing.

The plan counts each stage's work from the data files (prompts x languages x n samples, responses
to score, pairs at most one per prompt and language, judge calls one per instruction and language)
and estimates the judge's cost from the judge config's prices: prompt tokens are the template, the
instruction, the reference output and a model output as long as the reference, at 4 characters a
token (an estimate; the judge's counters in judge_calls.json give the real numbers).

Example::

    from harness.config import load_config
    from harness.preflight import plan, preflight, render_plan
    config = load_config("configs/demo.yaml")
    print(render_plan(plan(config), preflight(config)))
"""

from __future__ import annotations

import functools
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from harness.config import RunConfig

#: Characters per token in the cost estimate (English-like text; CJK and Thai text have fewer).
CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class Finding:
    """One pre-flight result: what was checked, whether it stops a run, and what was found."""

    check: str
    is_problem: bool
    message: str


# -- pre-flight -------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)  # one probe per pre-flight, not one per model
def _is_hub_reachable(timeout: float = 3.0) -> bool:
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def check_model(spec: str, role: str) -> Finding:
    """Whether a model spec resolves without loading it (a hub id: cached, or the hub is reachable)."""
    from xlpref.models import BUILTIN_SPECS, is_prepared, is_tiny_spec

    if is_tiny_spec(spec):
        return Finding("model", False, f"{role} {spec}: built-in tiny random model (built in seconds, no network)")
    if spec in BUILTIN_SPECS:
        state = "prepared" if is_prepared(spec) else "prepared on first use (no network)"
        return Finding("model", False, f"{role} {spec}: built-in spec, {state}")
    path = Path(spec).expanduser()
    if path.exists():
        if (path / "config.json").exists() or (path / "adapter_config.json").exists():
            return Finding("model", False, f"{role} {spec}: local folder")
        return Finding("model", True, f"{role} {spec}: folder has no config.json; expected a save_pretrained folder")
    if spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        return Finding("model", True, f"{role} {spec}: not a folder, a hub id (owner/name) or a built-in spec "
                                      f"{list(BUILTIN_SPECS)}")
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(spec, "config.json"), str):
        return Finding("model", False, f"{role} {spec}: hub id, in the local hub cache")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return Finding("model", True, f"{role} {spec}: hub id not in the local hub cache and HF_HUB_OFFLINE is set")
    if not _is_hub_reachable():
        return Finding("model", True, f"{role} {spec}: hub id not in the local hub cache and huggingface.co is "
                                      "unreachable")
    return Finding("model", False, f"{role} {spec}: hub id, downloaded on first use (huggingface.co reachable)")


def check_writable(folder: Path, what: str) -> Finding:
    """Whether ``folder`` exists writable, or its nearest existing ancestor lets it be created."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing == folder and folder.is_dir():
        ok = os.access(folder, os.W_OK)
        return Finding("output", not ok, f"{what} {folder}: " + ("exists, writable" if ok else
                       "exists, not writable; expected a writable folder"))
    if not existing.is_dir():
        return Finding("output", True, f"{what} {folder}: cannot create {what} (the regular file {existing} is in "
                                       "the way); expected a writable folder")
    ok = os.access(existing, os.W_OK | os.X_OK)
    return Finding("output", not ok, f"{what} {folder}: " + ("will be created" if ok else
                   f"cannot create {what} ({existing} is not writable); expected a writable folder"))


def check_judge(config: RunConfig) -> list[Finding]:
    from harness.judges.loading import load_judge_config

    evaluation = config.evaluation
    judge = load_judge_config(evaluation.judge, **evaluation.judge_options)  # validated by load_config
    findings = []
    env = judge.options.get("api_key_env")
    if env:
        is_set = bool(os.environ.get(env))
        required = judge.options.get("is_api_key_required", True)
        findings.append(Finding("judge key", required and not is_set,
                                f"judge {judge.name}: ${env} " + ("is set" if is_set else "is not set" +
                                ("; expected the judge's API key in it" if required else " (not required)"))))
    if judge.kind == "local_hf_logprob":
        findings.append(check_model(judge.model, "judge model"))
    return findings


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_compute(config: RunConfig) -> list[Finding]:
    """The GPUs and workers the config asks for, against this machine (or the Ray cluster's address)."""
    wanted = []
    for where, section in (("sampling", config.sampling), ("evaluation", config.evaluation)):
        # On Ray, the engines' GPUs are the workers' (compute, below); locally one engine holds tp GPUs.
        tp = getattr(section, "tensor_parallel_size", 1)
        if section.backend == "vllm" and config.compute.engine == "local" and tp > 1:
            wanted.append((tp, f"{where}: vLLM tensor_parallel_size {tp}"))
    training = config.training
    if training.launcher != "none" and training.deepspeed:
        what = f"training: {training.num_processes} processes with DeepSpeed {training.deepspeed}"
        wanted.append((training.num_processes, what))
    compute = config.compute
    if compute.engine == "ray" and compute.gpus_per_worker > 0 and compute.address is None:
        wanted.append((compute.workers * compute.gpus_per_worker,
                       f"compute: {compute.workers} Ray workers x {compute.gpus_per_worker:g} GPUs"))
    findings = []
    if compute.engine == "ray" and compute.address is not None:
        from xlpref.cluster import _check_reachable
        from xlpref.errors import InputError

        try:
            _check_reachable(compute.address, timeout=3.0)
            findings.append(Finding("compute", False, f"Ray cluster {compute.address}: reachable (its GPUs are "
                                                      "checked when the run joins it)"))
        except InputError as exc:
            findings.append(Finding("compute", True, exc.message))
    if not wanted:
        return findings + [Finding("compute", False, "no stage asks for GPUs by count")]
    have = gpu_count()
    for count, what in wanted:
        findings.append(Finding("compute", count > have, f"{what}: needs {count:g} GPUs, this machine has {have}"))
    return findings


def _data_files(config: RunConfig) -> tuple[dict[str, Path], dict[str, Path], dict[str, Path]]:
    langs = config.languages
    data = config.data
    prompts = {lang: Path(data.train_prompts) / f"{lang}.jsonl" for lang in sorted(set(langs) | {"en"})}
    instructions = {lang: Path(data.eval_instructions) / f"{lang}.json" for lang in langs}
    references = {lang: Path(data.reference_outputs) / f"{lang}.json" for lang in langs}
    return prompts, instructions, references


def check_data(config: RunConfig) -> list[Finding]:
    prompts, instructions, references = _data_files(config)
    files = [*prompts.values()]
    if config.evaluation.is_enabled:
        files += [*instructions.values(), *references.values()]
    missing = [path for path in files if not path.is_file()]
    if not missing:
        return [Finding("data", False, f"{len(files)} data files found (contents are validated when the run starts)")]
    return [Finding("data", True, f"{path}: file not found") for path in missing]


def preflight(config: RunConfig) -> list[Finding]:
    """Every check, each independent of the others' outcome; problems are those with ``is_problem``."""
    findings = check_data(config)
    if config.evaluation.is_enabled:
        findings += check_judge(config)
    findings.append(check_model(config.models.policy, "policy"))
    findings.append(check_model(config.models.reference, "reference"))
    findings.append(check_writable(Path(config.run_dir), "run directory"))
    if config.evaluation.is_enabled and config.evaluation.results_dir is not None:
        findings.append(check_writable(Path(config.evaluation.results_dir), "results directory"))
    return findings + check_compute(config)


def problems_line(findings: list[Finding]) -> str | None:
    """All problems in one line (None when there are none): the refusal a run gives before any work."""
    problems = [f.message for f in findings if f.is_problem]
    if not problems:
        return None
    return (f"pre-flight found {len(problems)} problem{'s' * (len(problems) > 1)}: "
            + "; ".join(f"({i}) {p}" for i, p in enumerate(problems, start=1))
            + " (`xlpref run CONFIG --dry-run` shows the plan and every check)")
