"""PII redaction for sampled traffic: nothing personal is stored, every hit becomes a typed placeholder.

    from monitor.intake.redact import Redactor
    redactor = Redactor(extra_patterns={"EMPLOYEE_ID": r"EMP-[0-9]{6}"})
    redactor.redact("我的手机号是13812345678谢谢").text   # '我的手机号是<PHONE>谢谢'

Kinds: EMAIL, PHONE (international +CC, mainland China mobile, Vietnam, Singapore, North America),
CARD (issuer range + Luhn), CN_ID (province, birth date, ISO 7064 MOD 11-2), IP (v4, v6), and extras.

Each detector is a regex for candidates plus a validator. No regex relies on \\b (which counts CJK
characters as word characters); ASCII look-arounds only, so digits next to Chinese text are found.
Overlaps are resolved in one place, `resolve_overlaps`: CN_ID, CARD and EMAIL beat what they overlap,
then the longest match wins. For speed the text is scanned once for long numbers, dotted quads, '@'
and colon pairs (`TextScan`); built-in detectors look only inside those windows, never at plain prose.
Full-width digits (１３８...) are read as ASCII digits, and format characters (Unicode category Cf:
zero-width spaces and joiners, bidi marks, soft hyphens) are skipped while matching, so
`ana\u200b@corp.example` is found; a replaced span takes in the format characters inside it.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import itertools
import logging
import re
import sys
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

log = logging.getLogger(__name__)

EMAIL = "EMAIL"
PHONE = "PHONE"
CARD = "CARD"
CN_ID = "CN_ID"
IP = "IP"


@dataclass(frozen=True)
class PiiMatch:
    """text[start:end] is PII of `kind` (a built-in kind or an extra pattern's name)."""

    start: int
    end: int
    kind: str


@dataclass(frozen=True)
class Redaction:
    """The redacted text and how many matches of each kind it replaced."""

    text: str
    counts: dict[str, int]


# ---- validators -----------------------------------------------------------------------------------


_LUHN_DOUBLED = {str(digit): digit * 2 - 9 if digit > 4 else digit * 2 for digit in range(10)}


def luhn_valid(digits: str) -> bool:
    """Luhn (mod 10) check of a digit string; spaces and dashes between digits are ignored."""
    bare = digits.replace(" ", "").replace("-", "")
    if len(bare) < 2 or not bare.isascii() or not bare.isdigit():
        return False
    total = sum(map(int, bare[-1::-2])) + sum(map(_LUHN_DOUBLED.__getitem__, bare[-2::-2]))
    return total % 10 == 0


_CN_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CN_ID_CHECK_CHARS = "10X98765432"
_CN_PROVINCE_CODES = frozenset(
    {*range(11, 16), *range(21, 24), *range(31, 38), *range(41, 47), *range(50, 55), *range(61, 66), 71, 81, 82}
)


def cn_resident_id_check_char(first_17_digits: str) -> str:
    """ISO 7064 MOD 11-2 check character of a mainland China resident ID."""
    total = sum(int(digit) * weight for digit, weight in zip(first_17_digits, _CN_ID_WEIGHTS, strict=True))
    return _CN_ID_CHECK_CHARS[total % 11]


def _birth_date_valid(yyyymmdd: str) -> bool:
    try:
        born = datetime.date(int(yyyymmdd[:4]), int(yyyymmdd[4:6]), int(yyyymmdd[6:8]))
    except ValueError:
        return False
    return datetime.date(1900, 1, 1) <= born <= datetime.date.today()


def cn_resident_id_valid(candidate: str) -> bool:
    """18-char mainland China resident ID: province code, real birth date, MOD 11-2 checksum.

    Spaces and dashes between the 6-8-4 groups are ignored; the check character may be x or X.
    """
    bare = candidate.replace(" ", "").replace("-", "").upper()
    body = bare[:17]
    if len(bare) != 18 or not body.isascii() or not body.isdigit():
        return False
    if int(bare[:2]) not in _CN_PROVINCE_CODES or not _birth_date_valid(bare[6:14]):
        return False
    return cn_resident_id_check_char(body) == bare[17]


_CARD_MIN_DIGITS = 13
_ANY_LENGTH = tuple(range(_CARD_MIN_DIGITS, 20))
# (lowest prefix, highest prefix, card lengths): issuer ranges in use (ISO/IEC 7812), so that a
# Luhn-valid order number such as 202401150001234 is not taken for a card.
_CARD_ISSUER_RANGES: tuple[tuple[str, str, tuple[int, ...]], ...] = (
    ("4", "4", (13, 16, 19)),  # Visa
    ("51", "55", (16,)),  # Mastercard
    ("2221", "2720", (16,)),  # Mastercard 2-series
    ("2200", "2204", (16, 17, 18, 19)),  # Mir
    ("34", "34", (15,)),  # American Express
    ("37", "37", (15,)),
    ("300", "305", _ANY_LENGTH[1:]),  # Diners Club
    ("36", "36", _ANY_LENGTH[1:]),
    ("38", "39", _ANY_LENGTH[1:]),
    ("3528", "3589", _ANY_LENGTH[3:]),  # JCB
    ("62", "62", _ANY_LENGTH[3:]),  # UnionPay
    ("81", "81", _ANY_LENGTH[3:]),
    ("60", "69", _ANY_LENGTH),  # Discover, Maestro, RuPay
    ("50", "50", _ANY_LENGTH),  # Maestro
    ("56", "58", _ANY_LENGTH),
)


def card_issuer_plausible(digits: str) -> bool:
    return any(
        low <= digits[: len(low)] <= high and len(digits) in lengths for low, high, lengths in _CARD_ISSUER_RANGES
    )


def _digit_count(candidate: str) -> int:
    return sum(char.isdigit() for char in candidate)


def _international_phone_valid(candidate: str) -> bool:
    return 8 <= _digit_count(candidate) <= 15 and candidate.count("(") == candidate.count(")")


def _ipv6_valid(candidate: str) -> bool:
    """A real IPv6 address, not a time (12:30:45), a slice (a[1::2]) or a C++ scope (abc::def)."""
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    groups = [group for group in candidate.split(":") if group]
    if not any(char.isdigit() for char in candidate) or len(groups) < 2:
        return False
    return len(groups) >= 3 or any(len(group) >= 3 for group in groups)


# ---- where to look --------------------------------------------------------------------------------

# 8+ digits joined by short separators: "+86 138-1234-5678", "(+44) 20 7946 0958", "4111 1111 1111 1111".
_LONG_NUMBER = re.compile(r"[0-9](?:[ ().+\-]{0,3}[0-9]){7,}")
_NUMBER_SEPARATORS = str.maketrans("", "", " ().+-")
_NUMBER_PREFIX_REACH = 2  # a window starts early enough to take in "(+" before the first digit
_NUMBER_SUFFIX_REACH = 2  # ... and ends late enough for a trailing X and the look-aheads
_DOTTED_QUAD = re.compile(r"[0-9]\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]")
_DOTTED_QUAD_REACH = 5
# Every IPv6 address has two colons at most five characters apart within its first six characters.
_COLON_PAIR = re.compile(r":[0-9A-Fa-f]{0,4}:")
_IPV6_LEAD = 5
_IPV6_MAX_LENGTH = 45

Window = tuple[int, int]


class Scope(Enum):
    """Which windows of a text a detector scans."""

    WHOLE_TEXT = "whole_text"
    LONG_NUMBERS = "long_numbers"  # 8+ digits; a detector may ask for more (min_digits)
    DOTTED_QUADS = "dotted_quads"
    AROUND_COLON_PAIRS = "around_colon_pairs"


def _merged(windows: Iterable[Window]) -> list[Window]:
    merged: list[Window] = []
    for start, end in windows:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def _long_numbers(text: str) -> list[tuple[int, int, int]]:
    """(window start, window end, digit count) around each run of 8+ digits."""
    return [
        (
            max(0, number.start() - _NUMBER_PREFIX_REACH),
            number.end() + _NUMBER_SUFFIX_REACH,
            len(number.group().translate(_NUMBER_SEPARATORS)),
        )
        for number in _LONG_NUMBER.finditer(text)
    ]


def _ipv6_windows(text: str) -> list[Window]:
    """Windows around colon pairs that could hold an address: a '::' or seven colons."""
    windows = _merged(
        (max(0, pair.start() - _IPV6_LEAD), pair.start() + _IPV6_MAX_LENGTH) for pair in _COLON_PAIR.finditer(text)
    )
    return [
        (start, end) for start, end in windows if text.find("::", start, end) != -1 or text.count(":", start, end) >= 7
    ]


def _at_sign_positions(text: str) -> list[int]:
    positions = []
    at = text.find("@")
    while at != -1:
        positions.append(at)
        at = text.find("@", at + 1)
    return positions


# Full-width forms (１３８, ＠, ＋) map one-to-one onto ASCII, so spans found in the mapped text fit the
# original. Full-width punctuation alone (，：（）) is everyday Chinese and is left as it is.
_FULLWIDTH_DIGIT_OR_AT = re.compile("[\uff10-\uff19\uff20]")
_FULLWIDTH_TO_ASCII = {code_point: code_point - 0xFEE0 for code_point in range(0xFF01, 0xFF5F)}


def ascii_width(text: str) -> str:
    """The text with full-width ASCII forms narrowed; same length, same positions."""
    return text.translate(_FULLWIDTH_TO_ASCII) if _FULLWIDTH_DIGIT_OR_AT.search(text) else text


class TextScan:
    """The parts of one text worth a detector's time, found once and shared by all detectors.

    `text` is the narrowed text (see `ascii_width`); match positions hold for the original too.
    """

    def __init__(self, original: str) -> None:
        text = ascii_width(original)
        self.text = text
        self.at_signs = _at_sign_positions(text)
        self._long_numbers = _long_numbers(text)
        self._dotted_quads = _merged(
            (max(0, quad.start() - _DOTTED_QUAD_REACH), quad.end() + _DOTTED_QUAD_REACH)
            for quad in _DOTTED_QUAD.finditer(text)
        )
        self._ipv6_windows = _ipv6_windows(text) if ":" in text else []

    def windows(self, scope: Scope, min_digits: int = 0) -> list[Window]:
        if scope is Scope.LONG_NUMBERS:
            return [(start, end) for start, end, digits in self._long_numbers if digits >= min_digits]
        if scope is Scope.DOTTED_QUADS:
            return self._dotted_quads
        if scope is Scope.AROUND_COLON_PAIRS:
            return self._ipv6_windows
        return [(0, len(self.text))]


# ---- detectors ------------------------------------------------------------------------------------


class Detector(Protocol):
    def __call__(self, scan: TextScan) -> Iterator[PiiMatch]: ...


_CONTEXT_REACH = 40  # characters before a match searched for context words


@dataclass(frozen=True)
class RegexDetector:
    """Candidates from one regex over the windows of `scope`, kept when `is_valid` accepts them."""

    kind: str
    pattern: re.Pattern[str]
    scope: Scope = Scope.WHOLE_TEXT
    min_digits: int = 0
    is_valid: Callable[[str], bool] | None = None
    needs_context: re.Pattern[str] | None = None  # must occur shortly before the match
    vetoed_by_context: re.Pattern[str] | None = None  # must not end right where the match starts
    context_reach: int = _CONTEXT_REACH

    def __call__(self, scan: TextScan) -> Iterator[PiiMatch]:
        text = scan.text
        for window_start, window_end in scan.windows(self.scope, self.min_digits):
            for match in self.pattern.finditer(text, window_start, window_end):
                if self._accepts(text, match):
                    yield PiiMatch(match.start(), match.end(), self.kind)

    def _accepts(self, text: str, match: re.Match[str]) -> bool:
        start, end = match.span()
        if start == end or (self.is_valid is not None and not self.is_valid(match.group())):
            return False
        context_start = max(0, start - self.context_reach)
        if self.vetoed_by_context is not None and self.vetoed_by_context.search(text, context_start, start):
            return False
        return self.needs_context is None or self.needs_context.search(text, context_start, start) is not None


# A candidate may not start inside a word, a longer number, a decimal (3.14159265358) or a dashed
# identifier (INV-2024-13812345678) ...
_START = r"(?<![0-9A-Za-z_])(?<![0-9]\.)(?<![0-9A-Za-z]-)"
# ... nor end inside one (13812345678901, 1.2.3.4.5, 13812345678-01).
_END = r"(?![0-9A-Za-z_])(?!\.[0-9])(?!-[0-9A-Za-z])"


def _bounded(core: str) -> re.Pattern[str]:
    return re.compile(_START + core + _END)


# Mainland China mobile, 3-4-4 or unbroken; an 11-digit 1[3-9] number is a phone even in a list.
_CN_MOBILE = _bounded(r"(?:(?:\+|00)86[ \-]?|\(\+86\) ?|86[ \-]?)?1[3-9][0-9](?P<cn>[ \-]?)[0-9]{4}(?P=cn)[0-9]{4}")
# The other formats are short enough to be a slice of a longer grouped number (a mistyped card).
_LOCAL_PHONE_FORMATS = (
    # Vietnam mobile: +84 / 84 / 0, then 3|5|7|8|9 and 8 digits, as 9, 3-3-3, 2-3-4 or 2-3-2-2
    r"(?:(?:\+|00)84[ .\-]?|\(\+84\) ?|84|0)[35789]"
    r"(?:[0-9]{8}|[0-9]{2}(?P<vn1>[ .\-])[0-9]{3}(?P=vn1)[0-9]{3}"
    r"|[0-9](?P<vn2>[ .\-])[0-9]{3}(?P=vn2)[0-9]{2}(?P=vn2)[0-9]{2}"
    r"|[0-9](?P<vn3>[ .\-])[0-9]{3}(?P=vn3)[0-9]{4})",
    # Singapore: +65 then 8 digits starting 6|8|9, or 4-4 without the country code
    r"(?:(?:\+|00)65[ \-]?|\(\+65\) ?)[689][0-9]{3}[ \-]?[0-9]{4}",
    r"[689][0-9]{3}[ \-][0-9]{4}",
    # national numbers with a trunk 0 and an area code: 021-6123-4567, 010 12345678, 020 7946 0958
    r"0[1-9][0-9]{1,2}[ \-][0-9]{3,4}[ \-]?[0-9]{4}",
    # North America: (415) 555-0123, 415-555-0123, 415.555.0123
    r"\([2-9][0-9]{2}\) ?[2-9][0-9]{2}[ .\-][0-9]{4}",
    r"[2-9][0-9]{2}(?P<us>[.\-])[2-9][0-9]{2}(?P=us)[0-9]{4}",
)
_LOCAL_PHONE = _bounded(r"(?<![0-9][ .\-])(?:" + "|".join(_LOCAL_PHONE_FORMATS) + r")(?![ .\-][0-9])")
# A bare 8-digit number is as often an order number or a constant as a Singapore phone.
_SG_BARE = _bounded(r"[689][0-9]{7}")
_PHONE_CONTEXT = re.compile(
    r"(?i)(?<!i)phone|(?<![A-Za-z])(?:tel|hp|sms)(?![A-Za-z])|mobile|contact|whats ?app|text me|reach me"
    r"|call(?:ing)? (?:me|us|him|her|them|at|on)(?![A-Za-z])"
    r"|(?<![A-Za-z])(?:my|his|her|your|our|their)\s+(?:number|no\.?)(?![A-Za-z])"
    r"|电话|手机|联系|致电|号码|điện thoại|sđt|gọi|liên hệ|zalo"
)
# An order, invoice, account or tax number is labelled as such right before it: not a phone, not a card.
_ID_LABEL_CONTEXT = re.compile(
    r"(?i)(?:order|invoice|tracking|account|acct|tax|ref|mã số thuế|mst|mã đơn hàng|đơn hàng|số tài khoản"
    r"|订单|单号|账号|帐号|工号|编号|发票)\s*(?:no\.?|number|id|#|号|号码)?\s*(?:is|was|[:：#])?\s*$"
)
# Each group is separators then a whole digit run (possessive): only the group count can backtrack.
_INTERNATIONAL_PHONE = re.compile(
    r"(?<![0-9A-Za-z_+])(?:\(\+[1-9][0-9]{0,3}\)|\+[1-9][0-9]*+)(?:[ .\-()]{1,3}[0-9]++){0,7}"
    r"(?<=[0-9]{2})(?![0-9A-Za-z_])"  # a lone trailing digit ('+1 415 555 0123 2 times') is not part of it
)
_CN_ID = _bounded(r"[1-9][0-9]{5}(?P<sep>[ \-]?)[0-9]{8}(?P=sep)[0-9]{3}[0-9Xx]")
_IPV4_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_IPV4 = re.compile(  # not a pinned version: pkg==1.2.3.4, >=1.2.3.4, ^1.2.3.4
    r"(?<![0-9A-Za-z_.])(?<![=~<>]=)(?<!\^)"
    rf"{_IPV4_OCTET}(?:\.{_IPV4_OCTET}){{3}}(?![0-9A-Za-z_])(?!\.[0-9])"
)
_VERSION_CONTEXT = re.compile(r"(?i)(?:(?<![A-Za-z])(?:version|ver\.?|release|build)|版本号?)\s*[:：]?\s*$")
_IPV6 = re.compile(
    r"(?<![0-9A-Za-z_:.])(?:[0-9A-Fa-f]{1,4})?(?::{1,2}[0-9A-Fa-f]{1,4}){1,7}(?:::|(?:\.[0-9]{1,3}){3})?"
    r"(?![0-9A-Za-z_:])"
)
_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9][A-Za-z0-9._%+\-]{0,63}"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![A-Za-z0-9\-])"
)
_EMAIL_LOCAL_MAX = 64
_EMAIL_DOMAIN_MAX = 255


def find_emails(scan: TextScan) -> Iterator[PiiMatch]:
    """One bounded search around each '@': the local part before it, the domain after."""
    searched_to = 0
    for at in scan.at_signs:
        if at < searched_to:
            continue
        window_start = max(searched_to, at - _EMAIL_LOCAL_MAX - 1)
        match = _EMAIL.search(scan.text, window_start, at + _EMAIL_DOMAIN_MAX)
        if match is not None and match.start() <= at < match.end():
            searched_to = match.end()
            yield PiiMatch(match.start(), match.end(), EMAIL)


_NUMBER_RUN = re.compile(_START + r"[0-9]++(?:[ \-][0-9]++)*+" + _END)
_DIGIT_GROUP = re.compile(r"[0-9]+")
_CARD_SPLIT_LAYOUTS = frozenset({(4, 6, 5), (4, 6, 4)})


def _card_layout_valid(groups: list[re.Match[str]], separators: set[str]) -> bool:
    """One block of digits, 4-4-4-4(-1..3) style groups, or Amex/Diners 4-6-5 and 4-6-4."""
    lengths = tuple(len(group.group()) for group in groups)
    if not _CARD_MIN_DIGITS <= sum(lengths) <= 19 or len(separators) > 1:
        return False
    if len(lengths) == 1 or lengths in _CARD_SPLIT_LAYOUTS:
        return True
    return len(lengths) >= 4 and all(length == 4 for length in lengths[:-1]) and lengths[-1] <= 4


def _longest_card_from(groups: list[re.Match[str]], run: str, first: int) -> int | None:
    """Index past the last group of the longest card starting at groups[first], or None."""
    for last in range(min(len(groups), first + 5), first, -1):
        chosen = groups[first:last]
        separators = {run[left.end() : right.start()] for left, right in itertools.pairwise(chosen)}
        if not _card_layout_valid(chosen, separators):
            continue
        digits = "".join(group.group() for group in chosen)
        if card_issuer_plausible(digits) and luhn_valid(digits):
            return last
    return None


def _cards_in_run(run: str, offset: int) -> Iterator[PiiMatch]:
    groups = list(_DIGIT_GROUP.finditer(run))
    first = 0
    while first < len(groups):
        last = _longest_card_from(groups, run, first)
        if last is None:
            first += 1
            continue
        yield PiiMatch(offset + groups[first].start(), offset + groups[last - 1].end(), CARD)
        first = last


def _labelled_as_id(text: str, start: int) -> bool:
    return _ID_LABEL_CONTEXT.search(text, max(0, start - _CONTEXT_REACH), start) is not None


def find_cards(scan: TextScan) -> Iterator[PiiMatch]:
    """Cards inside runs of digit groups: 'qty 2 4111 1111 1111 1111 cvv 123' finds the middle."""
    for window_start, window_end in scan.windows(Scope.LONG_NUMBERS, _CARD_MIN_DIGITS):
        for run in _NUMBER_RUN.finditer(scan.text, window_start, window_end):
            cards = _cards_in_run(run.group(), run.start())
            yield from (card for card in cards if not _labelled_as_id(scan.text, card.start))


BUILTIN_DETECTORS: tuple[Detector, ...] = (
    find_emails,
    RegexDetector(CN_ID, _CN_ID, Scope.LONG_NUMBERS, min_digits=17, is_valid=cn_resident_id_valid),
    find_cards,
    RegexDetector(PHONE, _CN_MOBILE, Scope.LONG_NUMBERS, vetoed_by_context=_ID_LABEL_CONTEXT),
    RegexDetector(PHONE, _LOCAL_PHONE, Scope.LONG_NUMBERS, vetoed_by_context=_ID_LABEL_CONTEXT),
    RegexDetector(
        PHONE, _SG_BARE, Scope.LONG_NUMBERS, needs_context=_PHONE_CONTEXT, vetoed_by_context=_ID_LABEL_CONTEXT
    ),
    RegexDetector(
        PHONE,
        _INTERNATIONAL_PHONE,
        Scope.LONG_NUMBERS,
        is_valid=_international_phone_valid,
        vetoed_by_context=_ID_LABEL_CONTEXT,
    ),
    RegexDetector(IP, _IPV4, Scope.DOTTED_QUADS, vetoed_by_context=_VERSION_CONTEXT),
    RegexDetector(IP, _IPV6, Scope.AROUND_COLON_PAIRS, is_valid=_ipv6_valid),
)


# ---- overlaps -------------------------------------------------------------------------------------

# Validated kinds beat everything they overlap; among the rest the longest match wins.
_VALIDATED_RANK = {CN_ID: 0, CARD: 1, EMAIL: 2}


def _precedence(match: PiiMatch) -> tuple[int, int, int, str]:
    rank = _VALIDATED_RANK.get(match.kind, len(_VALIDATED_RANK))
    return (rank, match.start - match.end, match.start, match.kind)


def _overlap_clusters(matches: list[PiiMatch]) -> Iterator[list[PiiMatch]]:
    """Groups of matches (sorted by start) chained together by overlaps."""
    cluster: list[PiiMatch] = []
    cluster_end = 0
    for match in matches:
        if cluster and match.start >= cluster_end:
            yield cluster
            cluster = []
        if not cluster:
            cluster_end = match.end
        cluster.append(match)
        cluster_end = max(cluster_end, match.end)
    if cluster:
        yield cluster


def resolve_overlaps(candidates: list[PiiMatch]) -> list[PiiMatch]:
    """Keep non-overlapping matches, each overlap won by precedence; returned sorted by position."""
    kept: list[PiiMatch] = []
    for cluster in _overlap_clusters(sorted(set(candidates), key=lambda match: (match.start, match.end))):
        if len(cluster) == 1:
            kept.extend(cluster)
            continue
        winners: list[PiiMatch] = []
        for candidate in sorted(cluster, key=_precedence):
            if all(candidate.end <= other.start or other.end <= candidate.start for other in winners):
                winners.append(candidate)
        kept.extend(sorted(winners, key=lambda match: match.start))
    return kept


# ---- format characters ----------------------------------------------------------------------------


@functools.cache
def format_characters() -> re.Pattern[str]:
    """One character of Unicode category Cf; built on first use (a scan of all code points, ~0.2 s)."""
    ranges: list[list[int]] = []
    for code_point in range(0x80, sys.maxunicode + 1):  # ASCII has no format characters
        if unicodedata.category(chr(code_point)) != "Cf":
            continue
        if ranges and ranges[-1][1] == code_point - 1:
            ranges[-1][1] = code_point
        else:
            ranges.append([code_point, code_point])
    return re.compile("[" + "".join(f"\\U{low:08x}-\\U{high:08x}" for low, high in ranges) + "]")


def has_format_characters(text: str) -> bool:
    return not text.isascii() and format_characters().search(text) is not None


def without_format_characters(text: str) -> str:
    return text if text.isascii() else format_characters().sub("", text)


def _visible_positions(text: str) -> tuple[str, list[int]]:
    """The text without format characters, and each kept character's position in the original."""
    pattern = format_characters()
    positions = [index for index, char in enumerate(text) if not pattern.match(char)]
    return "".join(text[index] for index in positions), positions


# ---- the redactor ---------------------------------------------------------------------------------

_EXTRA_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def placeholder(kind: str) -> str:
    return f"<{kind.upper()}>"


def compile_extra_patterns(extra_patterns: Mapping[str, str]) -> list[Detector]:
    """One whole-text detector per configured name -> regex; the name is the kind.

    Like the built-in detectors, the patterns see full-width digits and letters as ASCII.
    """
    detectors: list[Detector] = []
    for name, regex in extra_patterns.items():
        if not _EXTRA_NAME.fullmatch(name):
            raise ValueError(f"extra PII pattern name {name!r}: use letters, digits and _")
        try:
            pattern = re.compile(regex)
        except re.error as error:
            raise ValueError(f"extra PII pattern {name!r}: invalid regex {regex!r}: {error}") from error
        detectors.append(RegexDetector(name, pattern))
    return detectors


class Redactor:
    """Finds PII spans and replaces them with `<KIND>` placeholders; safe to share between threads."""

    def __init__(self, extra_patterns: Mapping[str, str] | None = None) -> None:
        extras = compile_extra_patterns(extra_patterns or {})
        self._detectors: tuple[Detector, ...] = (*BUILTIN_DETECTORS, *extras)
        log.debug("redactor: %d built-in detectors, %d extra patterns", len(BUILTIN_DETECTORS), len(extras))

    def find(self, text: str) -> list[PiiMatch]:
        """PII spans of `text`; format characters (U+200B and the like) cannot split a match."""
        if not has_format_characters(text):
            return self._find(text)
        visible, positions = _visible_positions(text)
        return [
            PiiMatch(positions[match.start], positions[match.end - 1] + 1, match.kind) for match in self._find(visible)
        ]

    def _find(self, text: str) -> list[PiiMatch]:
        scan = TextScan(text)
        return resolve_overlaps([match for detect in self._detectors for match in detect(scan)])

    def redact(self, text: str) -> Redaction:
        matches = self.find(text)
        pieces: list[str] = []
        position = 0
        for match in matches:
            pieces.append(text[position : match.start])
            pieces.append(placeholder(match.kind))
            position = match.end
        pieces.append(text[position:])
        return Redaction("".join(pieces), dict(Counter(match.kind for match in matches)))

    def redact_value(self, value: object) -> tuple[object, dict[str, int]]:
        """Redact every string leaf of a JSON-like value (dicts, lists, tuples) and every dict key."""
        counts: Counter[str] = Counter()
        redacted = self._redact_leaves(value, counts)
        return redacted, dict(counts)

    def _redact_leaves(self, value: object, counts: Counter[str]) -> object:
        if isinstance(value, str):
            redaction = self.redact(value)
            counts.update(redaction.counts)
            return redaction.text
        if isinstance(value, dict):
            return self._redact_dict(value, counts)
        if isinstance(value, list):
            return [self._redact_leaves(item, counts) for item in value]
        if isinstance(value, tuple):
            return tuple(self._redact_leaves(item, counts) for item in value)
        return value

    def _redact_dict(self, value: dict[object, object], counts: Counter[str]) -> dict[object, object]:
        """Keys are redacted as text is; two keys that redact alike ('<EMAIL>') become '<EMAIL>', '<EMAIL>#2'."""
        redacted: dict[object, object] = {}
        for key, item in value.items():
            new_key = self._redact_leaves(key, counts) if isinstance(key, str) else key
            if new_key in redacted:
                new_key = next(f"{new_key}#{n}" for n in itertools.count(2) if f"{new_key}#{n}" not in redacted)
            redacted[new_key] = self._redact_leaves(item, counts)
        return redacted
