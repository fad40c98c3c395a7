"""One small registry of lazy ``"module:attr"`` strings per stage kind.

Nothing is imported until a name is resolved, so listing names has no import-time side effects.
An unknown name raises an error listing the names that exist.

Example::

    from xlpref.registry import resolve
    sampler_cls = resolve("sampler", "hf")
"""

from __future__ import annotations

import importlib
from typing import Any

from xlpref.errors import InputError

REGISTRY: dict[str, dict[str, str]] = {
    "sampler": {
        "hf": "xlpref.sampling:HFSampler",
        "vllm": "xlpref.sampling_vllm:VLLMSampler",
    },
    "reward": {
        "cross-lingual": "xlpref.reward:CrossLingualReward",
        "multilingual": "xlpref.reward:MultilingualReward",
        "translate-to-english": "xlpref.reward:TranslateToEnglishReward",
    },
    "annotator": {
        "implicit-reward": "xlpref.pairs:ImplicitRewardAnnotator",
        "lidr": "xlpref.lidr:LIDRAnnotator",
    },
}


def names(kind: str) -> list[str]:
    """Registered names of one stage kind."""
    if kind not in REGISTRY:
        raise InputError(f"unknown stage kind '{kind}'; expected one of {sorted(REGISTRY)}")
    return sorted(REGISTRY[kind])


def resolve(kind: str, name: str) -> Any:
    """Import and return the object registered as ``name`` for ``kind``."""
    entries = REGISTRY.get(kind)
    if entries is None:
        raise InputError(f"unknown stage kind '{kind}'; expected one of {sorted(REGISTRY)}")
    if name not in entries:
        raise InputError(f"unknown {kind} '{name}'; expected one of {sorted(entries)}")
    return import_target(entries[name])


def import_target(target: str) -> Any:
    """Import and return the object a ``"module:attr"`` string names."""
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)
