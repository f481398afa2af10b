"""The whole alert lifecycle delivered to a fake Slack over real HTTP: fire, repeat, resolve,
silence and inhibition, and an outbox that survives 500s, 429s, timeouts and an hour of outage."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from alerts.lifecycle import raise_findings
from alerts.outbox import dispatch, pending_count
from alerts.queries import add_silence
from monitor.base.config import AlertsConfig
from monitor.base.db import OutboxMessage
from monitor.evaluation.finding import Finding
from tests.alerts.fake_slack import FakeSlack

TOKEN = "xoxb-delivery-test-token"
CHANNEL = "#inference-oncall"
EVALUATED = {"threshold", "change", "input_drift"}


@pytest.fixture
def slack(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSlack]:
    monkeypatch.setenv("SW_TEST_SLACK_TOKEN", TOKEN)
    with FakeSlack(token=TOKEN) as fake:
        yield fake


def slack_config(slack: FakeSlack, **overrides: object) -> AlertsConfig:
    receiver = {
        "type": "slack",
        "channel": CHANNEL,
        "bot_token": {"env": "SW_TEST_SLACK_TOKEN"},
        "slack_api_url": slack.api_url,
        "timeout_s": 0.5,
    }
    return AlertsConfig.model_validate(
        {"receivers": {"oncall": receiver}, "default_receiver": "oncall", "report_url": "http://r/report.html"}
        | overrides
    )


def breach(segment: str) -> Finding:
    evidence = {"alpha": 0.41, "interval": [0.36, 0.47], "samples": 120, "threshold": 0.65}
    return Finding("threshold", segment, "1h", "critical", f"alpha 0.41 below 0.65 for {segment}", evidence)


def drop(segment: str) -> Finding:
    return Finding("change", segment, "7d", "warning", f"alpha dropped for {segment}", {"baseline": 0.8})


class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


def outbox(engine: Engine) -> list[OutboxMessage]:
    with Session(engine) as session:
        return list(session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))


def test_fire_repeat_resolve_in_one_slack_thread(engine: Engine, slack: FakeSlack) -> None:
    config = slack_config(slack)
    clock = Clock(datetime.now(UTC))
    raise_findings(config, engine, [breach("lang=zh")], EVALUATED, now=clock())
    raise_findings(config, engine, [breach("lang=zh")], EVALUATED, now=clock.advance(seconds=31))
    assert dispatch(config, engine, clock=clock).sent == 1
    [parent] = slack.posts()
    assert parent["channel"] == slack.channel_id(CHANNEL) and "thread_ts" not in parent
    assert "AcceptanceBelowThreshold" in parent["text"] and "0.41" in str(parent["blocks"])
    assert "http://r/report.html" in str(parent["blocks"])

    raise_findings(config, engine, [breach("lang=zh")], EVALUATED, now=clock.advance(hours=4, minutes=1))
    dispatch(config, engine, clock=clock)
    raise_findings(config, engine, [], EVALUATED, now=clock.advance(minutes=1))
    raise_findings(config, engine, [], EVALUATED, now=clock.advance(minutes=15))
    dispatch(config, engine, clock=clock)

    posts = slack.posts()
    assert len(posts) == 3, "fire, repeat, resolved"
    assert [p.get("thread_ts") for p in posts[1:]] == [parent["ts"], parent["ts"]], "follow-ups thread under the first"
    updates = slack.updates()
    assert len(updates) == 2 and all(u["ts"] == parent["ts"] for u in updates)
    assert "RESOLVED" in str(updates[-1]["blocks"]) and "RESOLVED" in str(slack.messages(CHANNEL)[0]["blocks"])
    assert pending_count(engine) == 0

    raise_findings(config, engine, [breach("lang=zh")], EVALUATED, now=clock.advance(hours=1))
    raise_findings(config, engine, [breach("lang=zh")], EVALUATED, now=clock.advance(minutes=1))
    dispatch(config, engine, clock=clock)
    assert "thread_ts" not in slack.posts()[-1], "a new incident starts a new thread"


def test_silenced_and_inhibited_alerts_reach_nobody(engine: Engine, slack: FakeSlack) -> None:
    config = slack_config(slack)
    clock = Clock(datetime.now(UTC) + timedelta(seconds=1))
    add_silence(engine, ["segment=lang=en"], clock.now + timedelta(hours=2), "en reindex", "test")
    findings = [breach("lang=zh"), drop("lang=zh"), breach("lang=en"), drop("lang=code")]
    raise_findings(config, engine, findings, EVALUATED, now=clock())
    raise_findings(config, engine, findings, EVALUATED, now=clock.advance(minutes=1))
    dispatch(config, engine, clock=clock)
    texts = [p["text"] for p in slack.posts()]
    assert len(texts) == 2
    assert any("AcceptanceBelowThreshold" in t and "lang=zh" in t for t in texts)
    assert any("AcceptanceDropped" in t and "lang=code" in t for t in texts)


def queue_one(config: AlertsConfig, engine: Engine, clock: Clock, segment: str = "lang=zh") -> None:
    raise_findings(config, engine, [breach(segment)], EVALUATED, now=clock())
    raise_findings(config, engine, [breach(segment)], EVALUATED, now=clock.advance(seconds=31))


def test_server_errors_back_off_and_retry(engine: Engine, slack: FakeSlack) -> None:
    config = slack_config(slack)
    clock = Clock(datetime.now(UTC))
    queue_one(config, engine, clock)
    slack.fail_next(500, times=2)
    report = dispatch(config, engine, clock=clock)
    assert (report.sent, report.failed) == (0, 1) and "500" in report.errors[0]
    requests = len(slack.requests)
    clock.advance(seconds=3)
    assert dispatch(config, engine, clock=clock).failed == 0 and len(slack.requests) == requests, "waits 5 s"
    clock.advance(seconds=3)
    assert dispatch(config, engine, clock=clock).failed == 1
    [row] = outbox(engine)
    assert row.attempts == 2 and row.next_attempt_at == clock.now + timedelta(seconds=10), "doubles"
    clock.advance(seconds=10)
    assert dispatch(config, engine, clock=clock).sent == 1
    assert len(slack.posts()) == 1


def test_rate_limit_honours_retry_after(engine: Engine, slack: FakeSlack) -> None:
    config = slack_config(slack)
    clock = Clock(datetime.now(UTC))
    queue_one(config, engine, clock)
    slack.rate_limit_next(retry_after=30)
    dispatch(config, engine, clock=clock)
    [row] = outbox(engine)
    assert row.next_attempt_at == clock.now + timedelta(seconds=30)
    clock.advance(seconds=29)
    dispatch(config, engine, clock=clock)
    assert slack.posts() == []
    clock.advance(seconds=2)
    assert dispatch(config, engine, clock=clock).sent == 1


def test_timeout_after_slack_accepted_is_not_posted_twice(engine: Engine, slack: FakeSlack) -> None:
    config = slack_config(slack)
    clock = Clock(datetime.now(UTC))
    queue_one(config, engine, clock)
    slack.hang_next(2.0, path="chat.postMessage")
    report = dispatch(config, engine, clock=clock)
    assert report.failed == 1 and len(slack.posts()) == 1, "Slack stored it; the answer came too late"
    clock.advance(minutes=1)
    report = dispatch(config, engine, clock=clock)
    assert (report.recovered, report.sent) == (1, 0)
    assert len(slack.posts()) == 1
    [row] = outbox(engine)
    assert row.sent_at is not None and row.receipt and row.receipt["ts"] == slack.posts()[0]["ts"]


def test_an_hour_of_outage_loses_nothing_and_keeps_order(engine: Engine, slack: FakeSlack) -> None:
    config = slack_config(slack)
    clock = Clock(datetime.now(UTC))
    slack.stop()
    segments = ["lang=zh", "lang=ja", "tenant=acme/lang=en"]
    for segment in segments:
        queue_one(config, engine, clock, segment)
    attempts = 0
    for _ in range(12):  # every five minutes for an hour
        report = dispatch(config, engine, clock=clock)
        attempts += report.failed
        clock.advance(minutes=5)
    assert attempts >= 6 and pending_count(engine) == 3
    [head, *_] = outbox(engine)
    assert head.next_attempt_at is not None and head.next_attempt_at - clock.now <= timedelta(seconds=300)
    slack.start()
    clock.advance(minutes=5)
    assert dispatch(config, engine, clock=clock).sent == 3
    assert [p["text"].split("lang=")[-1].split()[0].strip("}:") for p in slack.posts()] == ["zh", "ja", "en"]


HOSTILE = "tenant=<!channel>&co/lang=zh <@U0ADMIN> <https://evil.example|click>"


def test_hostile_labels_reach_slack_as_text_never_as_mentions_or_links(engine: Engine, slack: FakeSlack) -> None:
    config = slack_config(slack)
    clock = Clock(datetime.now(UTC))
    queue_one(config, engine, clock, segment=HOSTILE)
    raise_findings(config, engine, [breach(HOSTILE)], EVALUATED, now=clock.advance(hours=4, minutes=1))
    dispatch(config, engine, clock=clock)
    messages = slack.posts() + slack.updates()
    assert len(messages) == 3, "first message, the repeat in its thread, and the edit of the first"
    for message in messages:
        assert "<" not in message["text"], "the fallback text is mrkdwn too: no mention, no link"
        assert "&lt;!channel&gt;&amp;co" in message["text"]
        blocks = json.dumps(message["blocks"])
        assert "<!" not in blocks and "<@" not in blocks and "<https://evil" not in blocks
