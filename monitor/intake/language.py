"""Language of a traffic record: a script and code router, and lingua for the prose it cannot place.

    from monitor.intake.language import detect_language, prose_languages, text_features
    detect_language("帮我用Python写一个function来parse JSON file")   # 'zh-en'
    detect_language("Cho mình hỏi cách nấu phở bò ngon tại nhà với.")   # 'vi'
    detect_language("Ik wil graag een tafel reserveren.", prose_languages(["en", "de"]))   # 'other'
    text_features("def f(x):\\n    return x")   # {'cjk_share': 0.0, 'ascii_share': 1.0, ...}

The router's labels (SCRIPT_LABELS): zh, en, ja, ko, code, zh-en (Chinese with substantial English),
ru (Cyrillic), other, empty. First each line is sorted into code, comment or prose (fenced ``` blocks
are code); when code outweighs prose by non-space characters the text is "code". Otherwise one regex
pass over the prose counts scripts and words: any real share of Kana is Japanese, Hangul is Korean,
Cyrillic is Russian, Han is Chinese (or zh-en when English words make up a fifth of it). No letters at
all is "other". No library tells code from prose or produces zh-en, so these stay rules.

The rest (Latin-script, Thai, Arabic and other scripts) goes to lingua, restricted to the configured
languages (`intake.languages`, ISO 639-1 codes that become labels: vi, id, th, ...). English is proposed
by a stopword rule (English stopwords outnumber those of other languages, few accented letters) and
kept when lingua gives English at least ENGLISH_CONFIRMATION: on chatterbot-corpus chat turns the rule
alone calls a fifth of the Spanish, German, French, Portuguese and Indonesian ones English, and lingua
alone leaves nearly a quarter of the English ones below the confidence floor (bench/language_detect.py).
Otherwise lingua's most likely language is the label when its confidence reaches
`intake.language_min_confidence`, else "other". With no languages configured the router works alone:
English by the stopword rule, everything else "other".
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from functools import cache
from typing import TYPE_CHECKING

from monitor.base.languages import DEFAULT_LANGUAGES, ENGLISH, SCRIPT_LABELS

if TYPE_CHECKING:
    from lingua import LanguageDetector


class LineKind(Enum):
    """What one line of a text is, for telling code from prose."""

    BLANK = "blank"
    CODE = "code"
    COMMENT = "comment"  # '#', '//', '/*', '--': code comment or markdown heading, counted as neither
    PROSE = "prose"


_FENCE = re.compile(r"[ \t]*(?:```|~~~)")
_COMMENT = re.compile(r"[ \t]*(?:#(?!include)|//|/\*|--(?!-))")
_INDENTED = re.compile(r"(?:    |\t)[ \t]*\S")
# Lines that are code on their own; identifiers are ASCII, so Chinese text with (brackets) is not.
_CODE_LINE = re.compile(
    r"(?a)[ \t]*(?:"
    r"(?:async\s+)?def\s+\w+\s*\(|class\s+\w+\s*[(:{<]|@\w+(?:\.\w+)*(?:\(.*\))?\s*$"
    r"|(?:from\s+[\w.]+\s+)?import\s+[\w.*]+(?:\s+as\s+\w+)?(?:\s*,\s*[\w.]+)*\s*;?\s*$"
    r"|import\s+.+\s+from\s+['\"]|(?:export\s+)?(?:default\s+)?(?:function|const|let|var)\s+\w+\s*[=(:]"
    r"|(?:if|elif|while|with)\s+(?=.*(?:[=<>!]=|[<>()]|\.\w|\bnot\b|\bin\b|\bis\b)).*:\s*$"
    r"|for\s+\w+(?:\s*,\s*\w+)*\s+in\s+[\w.]+(?:\(.*\))?(?:\[.*\])?\s*:\s*$"
    r"|(?:else|try|finally)\s*:\s*$|except\b.*:\s*$"
    r"|#include\s*[<\"]|package\s+[\w.]+;|(?:pub\s+)?fn\s+\w+\s*[(<]|func\s+(?:\(.*\)\s*)?\w+\s*\("
    r"|(?:public|private|protected|static|final)\s+[\w<>\[\], ]+\s+\w+\s*[(=;]"
    r"|(?:SELECT\s+.+\s+FROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE\s+(?:TABLE|INDEX|VIEW))\b"
    r"|[\w.\[\]'\"]+\s*(?:[-+*/%|&^]|//|\*\*|<<|>>)?=\s*[^=\s].*"
    r"|[A-Za-z_$][\w.$]*(?:\[.*\])?\(.*\)\s*;?\s*$"
    r"|[)\]}]+[;,]?\s*$|.*[{;]\s*(?://.*)?$|</?[a-zA-Z][\w-]*(?:\s+[^>]*)?>"
    r"|\"[\w-]+\"\s*:\s*.+"
    r"|\$\s+\S.*|(?:sudo\s+)?(?:pip3?|npm|npx|yarn|pnpm|git|docker|kubectl|helm|curl|wget|apt(?:-get)?|brew|conda"
    r"|cargo|chmod|chown|mkdir|ssh|scp|systemctl|export|python3?|node)\s+[-\w./@=:'\"]+(?:\s+[-\w./@=:'\"&|<>]+)*\s*$"
    r")"
)
_CODE_SYMBOLS = re.compile(r"[{}\[\]();=<>+*/&|]")
_CODE_SYMBOL_MIN = 3
_CODE_SYMBOL_DENSITY = 0.12


def _symbol_heavy(line: str) -> bool:
    """Dense in several kinds of code punctuation (a '!!!' or '=====' line is not)."""
    symbols = _CODE_SYMBOLS.findall(line)
    if len(symbols) < _CODE_SYMBOL_MIN or len(symbols) < _CODE_SYMBOL_DENSITY * len(line.strip()):
        return False
    return len(set(symbols)) >= 2


_PATTERN_LINE_LIMIT = 1000  # longer lines (minified code, whole paragraphs) are judged by symbols alone


def _code_like(line: str) -> bool:
    if len(line) <= _PATTERN_LINE_LIMIT and _CODE_LINE.match(line):
        return True
    return _symbol_heavy(line)


def line_kind(line: str, follows_code: bool) -> LineKind:
    """Kind of one line outside fences; `follows_code` lets indented bodies count as code."""
    if not line.strip():
        return LineKind.BLANK
    if _COMMENT.match(line):
        return LineKind.COMMENT
    if _code_like(line) or (follows_code and _INDENTED.match(line)):
        return LineKind.CODE
    return LineKind.PROSE


def classify_lines(text: str) -> Iterator[tuple[str, LineKind]]:
    """Each line with its kind; lines inside ``` or ~~~ fences, and the fences, are code."""
    in_fence = False
    follows_code = False
    for line in text.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
            kind = LineKind.CODE
        elif in_fence:
            kind = LineKind.CODE if line.strip() else LineKind.BLANK
        else:
            kind = line_kind(line, follows_code)
        if kind is not LineKind.BLANK:
            follows_code = kind is LineKind.CODE or (follows_code and kind is LineKind.COMMENT)
        yield line, kind


@dataclass
class LineCounts:
    """Lines and non-space characters of code and prose in one text."""

    code_lines: int = 0
    non_blank_lines: int = 0
    code_chars: int = 0  # non-space characters
    prose_chars: int = 0
    prose: list[str] = field(default_factory=list)  # prose and comment lines, for the language


def count_lines(text: str) -> LineCounts:
    counts = LineCounts()
    for line, kind in classify_lines(text):
        if kind is LineKind.BLANK:
            continue
        counts.non_blank_lines += 1
        non_space = len(line) - line.count(" ") - line.count("\t")
        if kind is LineKind.CODE:
            counts.code_lines += 1
            counts.code_chars += non_space
            continue
        if kind is LineKind.PROSE:
            counts.prose_chars += non_space
        counts.prose.append(line)
    return counts


# ---- scripts and words ----------------------------------------------------------------------------

_SCRIPT_RUN = re.compile(
    r"(?P<han>[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+)"
    r"|(?P<kana>[\u3040-\u309f\u30a0-\u30ff\u31f0-\u31ff\uff66-\uff9f]+)"
    r"|(?P<hangul>[\u1100-\u11ff\u3130-\u318f\uac00-\ud7af]+)"
    r"|(?P<cyrillic>[\u0400-\u04ff]+)"
    r"|(?P<latin>[A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f\u1e00-\u1eff]+)"
    r"|(?P<other>[^\W\d_]+)"
)
_CJK_RUN = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]+")


def _word_set(words: str) -> frozenset[str]:
    return frozenset(words.split())


ENGLISH_STOPWORDS = _word_set(
    """a about after all also am an and any are as at be because been before but by can could did do
    does doesn don each even for from get had has have he her here him his how i if in into is it its
    just know let like make me might more most much my need no not now of on one only or other our out
    please should so some such than thank thanks that the their them then there these they this those
    to too up us use using very want was way we were what when where which while who why will with
    would write yes you your hello hi okay ok sorry help explain"""
)
FOREIGN_STOPWORDS = _word_set(
    """der die das und ist nicht ich sie ein eine zu mit auf den dem wie auch noch sich bitte danke hallo
    le la les et est une des du je vous pas que qui pour dans avec sur ce il elle nous merci bonjour
    el los las y es un una por para con del se lo como pero muy gracias hola
    os um não com em da dos das obrigado voce
    il di che per non sono della gli ciao grazie
    het een en van ik niet dat op zijn
    yang dan di ini itu saya tidak untuk dengan ada apa bisa mau kita anda terima kasih
    ang ng sa mga ako ikaw po
    ve bir bu ile
    toi cua va cho khong duoc nhung mot cac nay"""
)


@dataclass
class ScriptCounts:
    """Letters and words per script in one text, and English / other stopword hits."""

    han: int = 0
    kana: int = 0
    hangul_words: int = 0
    cyrillic_words: int = 0
    latin_words: int = 0
    other_words: int = 0
    latin_letters: int = 0
    accented_letters: int = 0
    english_stopwords: int = 0
    foreign_stopwords: int = 0

    @property
    def units(self) -> int:
        """Han and Kana characters count one each, other scripts one per word."""
        return self.han + self.kana + self.hangul_words + self.cyrillic_words + self.latin_words + self.other_words

    def add_latin_word(self, word: str) -> None:
        self.latin_words += 1
        self.latin_letters += len(word)
        if not word.isascii():
            self.accented_letters += len(word) - len(word.encode("ascii", "ignore"))
        lowered = word.lower()
        if lowered in ENGLISH_STOPWORDS:
            self.english_stopwords += 1
        elif lowered in FOREIGN_STOPWORDS:
            self.foreign_stopwords += 1


def count_scripts(text: str) -> ScriptCounts:
    """One pass over runs of same-script letters."""
    counts = ScriptCounts()
    for run in _SCRIPT_RUN.finditer(text):
        script = run.lastgroup
        if script == "latin":
            counts.add_latin_word(run.group())
        elif script == "han":
            counts.han += run.end() - run.start()
        elif script == "kana":
            counts.kana += run.end() - run.start()
        elif script == "hangul":
            counts.hangul_words += 1
        elif script == "cyrillic":
            counts.cyrillic_words += 1
        else:
            counts.other_words += 1
    return counts


# ---- decisions ------------------------------------------------------------------------------------

_KANA_SHARE_OF_CJK = 0.1  # Japanese mixes Kana into Han; Chinese has none
_MAJORITY = 0.5
_CJK_SHARE = 0.2  # Han and Kana below this share of units: read the text by its other scripts
_ZH_EN_ENGLISH_SHARE = 0.2  # English words among all units that make Chinese "zh-en"
_ENGLISH_STOPWORD_SHARE = 0.1
_ACCENTED_SHARE_LIMIT = 0.04  # English is nearly free of accented letters; Vietnamese is full of them


def _unaccented(counts: ScriptCounts) -> bool:
    return counts.accented_letters <= _ACCENTED_SHARE_LIMIT * counts.latin_letters


def _looks_english(counts: ScriptCounts) -> bool:
    if not _unaccented(counts):
        return False
    if counts.english_stopwords <= counts.foreign_stopwords:
        return counts.english_stopwords == counts.foreign_stopwords == 0 and counts.latin_words <= 3
    return counts.english_stopwords >= _ENGLISH_STOPWORD_SHARE * counts.latin_words


def _chinese_or_japanese(counts: ScriptCounts) -> str:
    cjk = counts.han + counts.kana
    if counts.kana >= _KANA_SHARE_OF_CJK * cjk:
        return "ja"
    english_words = counts.latin_words if _unaccented(counts) else 0
    return "zh-en" if english_words >= max(2, _ZH_EN_ENGLISH_SHARE * counts.units) else "zh"


# ---- lingua, for the prose the router cannot place ----------------------------------------------------

DEFAULT_MIN_CONFIDENCE = 0.5
ENGLISH_CONFIRMATION = 0.05  # lingua's least confidence in English that lets the stopword rule's "en" stand
LINGUA_PROBE_CHARS = 300  # lingua's cost grows with the text (about 3 us a character); 300 tell the language


class ProseLanguages:
    """lingua restricted to the configured languages; the detector is built on first use, once, under a
    lock (lingua loads each language's models on first need and shares them between detectors)."""

    def __init__(self, codes: Sequence[str], min_confidence: float) -> None:
        self.codes = tuple(codes)
        self.min_confidence = min_confidence
        self.labels = frozenset(SCRIPT_LABELS) | frozenset(self.codes)
        self._detector: LanguageDetector | None = None
        self._lock = threading.Lock()

    def detector(self) -> LanguageDetector:
        with self._lock:
            if self._detector is None:
                self._detector = self.build()
            return self._detector

    def build(self) -> LanguageDetector:
        """lingua in its high-accuracy mode: its low-accuracy mode reads one short English chat turn in
        eighteen as another language (bench/language_detect.py)."""
        from lingua import IsoCode639_1, LanguageDetectorBuilder

        isos = [getattr(IsoCode639_1, code.upper()) for code in self.codes]
        return LanguageDetectorBuilder.from_iso_codes_639_1(*isos).build()

    def confidences(self, prose: str) -> dict[str, float]:
        """Each configured language's confidence for the prose (they sum to 1, or are all 0)."""
        values = self.detector().compute_language_confidence_values(_probe(prose))
        return {value.language.iso_code_639_1.name.lower(): value.value for value in values}

    def decide(self, prose: str, english_by_rule: bool) -> str:
        """The label of prose with no CJK, Hangul or Cyrillic majority."""
        if not self.codes:
            return ENGLISH if english_by_rule else "other"
        confidences = self.confidences(prose)
        if not confidences:
            return "other"
        if english_by_rule and confidences.get(ENGLISH, 0.0) >= ENGLISH_CONFIRMATION:
            return ENGLISH
        best = max(confidences, key=confidences.__getitem__)
        return best if confidences[best] >= self.min_confidence else "other"


def _probe(prose: str) -> str:
    """The first LINGUA_PROBE_CHARS characters, cut at a space when there is one."""
    if len(prose) <= LINGUA_PROBE_CHARS:
        return prose
    cut = prose.rfind(" ", 0, LINGUA_PROBE_CHARS + 1)
    return prose[: cut if cut > 0 else LINGUA_PROBE_CHARS]


@cache
def _prose_languages(codes: tuple[str, ...], min_confidence: float) -> ProseLanguages:
    return ProseLanguages(codes, min_confidence)


_CACHE_LOCK = threading.Lock()


def prose_languages(
    codes: Sequence[str] = DEFAULT_LANGUAGES, min_confidence: float = DEFAULT_MIN_CONFIDENCE
) -> ProseLanguages:
    """One ProseLanguages per configuration, shared by every caller and thread."""
    with _CACHE_LOCK:
        return _prose_languages(tuple(codes), min_confidence)


def language_of_prose(counts: ScriptCounts, prose: str, languages: ProseLanguages) -> str:
    units = counts.units
    if units == 0:
        return "other"
    if counts.han + counts.kana >= _CJK_SHARE * units:
        return _chinese_or_japanese(counts)
    if counts.hangul_words >= _MAJORITY * units:
        return "ko"
    if counts.cyrillic_words >= _MAJORITY * units:
        return "ru"
    english_by_rule = counts.latin_words >= _MAJORITY * units and _looks_english(counts)
    return languages.decide(prose, english_by_rule)


def detect_language(text: str, languages: ProseLanguages | None = None) -> str:
    """A router label or one of `languages` (default: the default configuration): "code" when code lines
    outweigh prose, else the language of the prose."""
    if not text.strip():
        return "empty"
    lines = count_lines(text)
    if lines.code_lines and lines.code_chars >= lines.prose_chars:
        return "code"
    prose = text if lines.code_lines == 0 else "\n".join(lines.prose)
    return language_of_prose(count_scripts(prose), prose, languages or prose_languages())


def text_features(text: str) -> dict[str, float]:
    """Numbers for input-drift detection: shares of non-space characters, of non-blank lines, and length."""
    non_space = len(text) - sum(text.count(space) for space in (" ", "\t", "\n", "\r"))
    cjk_chars = sum(len(run) for run in _CJK_RUN.findall(text))
    ascii_chars = len(text.encode("ascii", "ignore")) - (len(text) - non_space)
    lines = count_lines(text)
    return {
        "cjk_share": cjk_chars / non_space if non_space else 0.0,
        "ascii_share": ascii_chars / non_space if non_space else 0.0,
        "code_line_share": lines.code_lines / lines.non_blank_lines if lines.non_blank_lines else 0.0,
        "char_length": float(len(text)),
    }
