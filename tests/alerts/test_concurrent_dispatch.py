"""Several dispatcher processes at once (the daemon, manual `specwatch alerts dispatch`, a second
daemon during a head swap) against one outbox and a fake Slack: every notification arrives exactly
once, each receiver's in outbox order, follow-ups in their incident's thread. And the receiver lease
on its own: held, renewed, expired, and freed when its owner process is gone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from alerts.lease import ReceiverLease
from alerts.lifecycle import raise_findings
from monitor.base.config import load_config
from monitor.base.db import OutboxMessage
from monitor.evaluation.finding import Finding
from tests.alerts.fake_slack import FakeSlack

TOKEN = "xoxb-concurrent-test-token"
DISPATCHERS = 4
SEGMENTS = [f"lang=l{index:02d}" for index in range(8)]

DISPATCH = """
import json, logging, sys, time
from pathlib import Path
from alerts.outbox import dispatch
from monitor.base.config import load_config
from monitor.base.db import open_database

logging.basicConfig(level=logging.WARNING)
config = load_config(Path(sys.argv[1]))
engine = open_database(config, migrate=False)
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.005)
report = dispatch(config.alerts, engine)
print(json.dumps({"sent": report.sent, "failed": report.failed, "busy": report.busy, "errors": report.errors}))
"""


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack(token=TOKEN) as fake:
        yield fake


def write_config(tmp_path: Path, database_url: str, slack: FakeSlack) -> Path:
    token = '{ env = "SW_CONCURRENT_SLACK_TOKEN" }'
    receiver = f'type = "slack"\nbot_token = {token}\nslack_api_url = "{slack.api_url}"\n'
    path = tmp_path / "config.toml"
    path.write_text(
        f'[storage]\ndata_dir = "{tmp_path / "data"}"\ndatabase_url = "{database_url}"\n'
        '[alerts]\ndefault_receiver = "oncall"\n'
        f'[alerts.receivers.oncall]\nchannel = "#oncall"\n{receiver}'
        f'[alerts.receivers.ml]\nchannel = "#ml-alerts"\n{receiver}'
        '[[alerts.routes]]\nmatchers = ["severity=warning"]\nreceiver = "ml"\n'
    )
    return path


def queue_incidents(config_path: Path, engine: Engine) -> None:
    """Per segment: a critical breach (to oncall) and a warning drop (to ml), each first notified,
    repeated after repeat_interval and resolved: three messages per incident, two of them in its thread."""
    config = load_config(config_path).alerts
    findings = [breach(segment) for segment in SEGMENTS[:4]] + [drop(segment) for segment in SEGMENTS[4:]]
    evaluated = {"threshold", "change"}
    start = datetime.now(UTC) - timedelta(hours=6)
    for offset in (timedelta(0), timedelta(seconds=31), timedelta(hours=4, minutes=1)):
        raise_findings(config, engine, findings, evaluated, now=start + offset)
    for offset in (timedelta(hours=4, minutes=2), timedelta(hours=4, minutes=20)):
        raise_findings(config, engine, [], evaluated, now=start + offset)


def breach(segment: str) -> Finding:
    return Finding("threshold", segment, "1h", "critical", f"alpha 0.41 below 0.65 for {segment}", {"alpha": 0.41})


def drop(segment: str) -> Finding:
    return Finding("change", segment, "7d", "warning", f"alpha dropped for {segment}", {"baseline": 0.8})


def outbox(engine: Engine) -> list[OutboxMessage]:
    with Session(engine) as session:
        return list(session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))


def run_dispatchers(config_path: Path, tmp_path: Path) -> list[dict[str, Any]]:
    """DISPATCHERS processes, released at the same moment once all have started; their reports."""
    go = tmp_path / "go"
    environment = {**os.environ, "SW_CONCURRENT_SLACK_TOKEN": TOKEN}
    command = [sys.executable, "-c", DISPATCH, str(config_path), str(go)]
    processes = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
        for _ in range(DISPATCHERS)
    ]
    time.sleep(2.0)  # imports done, all waiting for the go file
    go.touch()
    reports = []
    for process in processes:
        out, err = process.communicate(timeout=240)
        assert process.returncode == 0, err
        reports.append(json.loads(out))
    return reports


def metadata_of(message: dict[str, Any]) -> dict[str, Any]:
    return dict(message["metadata"]["event_payload"])


def test_concurrent_dispatcher_processes_deliver_each_notification_once_in_order(
    tmp_path: Path, engine: Engine, database_url: str, slack: FakeSlack
) -> None:
    config_path = write_config(tmp_path, database_url, slack)
    queue_incidents(config_path, engine)
    queued = outbox(engine)
    assert len(queued) == 3 * len(SEGMENTS) and {row.receiver for row in queued} == {"oncall", "ml"}
    slack.hang_next(0.05, times=10_000, path="chat.postMessage")  # every send takes a while: dispatchers overlap

    reports = run_dispatchers(config_path, tmp_path)

    posts = slack.posts()
    received = Counter(metadata_of(post)["notification_id"] for post in posts)
    assert {nid: n for nid, n in received.items() if n > 1} == {}, "no notification is received twice"
    assert sorted(received) == [row.id for row in queued], "every notification is received"
    assert sum(report["sent"] for report in reports) == len(queued)
    assert all(row.sent_at is not None for row in outbox(engine))
    for channel in ("#oncall", "#ml-alerts"):
        ids = [metadata_of(post)["notification_id"] for post in posts if post["channel"] == slack.channel_id(channel)]
        assert ids == sorted(ids), f"{channel}: in outbox order"
    assert_threads(posts)


def assert_threads(posts: list[dict[str, Any]]) -> None:
    """Each incident: one channel message, then its follow-ups as replies in its thread, in order."""
    firsts = {post["ts"]: post for post in posts if "thread_ts" not in post}
    incidents = {(metadata_of(post)["group_key"], metadata_of(post)["incident"]) for post in firsts.values()}
    assert len(incidents) == len(firsts) == len(SEGMENTS)
    for ts, first in firsts.items():
        replies = [post for post in posts if post.get("thread_ts") == ts]
        assert len(replies) == 2, "the repeat and the resolved notification"
        ids = [metadata_of(post)["notification_id"] for post in [first, *replies]]
        assert ids == sorted(ids), "a thread in notification order"
        assert {metadata_of(post)["group_key"] for post in replies} == {metadata_of(first)["group_key"]}


def test_a_held_lease_excludes_others_until_released(engine: Engine) -> None:
    with ReceiverLease(engine, "oncall") as first:
        with ReceiverLease(engine, "oncall") as second:
            assert first.held and not second.held
        with ReceiverLease(engine, "pager") as other:
            assert other.held, "leases are per receiver"
    with ReceiverLease(engine, "oncall") as third:
        assert third.held


def test_an_expired_lease_is_taken_over_and_the_old_owner_cannot_renew(engine: Engine) -> None:
    stale = ReceiverLease(engine, "oncall", ttl=timedelta(seconds=-1))
    assert stale.acquire()
    fresh = ReceiverLease(engine, "oncall")
    assert fresh.acquire(), "expired: taken over"
    with Session(engine) as session, session.begin():
        assert not stale.renew(session), "the old owner lost it"
    with Session(engine) as session, session.begin():
        assert fresh.renew(session)


def test_the_heartbeat_keeps_a_lease_past_its_ttl(engine: Engine) -> None:
    with ReceiverLease(engine, "oncall", ttl=timedelta(seconds=1.2)) as holder:
        time.sleep(2.5)
        assert holder.held
        assert not ReceiverLease(engine, "oncall").acquire()


HOLD = """
import os, sys
from alerts.lease import ReceiverLease
from monitor.base.db import create_db_engine
lease = ReceiverLease(create_db_engine(sys.argv[1]), "oncall")
assert lease.acquire()
print("held", flush=True)
if sys.argv[2] == "die":
    os._exit(0)
sys.stdin.read()
"""


def test_a_lease_left_by_a_dead_process_of_this_machine_is_free_at_once(engine: Engine, database_url: str) -> None:
    def holder(mode: str) -> subprocess.Popen[str]:
        command = [sys.executable, "-c", HOLD, database_url, mode]
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert process.stdout is not None and process.stdout.readline().strip() == "held"
        return process

    alive = holder("wait")
    assert not ReceiverLease(engine, "oncall").acquire(), "its owner still runs"
    alive.communicate("", timeout=60)
    dead = holder("die")
    dead.wait(timeout=60)
    assert ReceiverLease(engine, "oncall").acquire(), "its owner is gone: no need to wait for the expiry"
