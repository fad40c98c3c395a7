"""Judge a model's outputs against reference outputs, AlpacaEval's way, and write annotations and metrics.

For each instruction (aligned by ``id``, or by instruction text when the outputs carry no ids) the
pair (output_1 = reference, output_2 = model) is shown to the judge in an order randomised per
example exactly as AlpacaEval does (alpaca-eval's ``RandomSwitchTwoColumnsProcessor``, seeded by the
instruction text and ``seed``; AlpacaEval's default seed is 0), and the judge's preference is mapped
back (``3 - p`` when switched). Identical outputs get 1.5 without a judge call, as in AlpacaEval.
Pairs the judge answered with neither token are left out of the annotations, as AlpacaEval does, and
counted (``n_unparsed``).

The judge's answers are cached in an append-only JSONL file, one line per answer, flushed as each
chunk of pairs is judged, keyed by ``sha256(judge config hash, instruction, shown output_1, shown
output_2)``: re-evaluating unchanged outputs makes no judge call, and a run stopped midway (a server
that died: the answers it gave before are kept, even those of an unfinished chunk) resumes where it
stopped.

Example::

    from harness.evaluation.judging import evaluate_outputs
    from harness.judges.loading import load_judge
    from xlpref.data import MINI_DIR, load_instructions, load_reference_outputs
    judge = load_judge("local_hf_logprob", model="tiny-random-llama")
    instructions = load_instructions(MINI_DIR / "x_alpacaeval" / "instructions", ["es"])["es"]
    refs = load_reference_outputs(MINI_DIR / "x_alpacaeval/reference_outputs/gpt-4-turbo-2024-04-09/es.json",
                                  instructions)
    print(evaluate_outputs("out/es/model_outputs.json", refs, judge, "out/es/local_hf_logprob"))
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any, Callable, Sequence

from harness.evaluation.drift import DEFAULT_DRIFT_THRESHOLD, check_drift, drift_message
from harness.judges.api import JudgeUnavailableError
from harness.judges.base import Judge, JudgeItem, Judgement, alpaca_eval_modules
from harness.judges.loading import read_agreement
from harness.evaluation.model_outputs import load_model_outputs
from xlpref.errors import InputError
from xlpref.jsonio import append_jsonl_durably, iter_jsonl, read_json, write_json_atomic, write_jsonl_atomic

log = logging.getLogger(__name__)

#: AlpacaEval's name for the column saying the judge saw the outputs in swapped order.
SWITCH_COLUMN = "is_switched_outputs"


def annotation_key(config_hash: str, instruction: str, output_1: str, output_2: str) -> str:
    """The cache key of one judge question: the judge config and the pair as shown."""
    text = json.dumps([config_hash, instruction, output_1, output_2], ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class AnnotationCache:
    """Judge answers by :func:`annotation_key`, in an append-only JSONL file (in memory when ``path`` is None)."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self._answers: dict[str, dict] = {}
        if self.path is not None and self.path.exists():
            for _, record in iter_jsonl(self.path, allow_truncated_tail=True):
                if "key" not in record:
                    raise InputError("cache record without 'key'; expected a judge cache file", path=self.path)
                self._answers[record["key"]] = record
            if not self.path.read_bytes().endswith(b"\n") and self.path.stat().st_size:
                write_jsonl_atomic(self.path, self._answers.values())  # drop a line torn by a crash

    def __contains__(self, key: str) -> bool:
        return key in self._answers

    def __getitem__(self, key: str) -> dict:
        return self._answers[key]

    def add(self, records: Sequence[dict]) -> None:
        """Keep ``records`` (each with ``key``); on disk they are flushed and fsynced before returning."""
        for record in records:
            self._answers[record["key"]] = record
        if self.path is None or not records:
            return
        append_jsonl_durably(self.path, records)


def align_outputs(model_outputs: Sequence[dict], reference_outputs: Sequence[dict]) -> list[tuple[dict, dict]]:
    """(model record, reference record) per model output, by ``id`` or else by instruction text.

    Raises:
        InputError: a model output without a reference, or an instruction text that differs from the
            reference's for the same id (e.g. outputs of another language).
    """
    refs_by_id = {ref["id"]: ref for ref in reference_outputs if "id" in ref}
    refs_by_text = {ref["instruction"].strip(): ref for ref in reference_outputs}
    has_ids = [("id" in rec) for rec in model_outputs]
    if any(has_ids) and not all(has_ids):
        raise InputError("some model outputs have an 'id' and some do not; expected all or none", field="id")
    pairs = []
    for index, record in enumerate(model_outputs):
        if "id" in record:
            ref = refs_by_id.get(record["id"])
            if ref is None:
                raise InputError(f"no reference output for id {record['id']!r}; expected ids of the reference "
                                 "outputs", record=index, field="id")
            if ref["instruction"].strip() != record["instruction"].strip():
                raise InputError(f"instruction differs from the reference's for id {record['id']!r}; expected "
                                 "outputs for the same instructions (same language)", record=index,
                                 field="instruction")
        else:
            ref = refs_by_text.get(record["instruction"].strip())
            if ref is None:
                raise InputError("instruction not found among the reference outputs; expected the same "
                                 "instructions (or an 'id' field)", record=index, field="instruction")
        pairs.append((record, ref))
    return pairs


def _switch(frame: Any, seed: int) -> tuple[Any, Any]:
    """alpaca-eval's order randomisation: (processor, frame with outputs in shown order + switch column)."""
    def swap_preference(df: Any) -> Any:
        if df.empty or "preference" not in df.columns:
            return df
        df = df.copy()
        df["preference"] = df["preference"].apply(lambda p: 3 - p)
        return df

    processor = alpaca_eval_modules().processors.RandomSwitchTwoColumnsProcessor(
        two_columns_to_switch=["output_1", "output_2"], fn_replace_if_switch=swap_preference,
        random_seed_columns=["instruction"], _switch_column=SWITCH_COLUMN, seed=seed)
    return processor, processor.preprocess(frame)


def _judge(judge: Judge, items: list[JudgeItem]) -> list[Judgement]:
    if hasattr(judge, "judgements"):
        return judge.judgements(items)
    return [Judgement(p) for p in judge.preferences(items)]


def annotate(model_outputs: list[dict], reference_outputs: list[dict], judge: Judge, *,
             cache_path: str | Path | None, seed: int = 0, progress: bool = True,
             chunk_size: int | None = None, drift_check: int = 0, drift_threshold: float = DEFAULT_DRIFT_THRESHOLD,
             report: dict | None = None, on_chunk: Callable[[], None] | None = None) -> list[dict]:
    """AlpacaEval annotations of ``model_outputs`` against ``reference_outputs`` by ``judge``.

    Returns records in model-output order with AlpacaEval's fields (instruction, output_1, generator_1,
    output_2, generator_2, annotator, preference) plus id, dataset, is_switched_outputs, raw_completion.

    Args:
        drift_check: first re-ask this many cached pairs (:mod:`harness.evaluation.drift`); the result goes
            into ``report["judge_drift"]``.
        on_chunk: called after each judged chunk (e.g. to save the judge's counters).
    """
    import pandas as pd

    pairs = align_outputs(model_outputs, reference_outputs)
    if not pairs:
        return []
    frame = pd.DataFrame({"instruction": [m["instruction"] for m, _ in pairs],
                          "output_1": [r["output"] for _, r in pairs], "output_2": [m["output"] for m, _ in pairs]})
    processor, shown = _switch(frame, seed)
    keys = [annotation_key(judge.config_hash, row.instruction, row.output_1, row.output_2)
            for row in shown.itertuples()]
    is_same = (shown["output_1"] == shown["output_2"]).tolist()
    cache = AnnotationCache(cache_path)
    items: dict[str, JudgeItem] = {}
    for row, key, same in zip(shown.itertuples(), keys, is_same):
        if not same and key not in items:
            items[key] = JudgeItem(row.instruction, row.output_1, row.output_2)
    if drift_check and report is not None:  # before any new answer joins the cache
        report["judge_drift"] = check_drift(lambda batch: _judge(judge, batch), items, cache, k=drift_check, seed=seed,
                                            threshold=drift_threshold)
        if on_chunk is not None:
            on_chunk()
    size = chunk_size or getattr(judge, "chunk_size", 16)
    if getattr(judge, "batch_size", 1) > 1:
        # A batched judge's answers depend on their batch's padding (to ~1e-7): chunks are planned over every
        # pair, and a chunk missing an answer is judged again in full, so a resumed evaluation equals an
        # uninterrupted one to the bit. Unbatched (API) judges ask only for what is missing.
        planned = list(items)
        chunks = [planned[i:i + size] for i in range(0, len(planned), size)]
        chunks = [chunk for chunk in chunks if any(k not in cache for k in chunk)]
    else:
        missing = [k for k in items if k not in cache]
        chunks = [missing[i:i + size] for i in range(0, len(missing), size)]
    if chunks:
        _judge_into_cache(judge, {k: items[k] for chunk in chunks for k in chunk}, cache, chunks, progress, on_chunk)
    shown["preference"] = [1.5 if same else _cached_preference(cache[key]) for key, same in zip(keys, is_same)]
    switched = shown[SWITCH_COLUMN].tolist()
    final = processor.postprocess(shown)  # outputs back in (reference, model) order; 3 - p where switched
    annotations = []
    for (model_rec, ref_rec), key, same, was_switched, preference in zip(
            pairs, keys, is_same, switched, final["preference"].tolist()):
        if preference is None or math.isnan(preference):
            continue
        annotations.append({
            "id": model_rec.get("id", ref_rec.get("id")),
            "dataset": model_rec.get("dataset", ref_rec.get("dataset", "")),
            "instruction": model_rec["instruction"],
            "output_1": ref_rec["output"], "generator_1": ref_rec.get("generator", "reference"),
            "output_2": model_rec["output"], "generator_2": model_rec.get("generator", "model"),
            "annotator": judge.name, "preference": float(preference), SWITCH_COLUMN: bool(was_switched),
            "raw_completion": None if same else cache[key].get("raw_completion"),
            "annotator_config_hash": judge.config_hash,
        })
    if len(annotations) < len(pairs):
        log.warning("judge %s named neither output for %d of %d pairs; they are left out, as AlpacaEval does",
                    judge.name, len(pairs) - len(annotations), len(pairs))
    return annotations


def _cached_preference(record: dict) -> float:
    value = record.get("preference")
    return math.nan if value is None else float(value)


def _judge_into_cache(judge: Judge, todo: dict[str, JudgeItem], cache: AnnotationCache, chunks: list[list[str]],
                      progress: bool, on_chunk: Callable[[], None] | None = None) -> None:
    """Judge ``chunks`` of ``todo``'s keys in order; answers for keys the cache lacks are added chunk by chunk."""
    from xlpref.sampling import progress_bar

    def record(key: str, judgement: Judgement) -> dict:
        return {"key": key, "preference": None if math.isnan(judgement.preference) else judgement.preference,
                "raw_completion": judgement.raw_completion, "annotator": judge.name,
                "config_hash": judge.config_hash}

    keys = list(todo)
    kept = 0
    with progress_bar(len(keys), progress, f"judging ({judge.name})") as bar:
        for chunk in chunks:
            try:
                judgements = _judge(judge, [todo[k] for k in chunk])
            except JudgeUnavailableError as exc:  # keep the answers of this chunk that did come in
                cache.add([record(chunk[i], j) for i, j in sorted(exc.finished.items()) if chunk[i] not in cache])
                kept += len(exc.finished)
                if not kept:
                    outcome = "none came in; rerun the same command once the server answers"
                elif cache.path is None:
                    outcome = f"{kept} came in but are not kept (no cache file)"
                else:
                    outcome = f"{kept} are kept in {cache.path}; rerun the same command to resume"
                raise JudgeUnavailableError(f"{exc}; of the {len(keys)} answers this evaluation asked for, {outcome}",
                                            exc.finished) from None
            cache.add([record(k, j) for k, j in zip(chunk, judgements) if k not in cache])
            kept += len(chunk)
            if on_chunk is not None:
                on_chunk()
            if bar is not None:
                bar.update(bar.tasks[0].id, advance=len(chunk))


def evaluate_outputs(model_outputs: str | Path | list[dict], reference_outputs: list[dict], judge: Judge,
                     out_dir: str | Path, *, instruction_difficulty: Any = None, cache_path: str | Path | None = None,
                     seed: int = 0, progress: bool = True, lang: str | None = None, drift_check: int = 0,
                     drift_threshold: float = DEFAULT_DRIFT_THRESHOLD, drift_source: str | Path | None = None) -> dict:
    """Annotate, then write ``out_dir/annotations.json`` and ``out_dir/metrics.json``; returns the metrics.

    ``out_dir/judge_calls.json`` holds the judge's calls, tokens and cost summed over every invocation
    that worked on this evaluation (a resumed one included), saved after each judged chunk.

    Args:
        model_outputs: a ``model_outputs.json`` path or its records (validated either way).
        instruction_difficulty: a CSV path or a Series (``harness.metrics.difficulty.load_instruction_difficulty``)
            for the length-controlled win rate; None fits it without.
        cache_path: the judge cache (default ``out_dir/judge_cache.jsonl``).
        lang: the instructions' language; with it the metrics gain the answer-language columns of
            :func:`harness.metrics.language.language_metrics` (target and mixed rate, gated win rate).
        drift_check: re-ask this many cached pairs first (:mod:`harness.evaluation.drift`); the result is
            ``judge_drift`` in the metrics.
        drift_source: an earlier evaluation's folder (annotations.json, judge_cache.jsonl) whose pairs are
            the pinned ones (a run pins its first evaluation's); default: this evaluation's own cached pairs.
    Raises:
        InputError: the judge gave no usable preference for any output (nothing is written but the cache
            and the judge's counters).
    """
    from harness.metrics.difficulty import load_instruction_difficulty
    from harness.metrics.winrate import compute_metrics

    out_dir = Path(out_dir)
    if isinstance(model_outputs, (str, Path)):
        records = load_model_outputs(model_outputs)
    else:
        records = load_model_outputs(model_outputs, where="model outputs")
    if isinstance(instruction_difficulty, (str, Path)):
        instruction_difficulty = load_instruction_difficulty(instruction_difficulty)
    calls = JudgeCalls(out_dir / "judge_calls.json", judge)
    report: dict = {}
    try:
        if drift_check and drift_source is not None:
            report["judge_drift"] = drift_from_earlier(judge, Path(drift_source), k=drift_check, seed=seed,
                                                       threshold=drift_threshold)
            calls.save()
        annotations = annotate(records, reference_outputs, judge,
                               cache_path=cache_path if cache_path is not None else out_dir / "judge_cache.jsonl",
                               seed=seed, progress=progress, drift_threshold=drift_threshold,
                               drift_check=drift_check if drift_source is None else 0,
                               report=report, on_chunk=calls.save)
    finally:
        calls.save()
    if not annotations:  # no empty annotations.json: a stage that produced nothing leaves no artifact
        raise InputError(f"judge {judge.name} gave no usable preference for any of {len(records)} outputs; nothing "
                         "was written", path=out_dir / "annotations.json")
    write_json_atomic(out_dir / "annotations.json", annotations)
    reference = annotations[0]["generator_1"]
    # A degenerate LC (too few annotations, separation, zero standard error) comes back as None with the reason.
    metrics = compute_metrics(annotations, instruction_difficulty=instruction_difficulty, annotator=judge.name,
                              reference=reference)
    metrics.update({
        "annotator": judge.name, "annotator_is_demo": judge.is_demo, "annotator_description": judge.description,
        "annotator_config_hash": judge.config_hash, "annotator_agreement": read_agreement(judge),
        "reference": reference, "n_unparsed": len(records) - len(annotations),
    })
    if lang is not None:
        from harness.metrics.language import language_metrics

        metrics.update(language_metrics([r["output"] for r in records], annotations, lang))
    if "judge_drift" in report:
        metrics["judge_drift"] = report["judge_drift"]
        if (message := drift_message(lang or out_dir.name, report["judge_drift"])) is not None:
            log.warning(message)
    write_json_atomic(out_dir / "metrics.json", metrics)
    return {**metrics, "judge_calls": calls.this_invocation()}


def drift_from_earlier(judge: Judge, folder: Path, *, k: int, seed: int, threshold: float) -> dict:
    """The drift check on an earlier evaluation's pairs, rebuilt as shown from its annotations.json."""
    annotations_path, cache_path = folder / "annotations.json", folder / "judge_cache.jsonl"
    items: dict[str, JudgeItem] = {}
    if annotations_path.is_file() and cache_path.is_file():
        for a in read_json(annotations_path):
            if a.get("annotator_config_hash") != judge.config_hash or a.get("raw_completion") is None:
                continue  # another judge config, or an identical pair that was never asked
            shown = (a["output_2"], a["output_1"]) if a.get(SWITCH_COLUMN) else (a["output_1"], a["output_2"])
            items[annotation_key(judge.config_hash, a["instruction"], *shown)] = JudgeItem(a["instruction"], *shown)
    return check_drift(lambda batch: _judge(judge, batch), items, AnnotationCache(cache_path), k=k, seed=seed,
                       threshold=threshold)


class JudgeCalls:
    """``judge_calls.json``: the judge's counters summed over every invocation of one evaluation.

    Kept apart from metrics.json so the metrics depend only on the annotations, not on how often the
    evaluation was interrupted. A process killed between two saves loses the calls of its last chunk.
    """

    def __init__(self, path: Path, judge: Judge) -> None:
        self.path, self.judge = path, judge
        self.before = dict(judge.counters)
        previous = read_json(path) if path.is_file() else {}
        self.previous = {k: previous.get(k, 0) for k in judge.counters}
        self.invocations = int(previous.get("invocations", 0)) + 1

    def this_invocation(self) -> dict:
        return {k: self.judge.counters[k] - self.before.get(k, 0) for k in self.judge.counters}

    def save(self) -> None:
        now = self.this_invocation()
        if not any(now.values()) and not self.path.is_file():
            return  # no call yet: no file
        total = {k: self.previous[k] + now[k] for k in now}
        total["cost_usd"] = round(total["cost_usd"], 10)
        write_json_atomic(self.path, {**total, "invocations": self.invocations, "last_invocation": now})
