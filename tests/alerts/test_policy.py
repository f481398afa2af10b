"""The notify decision and muting as pure functions (Alertmanager's rules)."""

from datetime import UTC, datetime, timedelta

from alerts.matchers import parse_all
from alerts.policy import (
    ActiveSilence,
    Decision,
    GroupState,
    InhibitRule,
    LogEntry,
    Timing,
    decide,
    group_key,
    muted,
    route,
)

T0 = datetime(2026, 11, 1, tzinfo=UTC)
TIMING = Timing(
    group_wait=timedelta(seconds=30),
    group_interval=timedelta(minutes=5),
    repeat_interval=timedelta(hours=4),
    send_resolved=True,
)


def state(firing: set[str], resolved: set[str] = frozenset(), started: datetime = T0) -> GroupState:  # type: ignore[assignment]
    return GroupState(frozenset(firing), frozenset(resolved), started if firing else None)


def told(firing: set[str], at: datetime, resolved: set[str] = frozenset(), open: bool = True) -> LogEntry:  # type: ignore[assignment]
    return LogEntry(1, open, frozenset(firing), frozenset(resolved), at)


def after(**delta: float) -> datetime:
    return T0 + timedelta(**delta)


def test_new_group_waits_group_wait_then_notifies() -> None:
    assert not decide(state({"a"}), None, after(seconds=29), TIMING).notify
    decision = decide(state({"a"}), None, after(seconds=30), TIMING)
    assert decision == Decision(True, "firing", "new group")


def test_nothing_firing_and_nothing_told_is_silent() -> None:
    assert decide(state(set(), {"a"}), None, after(hours=1), TIMING) == Decision.wait("nothing firing")


def test_no_change_waits_for_repeat_interval() -> None:
    entry = told({"a"}, at=after(minutes=1))
    assert not decide(state({"a"}), entry, after(hours=4, seconds=59), TIMING).notify
    decision = decide(state({"a"}), entry, after(hours=4, minutes=1), TIMING)
    assert (decision.notify, decision.kind) == (True, "repeat")


def test_new_alert_in_group_waits_group_interval() -> None:
    entry = told({"a"}, at=after(minutes=1))
    assert not decide(state({"a", "b"}), entry, after(minutes=5), TIMING).notify
    decision = decide(state({"a", "b"}), entry, after(minutes=6), TIMING)
    assert (decision.notify, decision.kind) == (True, "firing")


def test_resolution_is_notified_once_and_closes_the_incident() -> None:
    entry = told({"a"}, at=after(minutes=1))
    waiting = decide(state(set(), {"a"}), entry, after(minutes=3), TIMING)
    assert not waiting.notify and not waiting.closes
    decision = decide(state(set(), {"a"}), entry, after(minutes=6), TIMING)
    assert (decision.notify, decision.kind, decision.closes) == (True, "resolved", True)
    closed = told(set(), at=after(minutes=6), resolved={"a"}, open=False)
    assert not decide(state(set(), {"a"}), closed, after(hours=9), TIMING).notify


def test_without_send_resolved_the_incident_closes_quietly() -> None:
    quiet = Timing(TIMING.group_wait, TIMING.group_interval, TIMING.repeat_interval, send_resolved=False)
    decision = decide(state(set(), {"a"}), told({"a"}, at=T0), after(hours=1), quiet)
    assert (decision.notify, decision.closes) == (False, True)
    partly = decide(state({"b"}, {"a"}), told({"a", "b"}, at=T0), after(minutes=10), quiet)
    assert not partly.notify


def test_partial_resolution_is_a_change_when_send_resolved() -> None:
    decision = decide(state({"b"}, {"a"}), told({"a", "b"}, at=T0), after(minutes=10), TIMING)
    assert (decision.notify, decision.kind, decision.closes) == (True, "firing", False)


def test_fires_again_after_a_closed_incident_as_a_new_group() -> None:
    closed = told(set(), at=after(minutes=10), open=False)
    assert not decide(state({"a"}, started=after(hours=2)), closed, after(hours=2, seconds=10), TIMING).notify
    decision = decide(state({"a"}, started=after(hours=2)), closed, after(hours=2, seconds=31), TIMING)
    assert (decision.notify, decision.kind) == (True, "firing")


def test_all_muted_group_closes_without_notifying() -> None:
    decision = decide(state(set()), told({"a"}, at=T0), after(hours=1), TIMING)
    assert (decision.notify, decision.closes) == (False, True)


def test_routes_first_match_wins_else_default() -> None:
    routes = [
        (parse_all(["severity=critical", "segment=~.*lang=zh.*"]), "zh-oncall"),
        (parse_all(["severity=critical"]), "oncall"),
    ]
    assert route({"severity": "critical", "segment": "lang=zh"}, routes, "console") == "zh-oncall"
    assert route({"severity": "critical", "segment": "lang=en"}, routes, "console") == "oncall"
    assert route({"severity": "warning", "segment": "lang=zh"}, routes, "console") == "console"


def test_group_key_depends_on_receiver_and_group_labels_only() -> None:
    a, labels = group_key(
        "oncall", {"alertname": "X", "segment": "lang=zh", "severity": "critical"}, ["alertname", "segment"]
    )
    b, _ = group_key(
        "oncall", {"segment": "lang=zh", "alertname": "X", "severity": "warning"}, ["alertname", "segment"]
    )
    c, _ = group_key("other", {"alertname": "X", "segment": "lang=zh"}, ["alertname", "segment"])
    assert a == b != c and labels == {"alertname": "X", "segment": "lang=zh"}


INHIBIT = [InhibitRule(tuple(parse_all(["alertname=Below"])), tuple(parse_all(["alertname=Dropped"])), ("segment",))]


def test_critical_below_threshold_inhibits_the_drop_warning_for_the_same_segment_only() -> None:
    alerts = {
        "below-zh": {"alertname": "Below", "segment": "lang=zh"},
        "drop-zh": {"alertname": "Dropped", "segment": "lang=zh"},
        "drop-en": {"alertname": "Dropped", "segment": "lang=en"},
    }
    reasons = muted(alerts, firing=alerts, silences=[], inhibit_rules=INHIBIT)
    assert reasons == {"drop-zh": "inhibited by Below"}
    assert muted(alerts, firing=["drop-zh", "drop-en"], silences=[], inhibit_rules=INHIBIT) == {}


def test_silence_mutes_what_its_matchers_select() -> None:
    alerts = {
        "drop-zh": {"alertname": "Dropped", "segment": "lang=zh"},
        "drop-en": {"alertname": "Dropped", "segment": "lang=en"},
    }
    silence = ActiveSilence(7, tuple(parse_all(["segment=lang=en"])))
    assert muted(alerts, firing=alerts, silences=[silence], inhibit_rules=[]) == {"drop-en": "silenced by silence 7"}
