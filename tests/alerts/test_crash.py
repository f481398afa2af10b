"""A dispatcher SIGKILLed after Slack accepted a message but before the outbox marked it sent:
the restarted dispatcher finds the message in Slack and does not post it again. A generic
webhook cannot be asked, so it gets the notification twice, with the same Idempotency-Key."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from alerts.lifecycle import raise_findings
from monitor.base.config import AlertsConfig
from monitor.base.db import OutboxMessage
from monitor.evaluation.finding import Finding
from tests.alerts.fake_slack import FakeSlack

TOKEN = "xoxb-crash-test-token"


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack(token=TOKEN) as fake:
        yield fake


def write_config(tmp_path: Path, database_url: str, receiver: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[storage]\ndata_dir = "{tmp_path / "data"}"\ndatabase_url = "{database_url}"\n'
        f'[alerts]\ndefault_receiver = "oncall"\n[alerts.receivers.oncall]\n{receiver}'
    )
    return path


def alerts_config(path: Path) -> AlertsConfig:
    from monitor.base.config import load_config

    return load_config(path).alerts


def queue_breach(config: AlertsConfig, engine: Engine) -> None:
    finding = Finding("threshold", "lang=zh", "1h", "critical", "alpha 0.41 below 0.65 for lang=zh", {"alpha": 0.41})
    start = datetime.now(UTC) - timedelta(minutes=5)
    raise_findings(config, engine, [finding], {"threshold"}, now=start)
    raise_findings(config, engine, [finding], {"threshold"}, now=start + timedelta(minutes=1))


def dispatcher(config: Path) -> subprocess.Popen[str]:
    environment = {**os.environ, "SW_CRASH_SLACK_TOKEN": TOKEN}
    command = [sys.executable, "-m", "monitor", "alerts", "dispatch", "--json", "--config", str(config)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)


def kill_while_held(slack: FakeSlack, config: Path, path: str) -> None:
    slack.hold_next(path)
    process = dispatcher(config)
    held = slack.wait_until_held(timeout=120)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    slack.release_all()
    assert held, process.stderr.read() if process.stderr else ""


def only_row(engine: Engine) -> OutboxMessage:
    with Session(engine) as session:
        [row] = session.scalars(select(OutboxMessage))
        return row


def test_sigkill_between_slack_accepting_and_marking_sent_posts_once(
    tmp_path: Path, engine: Engine, database_url: str, slack: FakeSlack
) -> None:
    receiver = (
        f'type = "slack"\nchannel = "#inference-oncall"\nbot_token = {{ env = "SW_CRASH_SLACK_TOKEN" }}\n'
        f'slack_api_url = "{slack.api_url}"\n'
    )
    config = write_config(tmp_path, database_url, receiver)
    queue_breach(alerts_config(config), engine)
    kill_while_held(slack, config, "chat.postMessage")
    assert len(slack.posts()) == 1
    interrupted = only_row(engine)
    assert interrupted.sent_at is None and interrupted.attempted_at is not None

    restarted = dispatcher(config)
    out, err = restarted.communicate(timeout=120)
    assert restarted.returncode == 0, err
    assert json.loads(out)["recovered"] == 1
    assert len(slack.posts()) == 1, "found in Slack by its metadata, not posted again"
    row = only_row(engine)
    assert row.sent_at is not None and row.receipt and row.receipt["ts"] == slack.posts()[0]["ts"]
    assert TOKEN not in out + err


def test_generic_webhook_after_sigkill_is_at_least_once_with_one_idempotency_key(
    tmp_path: Path, engine: Engine, database_url: str, slack: FakeSlack, monkeypatch: pytest.MonkeyPatch
) -> None:
    url_file = tmp_path / "webhook-url"
    url_file.write_text(slack.json_webhook_url)
    config = write_config(tmp_path, database_url, f'type = "webhook"\nurl = {{ file = "{url_file}" }}\n')
    queue_breach(alerts_config(config), engine)
    kill_while_held(slack, config, "/hooks/json")
    restarted = dispatcher(config)
    _, err = restarted.communicate(timeout=120)
    assert restarted.returncode == 0, err
    posts = slack.json_posts()
    assert len(posts) == 2, "the receiver cannot be asked: delivered again"
    keys = {post.headers.get("idempotency-key") for post in posts}
    assert keys == {f"specwatch-{only_row(engine).id}"}, "the same key lets the receiver drop the repeat"
