"""Findings -> alerts -> notification log -> outbox, on a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, event, select
from sqlalchemy.orm import Session

from alerts.lifecycle import raise_findings
from alerts.matchers import Matcher, MatcherError
from alerts.queries import add_silence, alert_views, expire_silence
from monitor.base.config import AlertsConfig
from monitor.base.db import AlertRecord, NotificationLogEntry, OutboxMessage, Silence
from monitor.evaluation.finding import Finding

T0 = datetime(2026, 11, 1, 12, tzinfo=UTC)
EVALUATED = {"threshold", "change", "input_drift"}


def breach(segment: str, alpha: float = 0.41, window: str = "1h") -> Finding:
    evidence = {"alpha": alpha, "interval": [alpha - 0.05, alpha + 0.05], "samples": 120, "threshold": 0.65}
    return Finding("threshold", segment, window, "critical", f"alpha {alpha} below 0.65 for {segment}", evidence)


def drop(segment: str) -> Finding:
    return Finding("change", segment, "7d", "warning", f"alpha dropped for {segment}", {"baseline": 0.8})


def at(**delta: float) -> datetime:
    return T0 + timedelta(**delta)


def outbox(engine: Engine) -> list[OutboxMessage]:
    with Session(engine) as session:
        return list(session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))


def alerts_by_name(engine: Engine) -> dict[tuple[str, str], AlertRecord]:
    with Session(engine) as session:
        return {(row.alertname, row.labels["segment"]): row for row in session.scalars(select(AlertRecord))}


@pytest.fixture
def config() -> AlertsConfig:
    return AlertsConfig()


def test_fire_wait_notify_repeat_resolve(engine: Engine, config: AlertsConfig) -> None:
    report = raise_findings(config, engine, [breach("lang=zh")], EVALUATED, now=T0)
    assert report.fired == ["AcceptanceBelowThreshold{segment=lang=zh}"] and report.queued == []
    raise_findings(config, engine, [breach("lang=zh", 0.40)], EVALUATED, now=at(seconds=31))
    [first] = outbox(engine)
    assert (first.receiver, first.kind, first.incident) == ("console", "firing", 1)
    [alert] = first.payload["alerts"]
    assert alert["labels"] == {"alertname": "AcceptanceBelowThreshold", "severity": "critical", "segment": "lang=zh"}
    assert alert["annotations"]["evidence"]["alpha"] == 0.40 and alert["status"] == "firing"

    raise_findings(config, engine, [breach("lang=zh")], EVALUATED, now=at(hours=2))
    assert len(outbox(engine)) == 1, "no change and repeat_interval (4h) not passed"
    raise_findings(config, engine, [breach("lang=zh")], EVALUATED, now=at(hours=4, minutes=1))
    assert [m.kind for m in outbox(engine)] == ["firing", "repeat"]

    raise_findings(config, engine, [], EVALUATED, now=at(hours=5))
    assert alerts_by_name(engine)[("AcceptanceBelowThreshold", "lang=zh")].status == "firing", "clear, not resolved yet"
    report = raise_findings(config, engine, [], EVALUATED, now=at(hours=5, minutes=15))
    assert report.resolved == ["AcceptanceBelowThreshold{segment=lang=zh}"]
    messages = outbox(engine)
    assert [m.kind for m in messages] == ["firing", "repeat", "resolved"]
    assert messages[-1].payload["alerts"][0]["status"] == "resolved"
    with Session(engine) as session:
        [entry] = session.scalars(select(NotificationLogEntry))
        assert not entry.open

    raise_findings(config, engine, [breach("lang=zh")], EVALUATED, now=at(hours=6))
    raise_findings(config, engine, [breach("lang=zh")], EVALUATED, now=at(hours=6, minutes=1))
    assert [(m.kind, m.incident) for m in outbox(engine)][-1] == ("firing", 2), "firing again is a new incident"


def test_condition_that_flaps_back_within_resolve_after_stays_one_alert(engine: Engine, config: AlertsConfig) -> None:
    raise_findings(config, engine, [breach("lang=zh")], EVALUATED, now=T0)
    raise_findings(config, engine, [], EVALUATED, now=at(minutes=5))
    raise_findings(config, engine, [breach("lang=zh")], EVALUATED, now=at(minutes=10))
    raise_findings(config, engine, [], EVALUATED, now=at(minutes=21))
    row = alerts_by_name(engine)[("AcceptanceBelowThreshold", "lang=zh")]
    assert row.status == "firing" and row.starts_at == T0


def test_detectors_that_did_not_run_leave_their_alerts_alone(engine: Engine, config: AlertsConfig) -> None:
    raise_findings(config, engine, [breach("lang=zh")], EVALUATED, now=T0)
    raise_findings(config, engine, [], {"replay_stalled"}, now=at(hours=3))
    assert alerts_by_name(engine)[("AcceptanceBelowThreshold", "lang=zh")].status == "firing"


def test_windows_of_one_segment_make_one_alert(engine: Engine, config: AlertsConfig) -> None:
    raise_findings(config, engine, [breach("lang=zh", window="1h"), breach("lang=zh", window="24h")], EVALUATED, T0)
    [row] = alerts_by_name(engine).values()
    assert row.annotations["windows"] == ["1h", "24h"]


def test_below_threshold_inhibits_the_drop_warning_for_its_segment(engine: Engine, config: AlertsConfig) -> None:
    findings = [breach("lang=zh"), drop("lang=zh"), drop("lang=en")]
    raise_findings(config, engine, findings, EVALUATED, now=T0)
    raise_findings(config, engine, findings, EVALUATED, now=at(minutes=1))
    notified = {
        (m.payload["alerts"][0]["labels"]["alertname"], m.payload["group_labels"]["segment"]) for m in outbox(engine)
    }
    assert notified == {("AcceptanceBelowThreshold", "lang=zh"), ("AcceptanceDropped", "lang=en")}
    views = {(v.alert.name, v.alert.labels["segment"]): v.muted_by for v in alert_views(config, engine)}
    assert views[("AcceptanceDropped", "lang=zh")] == "inhibited by AcceptanceBelowThreshold"


def test_silence_mutes_until_it_ends(engine: Engine, config: AlertsConfig) -> None:
    now = datetime.now(UTC)
    silence = add_silence(engine, ["segment=lang=en"], now + timedelta(hours=1), "known", "test")
    later = now + timedelta(seconds=1)
    raise_findings(config, engine, [breach("lang=en")], EVALUATED, now=later)
    raise_findings(config, engine, [breach("lang=en")], EVALUATED, now=later + timedelta(minutes=1))
    assert outbox(engine) == []
    assert alert_views(config, engine)[0].muted_by == f"silenced by silence {silence}"
    assert expire_silence(engine, silence) and not expire_silence(engine, silence)
    raise_findings(config, engine, [breach("lang=en")], EVALUATED, now=datetime.now(UTC) + timedelta(minutes=2))
    assert [m.kind for m in outbox(engine)] == ["firing"]


def test_routes_send_by_severity_and_segment(engine: Engine) -> None:
    config = AlertsConfig.model_validate(
        {
            "receivers": {
                "console": {"type": "console"},
                "zh-oncall": {"type": "console"},
            },
            "routes": [{"matchers": ["severity=critical", "segment=~.*lang=zh.*"], "receiver": "zh-oncall"}],
        }
    )
    findings = [breach("tenant=acme/lang=zh"), breach("tenant=acme/lang=en")]
    raise_findings(config, engine, findings, EVALUATED, now=T0)
    raise_findings(config, engine, findings, EVALUATED, now=at(minutes=1))
    routed = {m.payload["group_labels"]["segment"]: m.receiver for m in outbox(engine)}
    assert routed == {"tenant=acme/lang=zh": "zh-oncall", "tenant=acme/lang=en": "console"}


def test_unknown_receiver_in_a_route_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="unknown receiver"):
        AlertsConfig.model_validate({"routes": [{"matchers": ["severity=critical"], "receiver": "nobody"}]})


def test_a_silence_with_a_backtracking_regex_is_refused_and_not_stored(engine: Engine) -> None:
    ends = datetime.now(UTC) + timedelta(hours=1)
    with pytest.raises(MatcherError, match=r"segment=~\(\.\*a\)\+.*refused: a quantifier applies to a group"):
        add_silence(engine, ["segment=~(.*a)+"], ends, "hostile", "test")
    with Session(engine) as session:
        assert session.scalars(select(Silence)).all() == []


def open_transactions(engine: Engine) -> Callable[[], int]:
    """How many of the engine's connections are inside a transaction right now."""
    inside: set[int] = set()
    event.listen(engine, "begin", lambda connection: inside.add(id(connection)))
    event.listen(engine, "commit", lambda connection: inside.discard(id(connection)))
    event.listen(engine, "rollback", lambda connection: inside.discard(id(connection)))
    return lambda: len(inside)


def test_silences_are_matched_outside_the_planning_transaction(
    engine: Engine, config: AlertsConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    pattern = ".*lang=en.*"
    in_transaction: list[bool] = []
    transactions = open_transactions(engine)
    matches = Matcher.matches

    def observed(matcher: Matcher, labels: Mapping[str, str]) -> bool:
        if matcher.value == pattern:
            in_transaction.append(transactions() > 0)
        return matches(matcher, labels)

    monkeypatch.setattr(Matcher, "matches", observed)  # observes, then matches as always
    now = datetime.now(UTC)
    add_silence(engine, [f"segment=~{pattern}"], now + timedelta(hours=1), "known", "test")
    raise_findings(config, engine, [breach("lang=en"), breach("lang=zh")], EVALUATED, now=now + timedelta(seconds=1))
    raise_findings(config, engine, [breach("lang=en"), breach("lang=zh")], EVALUATED, now=now + timedelta(minutes=1))
    assert [m.payload["group_labels"]["segment"] for m in outbox(engine)] == ["lang=zh"], "lang=en is silenced"
    assert in_transaction and not any(in_transaction), "no regex runs while planning holds the database"
