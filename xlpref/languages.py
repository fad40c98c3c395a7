"""Language codes, their English names, and METHOD.md's cross-lingual instruction prefix.

A language code is an ISO 639-1 code: two lowercase letters naming a language (``pt``, ``it``), checked
against pycountry's copy of the ISO 639 tables (in its wheel: no network). Records, configs and flags
accept any of the 184; the data sets exist for the 13 X-AlpacaEval languages of
:data:`LANGUAGE_NAMES` only, so another language fails where its data file is missing, naming the file.

Example::

    from xlpref.languages import language_name, parse_languages
    parse_languages("en,pt")      # ['en', 'pt']
    language_name("pt")           # 'Portuguese'
    parse_languages("en,xx")      # InputError: --langs: unknown language code 'xx'; expected an ISO 639-1 code ...
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from xlpref.errors import InputError

#: The X-AlpacaEval languages (benchmarks/x_alpacaeval), in the benchmark's order and with its names.
LANGUAGE_NAMES: dict[str, str] = {
    "en": "English",
    "es": "Spanish",
    "de": "German",
    "fr": "French",
    "ru": "Russian",
    "zh": "Chinese",
    "bn": "Bengali",
    "sw": "Swahili",
    "th": "Thai",
    "ar": "Arabic",
    "it": "Italian",
    "ja": "Japanese",
    "ko": "Korean",
}

CROSS_LINGUAL_PREFIX = (
    "Please answer the following instruction using only {language}, "
    "unless explicitly instructed to respond in a different language.\n\n"
)


_ISO_639_1 = re.compile(r"[a-z]{2}")


@lru_cache(maxsize=None)
def _iso_name(code: str) -> str | None:
    import pycountry

    entry = pycountry.languages.get(alpha_2=code) if _ISO_639_1.fullmatch(code) else None
    if entry is None:
        return None
    name = getattr(entry, "common_name", None) or entry.name
    return name.split(" (")[0]  # "Swahili (macrolanguage)" -> "Swahili"


def is_language_code(code: object) -> bool:
    """Whether ``code`` is an ISO 639-1 code naming a language (``pt`` yes; ``xx``, ``PT``, ``por`` no)."""
    return isinstance(code, str) and (code in LANGUAGE_NAMES or _iso_name(code) is not None)


def unknown_language_message(code: object) -> str:
    return (f"unknown language code {code!r}; expected an ISO 639-1 code (two lowercase letters naming a "
            "language, e.g. en, pt, it)")


def check_language_code(code: object, **where: Any) -> str:
    """``code`` if it is a language code (:func:`is_language_code`); else :class:`InputError` placed by ``where``."""
    if not is_language_code(code):
        raise InputError(unknown_language_message(code), **where)
    return code


def language_name(code: str) -> str:
    """English name of a language code; unknown codes raise :class:`InputError`."""
    name = LANGUAGE_NAMES.get(code) or (_iso_name(code) if isinstance(code, str) else None)
    if name is None:
        raise InputError(unknown_language_message(code))
    return name


def check_languages(codes: list[str]) -> list[str]:
    for code in codes:
        language_name(code)
    return codes


def parse_languages(text: str, *, option: str = "--langs") -> list[str]:
    """Parse ``"en,es"`` (the value of the CLI ``option``) into validated codes."""
    codes = [c.strip() for c in text.split(",") if c.strip()]
    if not codes:
        raise InputError("expected a comma-separated list of language codes, e.g. en,es", field=option)
    try:
        return check_languages(codes)
    except InputError as exc:
        raise InputError(exc.message, field=option) from None


def cross_lingual_instruction(english_instruction: str, lang: str) -> str:
    """The English instruction as METHOD.md conditions the cross-lingual reward on it."""
    if lang == "en":
        return english_instruction
    return CROSS_LINGUAL_PREFIX.format(language=language_name(lang)) + english_instruction
