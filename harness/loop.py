"""The ICR loop: evaluate pi_t, sample, score, build pairs, train -> pi_{t+1}; repeat; evaluate.

Every stage writes into the run store and is skipped or resumed on a rerun, so killing the run at
any point and starting the same command again ends with the same artifacts as an uninterrupted run
(seeds are fixed per stage and per batch).

Run layout::

    RUN/manifest.json, stages.json, config.yaml
    RUN/iter_{t}/samples.jsonl, scored.jsonl, pairs.jsonl, pairs.summary.json, model/
    RUN/eval/iter_{t}/{lang}/model_outputs.json, annotations.json, metrics.json
    RUN/results/<run>-iter{t}/...          (the run's rows in the results layout)
    RUN/leaderboard.csv

Example::

    from harness.config import load_config
    from harness.loop import run_icr
    run_icr(load_config("configs/demo.yaml"), iterations=1)
"""

from __future__ import annotations

import contextlib
import gc
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from rich.console import Console

from harness.config import RunConfig
from harness.store import RunStore, config_differences
from xlpref.data import Instruction, TrainPrompt, load_instructions, load_reference_outputs, load_train_prompts
from xlpref.errors import InputError
from xlpref.jsonio import read_jsonl, write_json_atomic, write_jsonl_atomic


@dataclass
class RunContext:
    """What every stage of a run needs: config, store, data, console and the stage clock."""

    config: RunConfig
    store: RunStore
    console: Console
    prompts: dict[str, list[TrainPrompt]]
    instructions: dict[str, list[Instruction]]
    references: dict[str, list[dict]]

    def stage_done(self, name: str, seconds: float, **summary: Any) -> None:
        self.store.mark_done(name, {"seconds": round(seconds, 2), **summary})


def load_run_data(config: RunConfig) -> tuple[dict, dict, dict]:
    """Training prompts, evaluation instructions and reference outputs, validated up front."""
    langs = config.languages
    prompt_langs = sorted(set(langs) | {"en"})
    prompts = load_train_prompts(config.data.train_prompts, prompt_langs, limit=config.data.prompt_limit)
    instructions = load_instructions(config.data.eval_instructions, langs)
    if config.data.eval_limit:
        instructions = {lang: rows[: config.data.eval_limit] for lang, rows in instructions.items()}
    references = {
        lang: load_reference_outputs(Path(config.data.reference_outputs) / f"{lang}.json", rows)
        for lang, rows in instructions.items()
    }
    return prompts, instructions, references


def _release() -> None:
    """Return a finished stage's memory: objects in reference cycles, then the CUDA allocator's cache.

    Without ``empty_cache`` the parent keeps the stage's freed blocks reserved on GPU 0, and the next
    training rank 0 or vLLM engine (which checks free memory) finds too little.
    """
    gc.collect()
    torch = sys.modules.get("torch")  # a stage that never imported torch has nothing cached
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


# -- the stages -------------------------------------------------------------------------------------

def evaluate_policy(ctx: RunContext, t: int, policy: str) -> dict[str, dict]:
    """X-AlpacaEval evaluation of pi_t: outputs per language, judge annotations, metrics."""
    from harness.evaluation.judging import evaluate_outputs
    from harness.evaluation.model_outputs import generate_outputs
    from harness.judges.loading import load_judge
    from harness.trackers import log_iteration_metrics
    from xlpref.sampling import SamplingParams

    cfg = ctx.config.evaluation
    stage = f"eval/iter_{t}"
    out_dir = ctx.store.path("eval", f"iter_{t}")
    if ctx.store.is_done(stage):
        return {lang: _read_metrics(out_dir / lang) for lang in ctx.config.languages}
    start = time.perf_counter()
    params = SamplingParams(n=1, temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                            seed=ctx.config.seed + t, batch_size=cfg.batch_size)
    ctx.console.rule(f"[bold]iteration {t}: evaluate {policy}")
    paths = generate_outputs(policy, ctx.instructions, out_dir, generator=f"{ctx.config.name}-iter{t}",
                             backend=cfg.backend, params=params, compute=ctx.config.compute,
                             **_vllm_options(ctx, cfg.backend, params.seed))
    _release()
    judge = load_judge(cfg.judge, **cfg.judge_options)
    metrics = {}
    try:
        for lang in ctx.config.languages:
            metrics[lang] = evaluate_outputs(paths[lang], ctx.references[lang], judge, out_dir / lang,
                                             instruction_difficulty=ctx.config.data.instruction_difficulty,
                                             seed=cfg.switch_seed, lang=lang, drift_check=cfg.drift_check,
                                             drift_threshold=cfg.drift_threshold,  # pinned: pi_0's evaluation
                                             drift_source=ctx.store.path("eval", "iter_0", lang) if t else None)
    finally:
        getattr(judge, "close", lambda: None)()  # a local judge's model goes before lm-eval loads the policy
        _release()
    tokens = sum(m.get("n_total", 0) for m in metrics.values())
    _record_results(ctx, t, policy, out_dir, judge)
    _release()
    ctx.stage_done(stage, time.perf_counter() - start, items=tokens)
    log_iteration_metrics(ctx.config.training.report_to, ctx.store.root, t, metrics, run_name=ctx.config.name)
    return metrics


def _read_metrics(folder: Path) -> dict:
    from xlpref.jsonio import read_json

    return read_json(folder / "metrics.json")


def _model_label(ctx: RunContext, policy: str) -> str:
    """A model spec as recorded: pi_t folders inside the run are named relative to it (``iter_0/model``)."""
    path = Path(policy)
    root = ctx.store.root.resolve()
    if path.is_absolute() and root in path.resolve().parents:
        return str(path.resolve().relative_to(root))
    return policy


def _record_results(ctx: RunContext, t: int, policy: str, eval_dir: Path, judge: Any) -> None:
    """Write this iteration's evaluation as a results row (in the run, and in results_dir if set)."""
    from harness.results.rows import record_run_iteration

    # annotator and reference come from the metrics themselves (the judge and generator_1 named there).
    meta = {"model": _model_label(ctx, policy), "annotator_is_demo": judge.is_demo,
            "source": f"xlpref run {ctx.config.name} (config saved in the run's manifest)"}
    per_lang = {lang: eval_dir / lang for lang in ctx.config.languages}
    row_dirs = [record_run_iteration(ctx.store.path("results"), ctx.config.name, t, per_lang, meta)]
    if ctx.config.evaluation.results_dir:
        row_dirs.append(record_run_iteration(ctx.config.evaluation.results_dir, ctx.config.name, t, per_lang, meta))
    cfg = ctx.config.evaluation
    if cfg.capability_tasks:
        from harness.evaluation.capabilities import expand_tasks, record_capabilities, run_capability_suite

        tasks = expand_tasks(cfg.capability_tasks, ctx.config.languages)
        scores = run_capability_suite(policy, tasks, include_path=cfg.capability_include_path,
                                      limit=cfg.capability_limit, seed=ctx.config.seed)
        for row_dir in row_dirs:
            record_capabilities(row_dir, scores)


def sample_responses(ctx: RunContext, t: int, policy: str) -> list[dict]:
    """pi_t answers every training prompt in every training language, n times."""
    from xlpref.ray_stages import make_stage_sampler
    from xlpref.sampling import SampleRequest, SamplingParams, sample_to_log

    cfg = ctx.config.sampling
    stage = f"iter_{t}/samples"
    log = ctx.store.record_log(stage, key=("lang", "id", "sample_index"))
    # A log finished by a run killed before it recorded the stage still goes through below (its
    # records are checked and returned without sampling), so stages.json holds every stage.
    if log.is_finished and ctx.store.is_done(stage):
        return log.records
    english = {p.instruction_id: p.instruction for p in ctx.prompts["en"]}
    requests = [SampleRequest(id=p.instruction_id, lang=lang, prompt=p.instruction, prompt_en=english[p.instruction_id])
                for lang in ctx.config.languages for p in ctx.prompts[lang]]
    params = SamplingParams(n=cfg.n, temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                            seed=ctx.config.seed + t, batch_size=cfg.batch_size)
    ctx.console.rule(f"[bold]iteration {t}: sample ({cfg.backend}, n={cfg.n})")
    start = time.perf_counter()
    sampler = make_stage_sampler(cfg.backend, policy, ctx.config.compute,
                                 **_vllm_options(ctx, cfg.backend, params.seed))
    try:
        records = sample_to_log(sampler, requests, params, log)
    finally:
        sampler.close()
        _release()
    ctx.stage_done(stage, time.perf_counter() - start, records=len(records),
                   tokens=sum(r.get("n_response_tokens", 0) for r in records),
                   **_compute_summary(getattr(sampler, "report", None)))
    return records


def _compute_summary(report: dict | None) -> dict:
    """A Ray stage's workers, nodes and per-worker records and seconds, for stages.json (nothing when local)."""
    return {"compute": report} if report else {}


def _vllm_options(ctx: RunContext, backend: str, seed: int) -> dict:
    """The sampling section's engine settings, for sampling and evaluation outputs alike."""
    if backend != "vllm":
        return {}
    cfg = ctx.config.sampling
    return {"tensor_parallel_size": cfg.tensor_parallel_size, "is_seeded_per_request": cfg.is_seeded_per_request,
            "seed": seed}


def reward_models(ctx: RunContext, policy: str) -> tuple[str, str]:
    """The (pi_dpo, pi_ref) pair forming the reward: the original pair, or pi_t with the original reference."""
    models = ctx.config.models
    return (models.policy if models.reward_pair == "original" else policy), models.reference


def build_preference_pairs(ctx: RunContext, t: int, policy: str, samples: list[dict]) -> list[dict]:
    """Score the samples with the implicit reward (or run another annotator) and build pairs."""
    from xlpref.registry import resolve

    cfg = ctx.config.annotator
    stage = f"iter_{t}/pairs"
    pairs_path = ctx.store.path(f"iter_{t}", "pairs.jsonl")
    if ctx.store.is_done(stage):
        return read_jsonl(pairs_path)
    ctx.console.rule(f"[bold]iteration {t}: annotate ({cfg.name}"
                     + (f", {cfg.reward} reward)" if cfg.name == "implicit-reward" else ")"))
    start = time.perf_counter()
    annotator = resolve("annotator", cfg.name)(cfg, seed=ctx.config.seed + t, console=ctx.console)
    reward_policy, reference = reward_models(ctx, policy)
    result = annotator.annotate(
        samples=samples, policy=policy, reward_policy=reward_policy, reference=reference,
        prompts=ctx.prompts, languages=ctx.config.languages, store=ctx.store, stage_dir=f"iter_{t}",
        compute=ctx.config.compute,
    )
    _release()
    write_json_atomic(ctx.store.path(f"iter_{t}", "pairs.summary.json"), result.summary)
    write_jsonl_atomic(pairs_path, result.pairs)
    ctx.stage_done(stage, time.perf_counter() - start, pairs=len(result.pairs),
                   tokens=sum(r.get("n_response_tokens", 0) for r in samples) if cfg.name == "implicit-reward" else None,
                   **_compute_summary(getattr(annotator, "compute_report", None)))
    return result.pairs


def train_policy(ctx: RunContext, t: int, policy: str, pairs: list[dict]) -> str:
    """DPO (+NLL) on all languages' pairs, the reference being pi_t itself; returns pi_{t+1}'s folder."""
    from xlpref.training import train_dpo

    cfg = ctx.config.training
    stage = f"iter_{t}/train"
    out_dir = ctx.store.path(f"iter_{t}", "model")
    if ctx.store.is_done(stage):
        return str(out_dir)
    if cfg.languages:
        pairs = [p for p in pairs if p["lang"] in cfg.languages]
    # An empty sampled response can win or lose a group; DPO on an empty side teaches nothing.
    n_empty = sum(1 for p in pairs if not p["chosen"].strip() or not p["rejected"].strip())
    pairs = [p for p in pairs if p["chosen"].strip() and p["rejected"].strip()]
    if not pairs:
        raise InputError(f"iteration {t}: no preference pairs to train on ({n_empty} had an empty side); "
                         "expected at least one: raise sampling.n, prompt_limit or max_new_tokens",
                         path=ctx.store.path(f"iter_{t}", "pairs.jsonl"))
    ctx.console.rule(f"[bold]iteration {t}: train ({cfg.loss}, beta={cfg.beta}, {len(pairs)} pairs)")
    start = time.perf_counter()
    config = cfg.for_iteration(seed=ctx.config.seed + t)
    if ctx.config.compute.engine == "ray":  # Ray Train forms the group of num_processes ranks (no launcher)
        result = _train_on_ray(ctx, t, policy, pairs, out_dir, config)
    elif cfg.launcher == "none":
        result = train_dpo(policy, pairs, out_dir, config)
    else:  # N processes started by accelerate or torchrun; this process waits for them
        from xlpref.distributed import launch_training

        result = launch_training(policy, pairs, out_dir, config, launcher=cfg.launcher,
                                 num_processes=cfg.num_processes, deepspeed=cfg.deepspeed)
    _release()
    ctx.stage_done(stage, time.perf_counter() - start, pairs=len(pairs), steps=result.steps,
                   dropped_empty_pairs=n_empty)
    return str(out_dir)


def _train_on_ray(ctx: RunContext, t: int, policy: str, pairs: list[dict], out_dir: Path, config: Any) -> Any:
    """The training stage as Ray Train workers in the run's Ray session, with a bar of optimizer steps."""
    from xlpref.ray_progress import ray_stage_progress
    from xlpref.ray_train import optimizer_steps, train_on_ray

    cfg, compute = ctx.config.training, ctx.config.compute
    storage = compute.storage / ctx.config.name / f"iter_{t}" if compute.storage else None
    ranks = cfg.num_processes
    steps = optimizer_steps(len(pairs), config)
    with ray_stage_progress(ctx.console, f"iter_{t}/train", total=steps, unit="steps", combine="max") as bar:
        return train_on_ray(policy, pairs, out_dir, config, num_workers=ranks, compute=compute, storage=storage,
                            deepspeed=cfg.deepspeed, board=bar.board)


# -- a rerun's config against the run's record -------------------------------------------------------

#: Config keys (dotted prefixes; the longest match wins) -> the stage kinds whose output depends on them.
#: A key absent here counts for every stage; an empty tuple: no stage's output depends on it.
STAGE_KINDS = ("eval", "samples", "pairs", "train")
CONFIG_DEPENDENTS: dict[str, tuple[str, ...]] = {
    "description": (), "iterations": (), "run_dir": (),
    "compute": (),  # where stages run: the same artifacts on any engine and number of workers
    "name": ("eval",),  # the results rows are named after the run
    "data.train_prompts": ("samples", "pairs"), "data.prompt_limit": ("samples", "pairs"),
    "data.eval_instructions": ("eval",), "data.eval_limit": ("eval",), "data.reference_outputs": ("eval",),
    "data.instruction_difficulty": ("eval",),
    "sampling": ("samples",), "annotator": ("pairs",), "training": ("train",),
    "training.report_to": (),
    "evaluation": ("eval",), "evaluation.results_dir": (), "evaluation.is_enabled": (),
    "evaluation.n_bootstrap": (),  # the run's leaderboard deltas, rewritten on every run
}


def config_dependents(key: str) -> tuple[str, ...]:
    """The stage kinds whose output a config key decides (see :data:`CONFIG_DEPENDENTS`)."""
    parts = key.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in CONFIG_DEPENDENTS:
            return CONFIG_DEPENDENTS[prefix]
    return STAGE_KINDS


def started_stages(store: RunStore, iterations: int) -> dict[str, list[str]]:
    """Stage kind -> the stages of that kind that finished or left output (a partial log, a folder)."""
    found: dict[str, list[str]] = {kind: [] for kind in STAGE_KINDS}
    for t in range(iterations + 1):
        folder = store.path(f"iter_{t}")
        logs = [p.name for p in folder.glob("*.jsonl")] if folder.is_dir() else []
        traces = {
            "eval": (f"eval/iter_{t}", store.path("eval", f"iter_{t}").exists()),
            "samples": (f"iter_{t}/samples", any(name.startswith("samples.") for name in logs)),
            # scored records, pairs, or an annotator's own logs (LIDR's answers and translations)
            "pairs": (f"iter_{t}/pairs", any(not name.startswith("samples.") for name in logs)),
            "train": (f"iter_{t}/train", store.path(f"iter_{t}", "model").exists()),
        }
        for kind, (stage, has_output) in traces.items():
            if has_output or store.is_done(stage):
                found[kind].append(stage)
    return found


def check_config_matches_run(store: RunStore, config: RunConfig) -> None:
    """Refuse a rerun whose config differs from the run's recorded one in a key that started work depends on.

    Raises:
        InputError: naming the differing keys and the stages that were made with the recorded values (exit 2).
    """
    manifest = store.read_manifest()
    if not manifest or "config" not in manifest:
        return
    recorded = manifest["config"]
    differing = config_differences(recorded, config.resolved())
    iterations = max(int(recorded.get("iterations") or 0), int(manifest.get("iterations") or 0), config.iterations)
    started = started_stages(store, iterations)
    blocked = {key: sorted({s for kind in config_dependents(key) for s in started[kind]}) for key in differing}
    blocked = {key: stages for key, stages in blocked.items() if stages}
    if blocked:
        lines = "; ".join(f"{key} (recorded {_dotted(recorded, key)!r}, now {_dotted(config.resolved(), key)!r}; "
                          f"made: {', '.join(stages)})" for key, stages in sorted(blocked.items()))
        raise InputError(f"the run was made with another config: {lines}; expected the recorded config "
                         "(only keys no finished or started stage depends on may change, e.g. iterations), "
                         "or a new run directory", path=store.manifest_path)


def _dotted(config: dict, key: str) -> Any:
    value: Any = config
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


# -- one iteration, and the run ---------------------------------------------------------------------

def run_iteration(ctx: RunContext, t: int, policy: str) -> str:
    """One ICR iteration, top to bottom: evaluate pi_t, sample, score + pairs, train -> pi_{t+1}."""
    from xlpref.registry import resolve

    if ctx.config.evaluation.is_enabled:
        evaluate_policy(ctx, t, policy)
    # LIDR makes its own greedy answers: sampling is skipped for annotators that do not need samples.
    needs_samples = getattr(resolve("annotator", ctx.config.annotator.name), "needs_samples", True)
    samples = sample_responses(ctx, t, policy) if needs_samples else []
    pairs = build_preference_pairs(ctx, t, policy, samples)
    return train_policy(ctx, t, policy, pairs)


def run_icr(config: RunConfig, *, iterations: int | None = None, console: Console | None = None) -> RunContext:
    """Run (or resume) the whole loop and end with the run's leaderboard."""
    console = console or Console(stderr=True)
    iterations = config.iterations if iterations is None else iterations
    # Data first: bad data fails before the run directory is created.
    prompts, instructions, references = load_run_data(config)
    if config.training.report_to:  # a missing tracker package fails now, not after the first evaluation
        from xlpref.training import check_trackers

        check_trackers(config.training.report_to)
    store = RunStore(config.run_dir)
    store.remove_stale_temporaries()  # left by a run killed inside an atomic write
    check_config_matches_run(store, config)  # before the manifest is rewritten to say otherwise
    with _compute_session(config, console) as cluster:
        store.write_manifest(config.resolved(), reward_pair=config.models.reward_pair, iterations=iterations,
                             reward_models={"t=0": {"policy": config.models.policy,
                                                    "reference": config.models.reference},
                                            "t>=1": {"policy": "pi_0" if config.models.reward_pair == "original"
                                                     else "pi_t", "reference": config.models.reference}},
                             **({"cluster": cluster} if cluster else {}))
        ctx = RunContext(config, store, console, prompts, instructions, references)
        policy = config.models.policy
        for t in range(iterations):
            policy = run_iteration(ctx, t, policy)
        if config.evaluation.is_enabled:
            evaluate_policy(ctx, iterations, policy)
    return ctx


@contextlib.contextmanager
def _compute_session(config: RunConfig, console: Console) -> Iterator[dict | None]:
    """One Ray session for the whole run when ``compute.engine`` is ray (every stage joins it); yields the
    cluster's nodes, resources and Ray version for the manifest, or None for a local run."""
    if config.compute.engine != "ray":
        yield None
        return
    from xlpref.cluster import ray_session
    from xlpref.ray_progress import dashboard_url

    with ray_session(config.compute) as cluster:
        import ray

        nodes = len(cluster["nodes"])
        console.print(f"Ray {cluster['ray_version']}: {nodes} node{'s' * (nodes != 1)}, "
                      f"{cluster['resources'].get('CPU', 0):g} CPUs, {cluster['resources'].get('GPU', 0):g} GPUs")
        url = dashboard_url(ray)
        if url:
            console.print(f"Ray dashboard: http://{url}")
        yield cluster
