"""Answer-language fidelity: is an output in the language it was asked in, and is it in one language only.

Built on :mod:`xlpref.language_id` (backend, what counts as empty, the sentence rule for "mixed").

- :func:`language_report` (``xlpref language-check``): ``n`` texts, ``languages`` {code: count} of
  the non-empty ones, ``target_rate`` (percent of the non-empty texts identified as the target
  language), ``mixed_rate`` (percent of the non-empty texts with confidently identified sentences in
  two or more languages), ``empty`` (texts with fewer than ``MIN_LETTERS`` letters outside code
  blocks). Rates are None when no text is non-empty, and ``target_rate`` is None without a target.
- :func:`language_metrics` (every evaluation's metrics.json): ``target_language_rate`` and
  ``mixed_language_rate`` of the model outputs, and the language-gated win rate.
- The **language-gated win rate**: AlpacaEval's win rate after every annotation whose model output
  (output_2) is identified in a language other than the instruction's becomes a loss (preference
  1), unless the reference output (output_1) is itself identified in another language than the
  instruction's: then the instruction asked for that language (translate into English, ...) and
  the judge's preference stands. An empty model output (code only, a number) is not gated.

Example::

    from harness.metrics.language import language_report, language_gated_winrate
    print(language_report(["Hola, ¿cómo estás hoy?", "Hello, how are you today?"], "es"))
    print(language_gated_winrate(annotations, "es"))   # AlpacaEval annotations of Spanish outputs
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from xlpref.language_id import (
    DEFAULT_IDENTIFIER,
    LanguageIdentifier,
    identify,
    is_mixed,
    load_identifier,
)

#: Keys of :func:`language_report`, in order (``xlpref language-check --json`` prints exactly these).
REPORT_KEYS = ("n", "languages", "target_rate", "mixed_rate", "empty")


def _percent(count: int, total: int) -> float | None:
    return 100.0 * count / total if total else None


def language_report(texts: Iterable[str], target: str | Sequence[str] | None, *,
                    identifier: LanguageIdentifier | None = None) -> dict[str, Any]:
    """Language mix of ``texts`` against ``target`` (see the module docstring for every key).

    Args:
        target: one language for all texts, one per text (e.g. each sample's ``lang``), or None.
    """
    identifier = identifier or load_identifier()
    texts = list(texts)
    targets = [target] * len(texts) if target is None or isinstance(target, str) else list(target)
    found = [identify(text, identifier) for text in texts]
    counted = [(text, code, want) for text, code, want in zip(texts, found, targets) if code is not None]
    languages = Counter(code for _, code, _ in counted)
    return {
        "n": len(texts),
        "languages": dict(sorted(languages.items(), key=lambda item: (-item[1], item[0]))),
        "target_rate": (_percent(sum(code == want for _, code, want in counted), len(counted))
                        if target is not None else None),
        "mixed_rate": _percent(sum(is_mixed(text, identifier) for text, _, _ in counted), len(counted)),
        "empty": len(texts) - len(counted),
    }


def reports_by_language(texts: Sequence[str], targets: Sequence[str], *,
                        identifier: LanguageIdentifier | None = None) -> dict[str, dict]:
    """One :func:`language_report` per target language, in order of first appearance."""
    groups: dict[str, list[str]] = {}
    for text, target in zip(texts, targets):
        groups.setdefault(target, []).append(text)
    return {code: language_report(group, code, identifier=identifier) for code, group in groups.items()}


def gated_preferences(annotations: Sequence[dict], lang: str, *,
                      identifier: LanguageIdentifier | None = None) -> list[float]:
    """Each annotation's preference, 1.0 (a loss) where the model answered in the wrong language."""
    identifier = identifier or load_identifier()
    gated = []
    for record in annotations:
        preference = float(record["preference"])
        model_lang = identify(record["output_2"], identifier)
        if model_lang is not None and model_lang != lang:
            reference_lang = identify(record["output_1"], identifier)
            if reference_lang in (None, lang):
                preference = 1.0
        gated.append(preference)
    return gated


def language_gated_winrate(annotations: Sequence[dict], lang: str, *,
                           identifier: LanguageIdentifier | None = None) -> float | None:
    """AlpacaEval's win rate, 100 * mean(preference - 1), on :func:`gated_preferences`; None without annotations."""
    preferences = gated_preferences(annotations, lang, identifier=identifier)
    return 100.0 * sum(p - 1.0 for p in preferences) / len(preferences) if preferences else None


def language_metrics(outputs: Sequence[str], annotations: Sequence[dict], lang: str, *,
                     identifier_name: str = DEFAULT_IDENTIFIER) -> dict[str, Any]:
    """The language columns of an evaluation's metrics.json (percentages; None where undefined).

    Args:
        outputs: every model output of the language (annotated or not).
        annotations: the judge's annotations (output_1 = reference, output_2 = model).
    """
    identifier = load_identifier(identifier_name)
    report = language_report(outputs, lang, identifier=identifier)
    gated = gated_preferences(annotations, lang, identifier=identifier)
    return {
        "target_language_rate": report["target_rate"],
        "mixed_language_rate": report["mixed_rate"],
        "language_gated_winrate": 100.0 * sum(p - 1.0 for p in gated) / len(gated) if gated else None,
        "n_language_gated": sum(float(a["preference"]) != g for a, g in zip(annotations, gated)),
        "output_languages": report["languages"],
        "language_identifier": identifier_name,
    }
