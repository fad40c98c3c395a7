"""The X-AlpacaEval benchmark definition (``benchmark.yaml``) as a typed object, and its checksums.

Example::

    from benchmarks.x_alpacaeval import load_benchmark, verify_checksums
    from xlpref.data import default_data_dir
    bench = load_benchmark()
    print(bench.decoding, bench.reference_generator)
    print(verify_checksums(bench, default_data_dir()))   # {"x_alpacaeval/instructions/en.json": "match", ...}
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from xlpref.data import BENCHMARK_DIR
from xlpref.errors import InputError
from xlpref.languages import LANGUAGE_NAMES

BENCHMARK_FILE = BENCHMARK_DIR / "benchmark.yaml"
#: One folder per judge: alpaca-eval's ``configs.yaml`` (plus an ``xlpref`` block), its prompt template,
#: and its measured ``agreement.json``.
ANNOTATORS_DIR = BENCHMARK_DIR / "annotators"


@dataclass(frozen=True)
class Decoding:
    """Evaluation decoding settings (one sample per instruction)."""

    temperature: float
    top_p: float
    max_new_tokens: int
    n: int = 1


@dataclass(frozen=True)
class Benchmark:
    """X-AlpacaEval: languages, data sources, reference generator, decoding, checksums."""

    name: str
    languages: dict[str, str]
    instructions_per_language: int
    training_languages: list[str]
    evaluation_languages: list[str]
    reference_generator: str
    reference_languages: list[str]
    decoding: Decoding
    hub_dataset: str
    hub_revision: str
    hub_files: dict[str, str]
    sha256: dict[str, str] = field(default_factory=dict)
    sources: dict[str, Any] = field(default_factory=dict)


def _get(raw: dict, key: str, kind: type | tuple[type, ...], path: Path, where: str = "") -> Any:
    name = f"{where}.{key}" if where else key
    if not isinstance(raw, dict) or key not in raw:
        raise InputError("missing field; expected it in the benchmark definition", path=path, field=name)
    value = raw[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise InputError(f"expected {expected}, found {type(value).__name__}", path=path, field=name)
    return value


def _check_codes(codes: list, path: Path, field_name: str) -> list[str]:
    for code in codes:
        if code not in LANGUAGE_NAMES:
            raise InputError(f"unknown language code {code!r}; expected one of {sorted(LANGUAGE_NAMES)}",
                             path=path, field=field_name)
    return list(codes)


def load_benchmark(path: str | Path = BENCHMARK_FILE) -> Benchmark:
    """Read and validate a benchmark definition (default: this folder's ``benchmark.yaml``)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found; expected the benchmark definition (YAML)", path=path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        raise InputError(f"invalid YAML: {exc}", path=path, line=None if line is None else line + 1) from exc
    if not isinstance(raw, dict):
        raise InputError(f"expected a mapping at the top level, found {type(raw).__name__}", path=path)
    languages = _get(raw, "languages", dict, path)
    _check_codes(list(languages), path, "languages")
    for code, name in languages.items():
        if name != LANGUAGE_NAMES[code]:
            raise InputError(f"name {name!r} for '{code}'; expected {LANGUAGE_NAMES[code]!r} (xlpref.languages)",
                             path=path, field=f"languages.{code}")
    decoding = _get(raw, "decoding", dict, path)
    reference = _get(raw, "reference", dict, path)
    hub = _get(_get(raw, "sources", dict, path), "hub", dict, path, "sources")
    sha256 = raw.get("sha256") or {}
    for rel, digest in sha256.items():
        if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
            raise InputError("expected a 64-character lowercase hex sha256", path=path, field=f"sha256.{rel}")
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise InputError("expected a path relative to the data folder", path=path, field=f"sha256.{rel}")
    return Benchmark(
        name=_get(raw, "name", str, path),
        languages=dict(languages),
        instructions_per_language=_get(raw, "instructions_per_language", int, path),
        training_languages=_check_codes(_get(raw, "training_languages", list, path), path, "training_languages"),
        evaluation_languages=_check_codes(_get(raw, "evaluation_languages", list, path), path,
                                          "evaluation_languages"),
        reference_generator=_get(reference, "generator", str, path, "reference"),
        reference_languages=_check_codes(_get(reference, "languages", list, path, "reference"), path,
                                         "reference.languages"),
        decoding=Decoding(
            temperature=float(_get(decoding, "temperature", (int, float), path, "decoding")),
            top_p=float(_get(decoding, "top_p", (int, float), path, "decoding")),
            max_new_tokens=_get(decoding, "max_new_tokens", int, path, "decoding"),
            n=int(decoding.get("n", 1)),
        ),
        hub_dataset=_get(hub, "dataset", str, path, "sources.hub"),
        hub_revision=_get(hub, "revision", str, path, "sources.hub"),
        hub_files=dict(_get(hub, "files", dict, path, "sources.hub")),
        sha256=dict(sha256),
        sources=dict(raw["sources"]),
    )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_checksums(benchmark: Benchmark, data_dir: str | Path) -> dict[str, str]:
    """``{relative path: "match" | "differs" | "absent"}`` for every file the benchmark lists."""
    data_dir = Path(data_dir)
    status = {}
    for rel, expected in sorted(benchmark.sha256.items()):
        path = data_dir / rel
        if not path.is_file():
            status[rel] = "absent"
        else:
            status[rel] = "match" if file_sha256(path) == expected else "differs"
    return status
