"""A model's X-AlpacaEval outputs: generated through the sampler stage, or brought by the user.

:func:`generate_outputs` answers every instruction in every language once (the sampler stage,
:mod:`xlpref.sampling`, with the benchmark's evaluation decoding by default: temperature 0.6, top_p
0.9, at most 2048 new tokens, from ``benchmarks/x_alpacaeval/benchmark.yaml``) and writes AlpacaEval's
``model_outputs.json`` per language (``instruction``, ``output``, ``generator``, ``dataset``, ``id``).
Generation is resumable: records go to ``OUT/generation.jsonl`` per batch and a rerun skips them.

:func:`load_model_outputs` reads and validates outputs made anywhere else (bring your own), so they
can be evaluated without a model.

Example::

    from pathlib import Path
    from harness.evaluation.model_outputs import generate_outputs, load_model_outputs
    from xlpref.data import MINI_DIR, load_instructions
    from xlpref.sampling import SamplingParams
    instructions = load_instructions(MINI_DIR / "x_alpacaeval" / "instructions", ["en", "es"])
    paths = generate_outputs("tiny-random-llama", instructions, Path("out"), generator="tiny",
                             params=SamplingParams(temperature=0.6, top_p=0.9, max_new_tokens=16))
    print(load_model_outputs(paths["es"])[0])
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, Mapping, Sequence

from xlpref.data import Instruction
from xlpref.errors import InputError
from xlpref.jsonio import read_json, write_json_atomic

#: AlpacaEval's model_outputs.json fields, in its order.
OUTPUT_FIELDS = ("instruction", "output", "generator", "dataset", "id")


def evaluation_params(**overrides: Any) -> Any:
    """The benchmark's evaluation decoding as :class:`xlpref.sampling.SamplingParams` (one sample)."""
    from benchmarks.x_alpacaeval import load_benchmark
    from xlpref.sampling import SamplingParams

    decoding = load_benchmark().decoding
    settings = {"n": decoding.n, "temperature": decoding.temperature, "top_p": decoding.top_p,
                "max_new_tokens": decoding.max_new_tokens}
    return SamplingParams(**{**settings, **overrides})


def generate_outputs(model: Any, instructions: Mapping[str, Sequence[Instruction]], out_dir: str | Path, *,
                     generator: str, backend: str = "hf", params: Any = None, progress: bool = True,
                     compute: Any = None, **backend_options: Any) -> dict[str, Path]:
    """Answer each instruction once per language; write ``out_dir/{lang}/model_outputs.json``.

    Args:
        model: a model spec (built-in name, folder, hub id) or a ``(model, tokenizer)`` pair.
        instructions: ``{lang: [Instruction]}`` (e.g. :func:`xlpref.data.load_instructions`).
        generator: the name written in every record (AlpacaEval's ``generator``).
        params: decoding (default: :func:`evaluation_params`); ``n`` must be 1.
        compute: a :class:`xlpref.cluster.ComputeConfig`; engine ``ray`` generates on its worker actors
            and writes their summary (workers, nodes, per-worker records and seconds) to
            ``out_dir/generation.stages.json``.
    Returns:
        ``{lang: path of its model_outputs.json}``.
    """
    from harness.store import RunStore
    from xlpref.ray_stages import make_stage_sampler
    from xlpref.sampling import SAMPLE_KEY, SampleRequest, sample_to_log

    params = params if params is not None else evaluation_params()
    if params.n != 1:
        raise InputError(f"got n={params.n}; expected one output per instruction", field="n")
    if not isinstance(generator, str) or not generator.strip():
        raise InputError("expected a non-empty generator name", field="generator")
    english = {ins.id: ins.instruction for ins in instructions.get("en", [])}
    requests = [SampleRequest(ins.id, lang, ins.instruction, english.get(ins.id, ""), {"dataset": ins.dataset})
                for lang, rows in instructions.items() for ins in rows]
    log = RunStore(out_dir).record_log("generation", key=SAMPLE_KEY)
    if log.is_finished:
        # Checked without loading the model: a finished log made with the same settings is the answer.
        name = model if isinstance(model, str) else (getattr(model[0], "name_or_path", "") or "in-memory")
        records = sample_to_log(SimpleNamespace(name=backend, model_name=name), requests, params, log)
    else:
        sampler = make_stage_sampler(backend, model, compute, **backend_options)
        try:
            records = sample_to_log(sampler, requests, params, log, progress=progress)
        finally:
            sampler.close()
        if getattr(sampler, "report", None):
            write_json_atomic(Path(out_dir) / "generation.stages.json",
                              {"generate": {"records": len(records), "compute": sampler.report}})
    by_key = {(r["lang"], r["id"]): r for r in records}
    paths = {}
    for lang, rows in instructions.items():
        outputs = [{"instruction": ins.instruction, "output": by_key[(lang, ins.id)]["response"],
                    "generator": generator, "dataset": ins.dataset, "id": ins.id} for ins in rows]
        paths[lang] = Path(out_dir) / lang / "model_outputs.json"
        write_json_atomic(paths[lang], outputs)
    return paths


def load_model_outputs(source: str | Path | Sequence[dict], *, where: str | None = None) -> list[dict]:
    """Validated AlpacaEval model outputs from a ``model_outputs.json`` path (or already-read records).

    Every record needs a non-empty ``instruction``, a string ``output`` and a ``generator`` (one per
    file); ``id`` (unique; all records or none) and ``dataset`` are optional.

    Raises:
        InputError: naming the file, the record and the field.
    """
    if isinstance(source, (str, Path)):
        path: Any = Path(source)
        data = read_json(path)
    else:
        path, data = where, source
    if not isinstance(data, list):
        raise InputError(f"expected a JSON list of AlpacaEval outputs, found {type(data).__name__}", path=path)
    if not data:
        raise InputError("no outputs; expected at least one record", path=path)
    seen_ids: dict[Any, int] = {}
    generators: set[str] = set()
    for index, record in enumerate(data):
        if not isinstance(record, dict):
            raise InputError(f"expected an object, found {type(record).__name__}", path=path, record=index)
        for name, allow_empty in (("instruction", False), ("output", True), ("generator", False)):
            if name not in record:
                raise InputError("missing field; expected instruction, output and generator in every record",
                                 path=path, record=index, field=name)
            value = record[name]
            if not isinstance(value, str) or (not allow_empty and not value.strip()):
                expected = "a string" if allow_empty else "a non-empty string"
                raise InputError(f"got {value!r:.40}; expected {expected}", path=path, record=index, field=name)
        generators.add(record["generator"])
        if "dataset" in record and not isinstance(record["dataset"], str):
            raise InputError(f"got {record['dataset']!r:.40}; expected a string", path=path, record=index,
                             field="dataset")
        if ("id" in record) != ("id" in data[0]):
            raise InputError("some records have an 'id' and some do not; expected all or none", path=path,
                             record=index, field="id")
        if "id" in record:
            value = record["id"]
            if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
                raise InputError(f"got {value!r}; expected an integer or a non-empty string", path=path,
                                 record=index, field="id")
            if value in seen_ids:
                raise InputError(f"duplicate id {value!r} (first at record {seen_ids[value]}); expected unique ids",
                                 path=path, record=index, field="id")
            seen_ids[value] = index
    if len(generators) > 1:
        raise InputError(f"{len(generators)} generators ({', '.join(sorted(generators)[:3])}); expected one model "
                         "per file", path=path, field="generator")
    return [dict(record) for record in data]
