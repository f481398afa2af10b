"""Notifiers against a fake Slack over real HTTP on 127.0.0.1 (slack-sdk and urllib unpatched)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from alerts.model import Alert, DeliveryError, Notification, Notifier, Receipt, Status
from alerts.notifiers import (
    ConsoleNotifier,
    SlackNotifier,
    SlackWebhookNotifier,
    WebhookNotifier,
    build_notifier,
)
from alerts.render import HEADER_LIMIT, SECTION_LIMIT, slack_blocks
from monitor.base.config import ReceiverConfig, Secret
from tests.alerts.fake_slack import WEBHOOK_PATH, FakeSlack

TOKEN = "xoxb-1111-2222-s3cr3t"
NOW = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
EVIDENCE = {
    "alpha": 0.412,
    "interval": [0.38, 0.44],
    "confidence": 0.95,
    "samples": 180,
    "threshold": 0.6,
    "start": "2026-11-20T08:00:00+00:00",
    "end": "2026-11-20T09:00:00+00:00",
}


def make_alert(segment: str = "lang=zh", status: Status = "firing", summary: str = "alpha 0.412 below 0.60") -> Alert:
    annotations: dict[str, Any] = {
        "summary": summary,
        "evidence": dict(EVIDENCE),
        "window": "1h",
        "runbook_url": "https://runbooks.example/alpha-low",
        "report_url": "",
    }
    labels = {"alertname": "SpecAlphaLow", "segment": segment, "severity": "critical"}
    return Alert(labels, annotations, status, NOW)


def make_notification(notification_id: int = 1, *alerts: Alert, kind: str = "firing") -> Notification:
    return Notification(
        id=notification_id,
        receiver="oncall",
        group_key='{alertname="SpecAlphaLow",segment="lang=zh"}',
        group_labels={"alertname": "SpecAlphaLow", "segment": "lang=zh"},
        kind=kind,
        alerts=list(alerts) or [make_alert()],
        created_at=NOW,
        incident=3,
    )


def resolved(notification_id: int) -> Notification:
    return make_notification(notification_id, make_alert(status="resolved"), kind="resolved")


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack(token=TOKEN) as fake:
        yield fake


def bot(slack: FakeSlack, channel: str = "#alerts", timeout_s: float = 5.0, token: str = TOKEN) -> SlackNotifier:
    return SlackNotifier("oncall", channel=channel, token=Secret(token), api_url=slack.api_url, timeout_s=timeout_s)


def header_of(blocks: list[dict[str, Any]]) -> str:
    return str(blocks[0]["text"]["text"])


def since() -> datetime:
    return datetime.now(UTC) - timedelta(minutes=2)


# Slack with a bot token


def test_first_post_returns_receipt_and_carries_metadata(slack: FakeSlack) -> None:
    receipt = bot(slack).send(make_notification(1), parent=None)

    [post] = slack.posts()
    assert receipt == Receipt(channel=slack.channel_id("#alerts"), ts=post["ts"])
    assert post["metadata"] == {
        "event_type": "specwatch_notification",
        "event_payload": {"notification_id": 1, "group_key": make_notification().group_key, "incident": 3},
    }
    assert "FIRING" in header_of(post["blocks"]) and "SpecAlphaLow" in header_of(post["blocks"])
    assert "SpecAlphaLow" in post["text"]
    fields = " ".join(f["text"] for f in post["blocks"][1]["fields"])
    assert "0.412" in fields and "0.380–0.440" in fields and "180" in fields and "0.60" in fields and "1h" in fields
    assert "<https://runbooks.example/alpha-low|Runbook>" in str(post["blocks"][-1])
    assert "Report" not in str(post["blocks"][-1])  # empty report_url: no link


def test_follow_up_edits_parent_then_replies_in_thread(slack: FakeSlack) -> None:
    notifier = bot(slack)
    parent = notifier.send(make_notification(1), parent=None)

    reply = notifier.send(resolved(2), parent=parent)

    assert [r.method for r in slack.requests] == ["chat.postMessage", "chat.update", "chat.postMessage"]
    [update] = slack.updates()
    assert (update["channel"], update["ts"]) == (parent.channel, parent.ts)
    assert header_of(update["blocks"]).startswith(":white_check_mark: RESOLVED")
    thread_reply = slack.posts()[1]
    assert thread_reply["thread_ts"] == parent.ts and reply.ts == thread_reply["ts"] != parent.ts
    assert thread_reply["metadata"]["event_payload"]["notification_id"] == 2
    assert header_of(slack.messages("#alerts")[0]["blocks"]).startswith(":white_check_mark: RESOLVED")


def test_retrying_a_follow_up_repeats_the_harmless_edit_and_posts_once(slack: FakeSlack) -> None:
    notifier = bot(slack)
    parent = notifier.send(make_notification(1), parent=None)
    slack.fail_next(500, path="chat.postMessage")

    with pytest.raises(DeliveryError):
        notifier.send(make_notification(2, make_alert(), make_alert("lang=en")), parent=parent)
    notifier.send(make_notification(2, make_alert(), make_alert("lang=en")), parent=parent)

    assert len(slack.updates()) == 2 and len(slack.posts()) == 2
    assert "(2 firing)" in header_of(slack.updates()[-1]["blocks"])


def test_server_error_is_a_delivery_error(slack: FakeSlack) -> None:
    slack.fail_next(500)
    with pytest.raises(DeliveryError, match="HTTP 500") as caught:
        bot(slack).send(make_notification(), parent=None)
    assert not caught.value.maybe_delivered and caught.value.retry_after is None
    assert slack.posts() == []


def test_rate_limit_carries_retry_after(slack: FakeSlack) -> None:
    slack.rate_limit_next(retry_after=7)
    with pytest.raises(DeliveryError, match="rate limited") as caught:
        bot(slack).send(make_notification(), parent=None)
    assert caught.value.retry_after == 7.0
    assert len(slack.requests) == 1  # slack-sdk did not retry on its own


def test_timeout_may_have_delivered_and_find_delivered_then_finds_it(slack: FakeSlack) -> None:
    notifier = bot(slack, timeout_s=0.5)
    slack.hang_next(1.5)
    with pytest.raises(DeliveryError, match="timed out") as caught:
        notifier.send(make_notification(5), parent=None)
    assert caught.value.maybe_delivered

    found = bot(slack).find_delivered(make_notification(5), None, since())  # a fresh process after a restart
    assert found == Receipt(channel=slack.channel_id("#alerts"), ts=slack.posts()[0]["ts"])


def test_server_down_is_a_delivery_error_and_up_again_works(slack: FakeSlack) -> None:
    notifier = bot(slack)
    slack.stop()
    with pytest.raises(DeliveryError, match="cannot connect") as caught:
        notifier.send(make_notification(), parent=None)
    assert not caught.value.maybe_delivered

    slack.start()
    assert notifier.send(make_notification(), parent=None).ts == slack.posts()[0]["ts"]


def test_invalid_token_names_the_slack_error_never_the_token(
    slack: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "xoxb-9999-wrong-t0ken"
    with pytest.raises(DeliveryError) as caught:
        bot(slack, token=wrong).send(make_notification(), parent=None)
    assert "invalid_auth" in str(caught.value)
    assert wrong not in str(caught.value) and wrong not in caplog.text


def test_unknown_channel_names_the_slack_error(slack: FakeSlack) -> None:
    with pytest.raises(DeliveryError, match="channel_not_found"):
        bot(slack, channel="C9999").send(make_notification(), parent=None)


def test_find_delivered_by_notification_id(slack: FakeSlack) -> None:
    notifier = bot(slack)
    first = notifier.send(make_notification(1), parent=None)
    reply = notifier.send(resolved(2), parent=first)

    restarted = bot(slack)  # knows the channel only by name: looks its id up
    assert restarted.find_delivered(make_notification(1), None, since()) == first
    assert restarted.find_delivered(resolved(2), first, since()) == reply
    assert restarted.find_delivered(make_notification(3), None, since()) is None
    assert restarted.find_delivered(resolved(3), first, since()) is None
    assert bot(slack).find_delivered(make_notification(1), None, datetime.now(UTC) + timedelta(minutes=1)) is None


def test_find_delivered_with_a_channel_id_and_naive_since(slack: FakeSlack) -> None:
    channel_id = slack.channel_id("#alerts")
    first = bot(slack, channel=channel_id).send(make_notification(1), parent=None)
    naive_utc = since().replace(tzinfo=None)
    assert bot(slack, channel=channel_id).find_delivered(make_notification(1), None, naive_utc) == first
    assert [r.method for r in slack.requests][-1] == "conversations.history"  # no channel lookup needed


def test_find_delivered_pages_through_history(slack: FakeSlack) -> None:
    notifier = bot(slack)
    for notification_id in range(1, 206):
        notifier.send(make_notification(notification_id), parent=None)
    assert notifier.find_delivered(make_notification(1), None, since()) is not None
    assert len(slack.calls("conversations.history")) == 2


def test_find_delivered_that_cannot_ask_raises(slack: FakeSlack) -> None:
    notifier = bot(slack)
    parent = notifier.send(make_notification(1), parent=None)
    slack.fail_next(503, path="conversations.replies")
    with pytest.raises(DeliveryError, match="HTTP 503"):
        notifier.find_delivered(resolved(2), parent, since())
    slack.stop()
    with pytest.raises(DeliveryError):
        notifier.find_delivered(make_notification(1), None, since())


def test_find_delivered_for_an_unknown_channel_name_cannot_tell(slack: FakeSlack) -> None:
    assert bot(slack, channel="#nowhere").find_delivered(make_notification(1), None, since()) is None


def test_held_answer_leaves_the_message_delivered(slack: FakeSlack) -> None:
    hold = slack.hold_next("chat.postMessage")
    outcome: list[Receipt] = []
    sender = threading.Thread(target=lambda: outcome.append(bot(slack).send(make_notification(7), parent=None)))
    sender.start()

    assert slack.wait_until_held(5)
    assert [p["metadata"]["event_payload"]["notification_id"] for p in slack.posts()] == [7]
    assert not outcome
    hold.release.set()
    sender.join(5)
    assert outcome and outcome[0].ts == slack.posts()[0]["ts"]


# Slack incoming webhook


def webhook(slack: FakeSlack, timeout_s: float = 5.0, url: str | None = None) -> SlackWebhookNotifier:
    return SlackWebhookNotifier("pager", url=Secret(url or slack.webhook_url), timeout_s=timeout_s)


def test_webhook_mode_posts_blocks_and_follow_ups_are_new_messages(slack: FakeSlack) -> None:
    notifier = webhook(slack)
    first = notifier.send(make_notification(1), parent=None)
    notifier.send(resolved(2), parent=first)

    posts = slack.webhook_posts()
    assert len(posts) == 2 and "thread_ts" not in posts[1]
    assert header_of(posts[0]["blocks"]).startswith(":rotating_light: FIRING") and posts[0]["text"]
    assert header_of(posts[1]["blocks"]).startswith(":white_check_mark: RESOLVED")
    assert notifier.find_delivered(make_notification(1), None, since()) is None


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (lambda s: s.rate_limit_next(retry_after=12), {"retry_after": 12.0, "maybe_delivered": False}),
        (lambda s: s.fail_next(500), {"retry_after": None, "maybe_delivered": False}),
        (lambda s: s.hang_next(1.5), {"retry_after": None, "maybe_delivered": True}),
        (lambda s: s.stop(), {"retry_after": None, "maybe_delivered": False}),
    ],
    ids=["429", "500", "timeout", "down"],
)
def test_webhook_mode_failures(slack: FakeSlack, fault: Any, expected: dict[str, Any]) -> None:
    notifier = webhook(slack, timeout_s=0.5)
    fault(slack)
    with pytest.raises(DeliveryError) as caught:
        notifier.send(make_notification(), parent=None)
    assert {"retry_after": caught.value.retry_after, "maybe_delivered": caught.value.maybe_delivered} == expected
    assert "webhook pager" in str(caught.value) and WEBHOOK_PATH not in str(caught.value)


def test_webhook_mode_unknown_hook_is_a_delivery_error(slack: FakeSlack) -> None:
    with pytest.raises(DeliveryError, match=r"HTTP 404 \(no_service\)") as caught:
        unknown = slack.webhook_url.replace("hook-secret", "other-secret")
        webhook(slack, url=unknown).send(make_notification(), parent=None)
    assert "other-secret" not in str(caught.value)


# generic JSON webhook


def json_hook(slack: FakeSlack, timeout_s: float = 5.0) -> WebhookNotifier:
    return WebhookNotifier("bridge", url=Secret(slack.json_webhook_url + "?key=s3cr3t"), timeout_s=timeout_s)


def test_json_webhook_gets_the_alertmanager_body_and_idempotency_key(slack: FakeSlack) -> None:
    other = make_alert("lang=en", status="resolved", summary="recovered")
    receipt = json_hook(slack).send(make_notification(42, make_alert(), other), parent=None)

    [request] = slack.json_posts()
    assert request.headers["idempotency-key"] == "specwatch-42"
    body = request.body
    assert body["version"] == "4" and body["status"] == "firing" and body["receiver"] == "oncall"
    assert body["groupKey"] == make_notification().group_key and body["externalURL"] == ""
    assert body["groupLabels"] == {"alertname": "SpecAlphaLow", "segment": "lang=zh"}
    assert body["commonLabels"] == {"alertname": "SpecAlphaLow", "severity": "critical"}
    assert body["commonAnnotations"]["runbook_url"] == "https://runbooks.example/alpha-low"
    assert "summary" not in body["commonAnnotations"]
    assert body["alerts"] == [make_alert().to_dict(), other.to_dict()]
    assert (body["notificationId"], body["kind"], body["incident"]) == (42, "firing", 3)
    assert receipt.detail == {"status": 200}


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (lambda s: s.rate_limit_next(retry_after=3, path="/hooks/json"), {"retry_after": 3.0, "maybe": False}),
        (lambda s: s.fail_next(503), {"retry_after": None, "maybe": False}),
        (lambda s: s.fail_next(400), {"retry_after": None, "maybe": False}),
        (lambda s: s.hang_next(1.5), {"retry_after": None, "maybe": True}),
        (lambda s: s.stop(), {"retry_after": None, "maybe": False}),
    ],
    ids=["429", "503", "400", "timeout", "down"],
)
def test_json_webhook_failures(slack: FakeSlack, fault: Any, expected: dict[str, Any]) -> None:
    notifier = json_hook(slack, timeout_s=0.5)
    fault(slack)
    with pytest.raises(DeliveryError) as caught:
        notifier.send(make_notification(), parent=None)
    assert {"retry_after": caught.value.retry_after, "maybe": caught.value.maybe_delivered} == expected
    assert str(caught.value).startswith("webhook bridge:") and "/hooks/json" not in str(caught.value)


# secrets, console, build_notifier, rendering


def test_secrets_never_appear_in_logs_or_errors(slack: FakeSlack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    errors: list[str] = []
    notifiers: list[Notifier] = [
        bot(slack, timeout_s=0.5),
        webhook(slack, timeout_s=0.5),
        json_hook(slack, timeout_s=0.5),
    ]
    for fault in (lambda: None, lambda: slack.fail_next(500), lambda: slack.hang_next(1.5)):
        for notifier in notifiers:
            fault()
            try:
                notifier.send(make_notification(), parent=None)
            except DeliveryError as error:
                errors.append(str(error))
    slack.stop()
    for notifier in notifiers:
        with pytest.raises(DeliveryError) as caught:
            notifier.send(make_notification(), parent=None)
        errors.append(str(caught.value))

    assert len(errors) == 9
    for secret in (TOKEN, WEBHOOK_PATH, "s3cr3t"):
        assert secret not in caplog.text and not any(secret in error for error in errors)
        assert all(secret not in repr(notifier.__dict__) for notifier in notifiers[1:])


def test_console_logs_one_line_per_alert(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="alerts.console")
    notification = make_notification(1, make_alert(), make_alert("lang=en", status="resolved", summary="ok\nagain"))

    receipt = ConsoleNotifier("console").send(notification, parent=None)

    records = [r for r in caplog.records if r.name == "alerts.console"]
    assert [r.levelno for r in records] == [logging.WARNING, logging.INFO]
    assert "SpecAlphaLow segment=lang=zh status=firing: alpha 0.412 below 0.60" in records[0].getMessage()
    assert records[1].getMessage().endswith("segment=lang=en status=resolved: ok again")
    assert "180" not in caplog.text  # evidence stays out of the log line
    assert receipt.channel is None
    assert ConsoleNotifier("console").find_delivered(notification, None, since()) is None


def receiver(**fields: Any) -> ReceiverConfig:
    return ReceiverConfig.model_validate(fields)


def test_build_notifier_picks_the_kind(monkeypatch: pytest.MonkeyPatch, slack: FakeSlack) -> None:
    monkeypatch.setenv("SW_TEST_TOKEN", TOKEN)
    monkeypatch.setenv("SW_TEST_URL", slack.webhook_url)
    token, url = {"env": "SW_TEST_TOKEN"}, {"env": "SW_TEST_URL"}

    assert isinstance(build_notifier("c", receiver(type="console")), ConsoleNotifier)
    assert isinstance(build_notifier("w", receiver(type="slack", url=url)), SlackWebhookNotifier)
    assert isinstance(build_notifier("j", receiver(type="webhook", url=url)), WebhookNotifier)
    slack_bot = build_notifier("s", receiver(type="slack", bot_token=token, channel="#a", slack_api_url=slack.api_url))
    assert isinstance(slack_bot, SlackNotifier) and slack_bot.name == "s"
    assert slack_bot.send(make_notification(), parent=None).channel == slack.channel_id("#a")


def test_build_notifier_errors_clearly_on_a_missing_secret(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SW_TEST_MISSING", raising=False)
    config = receiver(type="slack", bot_token={"env": "SW_TEST_MISSING"}, channel="#a")
    with pytest.raises(
        ValueError, match=r"receiver oncall: bot_token is not set.*environment variable SW_TEST_MISSING"
    ):
        build_notifier("oncall", config)

    with pytest.raises(ValueError, match=r"receiver pager: url: cannot read secret file .*nope"):
        build_notifier("pager", receiver(type="webhook", url={"file": str(tmp_path / "nope")}))


def test_build_notifier_refuses_a_non_http_url_without_showing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SW_TEST_URL", "file:///etc/s3cr3t")
    with pytest.raises(ValueError, match="webhook pager: the url must start with http") as caught:
        build_notifier("pager", receiver(type="webhook", url={"env": "SW_TEST_URL"}))
    assert "s3cr3t" not in str(caught.value)


def test_blocks_respect_slack_limits_and_summarise_many_alerts() -> None:
    long = "x" * 5000
    alerts = [make_alert(f"seg{n}", summary=long) for n in range(13)]
    notification = make_notification(1, *alerts)
    notification.group_labels["alertname"] = "A" * 300

    blocks = slack_blocks(notification)

    assert len(header_of(blocks)) <= HEADER_LIMIT
    sections = [b for b in blocks if b["type"] == "section"]
    assert len(sections) == 11 and sections[-1]["text"]["text"] == "…and 3 more alerts"
    assert all(len(s["text"]["text"]) <= SECTION_LIMIT for s in sections)
