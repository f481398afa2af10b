import time

import pytest

from alerts.matchers import Matcher, MatcherError, match_all, parse_all

LABELS = {"alertname": "AcceptanceBelowThreshold", "severity": "critical", "segment": "tenant=acme/lang=zh"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("severity=critical", True),
        ("severity = critical", True),
        ('severity="critical"', True),
        ("severity=warning", False),
        ("severity!=warning", True),
        ("segment=~.*lang=zh.*", True),
        ("segment=~lang=zh", False),  # a regex must match the whole value
        ("segment!~.*lang=en.*", True),
        ("runbook=", True),  # an absent label matches the empty string
        ("runbook!=", False),
    ],
)
def test_matcher_semantics(text: str, expected: bool) -> None:
    assert Matcher.parse(text).matches(LABELS) is expected


@pytest.mark.parametrize("text", ["severity", "=critical", "segment=~(unclosed", "1abc=x"])
def test_bad_matchers_are_refused_with_the_text(text: str) -> None:
    with pytest.raises(MatcherError, match=r"matcher|regular expression"):
        Matcher.parse(text)


def test_all_matchers_must_match() -> None:
    assert match_all(parse_all(["severity=critical", "segment=~.*zh"]), LABELS)
    assert not match_all(parse_all(["severity=critical", "segment=~.*en"]), LABELS)
    assert str(Matcher.parse("segment =~ .*zh")) == "segment=~.*zh"


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("(a+)+b", "quantifier applies to a group"),
        ("(?:a|aa)*", "quantifier applies to a group"),
        (r"(\w+\s?)*/lang=zh", "quantifier applies to a group"),
        ("(?:.*a){3}", "quantifier applies to a group"),
        (".*a.*b.*c.*d", "too many open-ended quantifiers"),
        (r"(zh)\1", "backreferences"),
        ("x" * 257, "257 characters"),
    ],
)
def test_regexes_that_could_backtrack_for_long_are_refused_with_why(pattern: str, reason: str) -> None:
    with pytest.raises(MatcherError, match=f"refused: .*{reason}"):
        Matcher.parse(f"segment=~{pattern}")


@pytest.mark.parametrize(
    "pattern", [".*lang=zh.*", "tenant=acme/.*", "lang=(zh|ja|ko)", ".*(en|zh).*", ".*a.*a.*b", "(?:ab)+", "[a-z]+/.*"]
)
def test_bounded_regexes_are_accepted_and_match_a_hostile_label_quickly(pattern: str) -> None:
    matcher = Matcher.parse(f"segment!~{pattern}")
    started = time.perf_counter()
    assert matcher.matches({"segment": "a" * 255})
    assert time.perf_counter() - started < 1.0
