"""Label matchers, as Alertmanager writes them: `name=value`, `name!=value`, `name=~regex`, `name!~regex`.

    Matcher.parse("segment=~.*lang=zh.*").matches({"segment": "tenant=acme/lang=zh"})  # True

A regex must match the whole label value; a label that is absent matches as the empty string.
Regexes that could take long to match (label values come from traffic) are refused when parsed:
nested quantifiers such as `(a+)+` or `(a|aa)*`, backreferences, more than MAX_PATTERN_CHARS
characters, and combinations of quantifiers and alternations that could try more than
MAX_BACKTRACKING ways on a label of LABEL_CHARS characters (three `.*` are fine, four are not).
"""

from __future__ import annotations

import re
import re._constants as sre
import re._parser as sre_parse
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

_MATCHER = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(.*?)\s*$")

MAX_PATTERN_CHARS = 256
LABEL_CHARS = 255  # the longest label value (a segment) a pattern is judged against
MAX_BACKTRACKING = 20_000_000  # ways to try: 255**3 (three `.*`) fits, 255**4 does not
_REPEATS = (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT)


class MatcherError(ValueError):
    """A matcher that cannot be parsed."""


@dataclass(frozen=True)
class Matcher:
    name: str
    operator: str  # "=", "!=", "=~", "!~"
    value: str

    @classmethod
    def parse(cls, text: str) -> Matcher:
        found = _MATCHER.match(text)
        if not found:
            raise MatcherError(f"not a matcher: {text!r} (expected name=value, name!=value, name=~re or name!~re)")
        name, operator, value = found.groups()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        if operator in ("=~", "!~"):
            try:
                re.compile(value)
            except re.error as exc:
                raise MatcherError(f"bad regular expression in {text!r}: {exc}") from None
            problem = slow_pattern_problem(value)
            if problem:
                raise MatcherError(f"regular expression in {text!r} refused: {problem}")
        return cls(name, operator, value)

    def matches(self, labels: Mapping[str, str]) -> bool:
        actual = labels.get(self.name, "")
        if self.operator == "=":
            return actual == self.value
        if self.operator == "!=":
            return actual != self.value
        full = re.fullmatch(self.value, actual) is not None
        return full if self.operator == "=~" else not full

    def __str__(self) -> str:
        return f"{self.name}{self.operator}{self.value}"


def parse_all(texts: Iterable[str]) -> list[Matcher]:
    return [Matcher.parse(text) for text in texts]


def match_all(matchers: Iterable[Matcher], labels: Mapping[str, str]) -> bool:
    return all(matcher.matches(labels) for matcher in matchers)


def slow_pattern_problem(pattern: str) -> str | None:
    """Why matching `pattern` could take too long (catastrophic backtracking), or None when it is bounded."""
    if len(pattern) > MAX_PATTERN_CHARS:
        return f"{len(pattern)} characters, at most {MAX_PATTERN_CHARS} are allowed"
    ways = 1
    for op, av in _nodes(sre_parse.parse(pattern)):
        if op in (sre.GROUPREF, sre.GROUPREF_EXISTS):
            return "backreferences are not allowed"
        if op in _REPEATS:
            low, high, body = av
            if high > 1 and _has_choice(body):
                return "a quantifier applies to a group that itself has a quantifier or an alternation (as in (a+)+)"
            ways *= min(high, LABEL_CHARS) - low + 1
        elif op is sre.BRANCH:
            ways *= len(av[1])
    if ways > MAX_BACKTRACKING:
        return "too many open-ended quantifiers and alternations (at most three like .* in one pattern)"
    return None


def _nodes(tree: Any) -> Iterator[tuple[Any, Any]]:
    """Every (opcode, argument) of a parsed pattern, nested ones included."""
    for op, av in tree:
        yield op, av
        for child in _children(op, av):
            yield from _nodes(child)


def _children(op: Any, av: Any) -> list[Any]:
    if op in _REPEATS:
        return [av[2]]
    if op is sre.SUBPATTERN:
        return [av[3]]
    if op is sre.BRANCH:
        return list(av[1])
    if op in (sre.ASSERT, sre.ASSERT_NOT):
        return [av[1]]
    if op is sre.ATOMIC_GROUP:
        return [av]
    if op is sre.GROUPREF_EXISTS:
        return [branch for branch in av[1:] if branch is not None]
    return []


def _has_choice(tree: Any) -> bool:
    """Whether a subpattern can match in more than one way: a variable quantifier or an alternation."""
    return any((op in _REPEATS and av[0] != av[1]) or op is sre.BRANCH for op, av in _nodes(tree))
