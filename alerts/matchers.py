"""Label matchers, as Alertmanager writes them: `name=value`, `name!=value`, `name=~regex`, `name!~regex`.

    Matcher.parse("segment=~.*lang=zh.*").matches({"segment": "tenant=acme/lang=zh"})  # True

A regex must match the whole label value; a label that is absent matches as the empty string.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

_MATCHER = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(.*?)\s*$")


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
