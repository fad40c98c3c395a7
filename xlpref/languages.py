"""Language codes, their English names, and METHOD.md's cross-lingual instruction prefix."""

from __future__ import annotations

from xlpref.errors import InputError

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


def language_name(code: str) -> str:
    """English name of a language code; unknown codes raise :class:`InputError`."""
    try:
        return LANGUAGE_NAMES[code]
    except KeyError:
        raise InputError(f"unknown language code '{code}'; expected one of {sorted(LANGUAGE_NAMES)}") from None


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
