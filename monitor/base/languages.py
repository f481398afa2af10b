"""Language labels: those the script router gives, and the ISO 639-1 codes `intake.languages` may list.

    from monitor.base.languages import check_languages
    check_languages(["en", "vi", "th"])   # ['en', 'vi', 'th']
    check_languages(["en", "xx"])         # ValueError: unknown ISO 639-1 code 'xx' ...

The script router (monitor.intake.language) labels code, Han, Kana, Hangul and Cyrillic text itself
(SCRIPT_LABELS). Prose it cannot place (Latin-script, Thai, Arabic, other scripts) goes to lingua,
which chooses among the configured languages; their ISO codes become labels next to the router's.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

SCRIPT_LABELS = ("zh", "en", "ja", "ko", "code", "zh-en", "ru", "other", "empty")
DEFAULT_LANGUAGES = ("en", "vi", "id", "th", "es", "fr", "de", "pt", "ar")
ENGLISH = "en"
_SCRIPT_ROUTED = frozenset({"zh", "ja", "ko"})  # Han, Kana and Hangul text never reaches lingua


@cache
def lingua_codes() -> frozenset[str]:
    """The ISO 639-1 codes of every language lingua has models for."""
    from lingua import Language

    return frozenset(language.iso_code_639_1.name.lower() for language in Language.all())


@cache
def script_routed_codes() -> frozenset[str]:
    """Languages the script router labels by their script (Cyrillic text is all "ru")."""
    from lingua import Language

    cyrillic = {language.iso_code_639_1.name.lower() for language in Language.all_with_cyrillic_script()}
    return _SCRIPT_ROUTED | cyrillic


def check_languages(codes: Sequence[str]) -> list[str]:
    """The codes, lowercased, when lingua can tell them apart from prose; ValueError naming the problem."""
    lowered = [code.strip().lower() for code in codes]
    if not lowered:
        return lowered
    for code in lowered:
        if code not in lingua_codes():
            known = ", ".join(sorted(lingua_codes()))
            raise ValueError(f"unknown ISO 639-1 code {code!r}: lingua knows {known}")
        if code in script_routed_codes():
            raise ValueError(
                f"{code!r} is labelled by the script router (Han, Kana, Hangul and Cyrillic text become zh, ja, "
                "ko and ru): leave it out"
            )
    duplicates = sorted({code for code in lowered if lowered.count(code) > 1})
    if duplicates:
        raise ValueError(f"listed more than once: {', '.join(duplicates)}")
    if ENGLISH not in lowered:
        raise ValueError('list "en": lingua confirms English and keeps it from being read as another language')
    if len(lowered) < 2:
        raise ValueError(
            'lingua tells languages apart: list "en" and at least one more, or [] for the script router alone'
        )
    return lowered
