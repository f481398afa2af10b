"""The alertmanager receiver against a real Alertmanager (Debian's prometheus-alertmanager 0.25) on
127.0.0.1, read back through its API: labels, annotations and times as posted, a silence made in
Alertmanager suppressing one alert, resolution, re-posting before endsAt lapses, basic auth, and
delivery retried across an Alertmanager restart. Alertmanager's own webhook notifications go to the
fake Slack's JSON hook, a second witness of what it made of the posts.

    python -m pytest tests/alerts/test_alertmanager.py -q
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from alerts.alertmanager import RESEND, label_name, postable_alert, queue_resends
from alerts.lifecycle import raise_findings
from alerts.model import Alert, DeliveryError, Notification
from alerts.notifiers import AlertmanagerNotifier, build_notifier
from alerts.outbox import dispatch, pending_count
from alerts.queries import add_silence
from monitor.base.config import AlertsConfig, ReceiverConfig, SecretSource
from monitor.base.db import OutboxMessage
from monitor.evaluation.finding import Finding
from tests.alerts.fake_slack import FakeSlack

BINARY = shutil.which("prometheus-alertmanager") or "/usr/bin/prometheus-alertmanager"
EVALUATED = {"threshold"}
REPORT_URL = "http://specwatch.test/report.html"
USER, PASSWORD = "specwatch", "specwatch-test-password"
PASSWORD_BCRYPT = "$2b$04$0jAQv.WAOchrfXpsmnpXNOxB1tqZiKSEsGDXBlgQdS3Ru/t5AeuQa"  # bcrypt(PASSWORD), cost 4
# the lifecycle and the outbox run on both backends in their own tests; here only the resend queries do
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
SAMPLE_TEXT = "please translate: the quick brown fox"  # what a sample said; must reach no annotation


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class AlertmanagerProcess:
    """The real binary on 127.0.0.1, clustering off, storage in `directory`; its route groups by every
    label and sends to `webhook_url` (or nowhere) one second after a change."""

    def __init__(self, directory: Path, webhook_url: str | None = None, basic_auth: bool = False) -> None:
        self.directory = directory
        self.port = free_port()
        self.basic_auth = basic_auth
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)
        receiver: dict[str, Any] = {"name": "sink"}
        if webhook_url:
            receiver["webhook_configs"] = [{"url": webhook_url, "send_resolved": True}]
        route = {"receiver": "sink", "group_by": ["..."], "group_wait": "0s", "group_interval": "1s"}
        config = {"route": route, "receivers": [receiver]}  # JSON is YAML
        (directory / "alertmanager.yml").write_text(json.dumps(config))
        (directory / "web.yml").write_text(json.dumps({"basic_auth_users": {USER: PASSWORD_BCRYPT}}))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> AlertmanagerProcess:
        args = [
            BINARY,
            f"--config.file={self.directory / 'alertmanager.yml'}",
            f"--storage.path={self.directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--cluster.listen-address=",
        ]
        if self.basic_auth:
            args.append(f"--web.config.file={self.directory / 'web.yml'}")
        log = (self.directory / "alertmanager.log").open("ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self._wait_ready()
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, self._log_tail()
            try:
                self.request("GET", "/-/ready")
                return
            except (OSError, urllib.error.URLError):
                time.sleep(0.05)
        raise AssertionError(f"alertmanager not ready after 10 s: {self._log_tail()}")

    def _log_tail(self) -> str:
        return (self.directory / "alertmanager.log").read_text(errors="replace")[-2000:]

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if self.basic_auth:
            request.add_unredirected_header("Authorization", basic_auth_header(USER, PASSWORD))
        with urllib.request.urlopen(request, timeout=5) as response:
            text = response.read()
        return json.loads(text) if text.strip().startswith((b"{", b"[")) else text

    def alerts(self, run: str, **filters: str) -> dict[str, dict[str, Any]]:
        """This run's alerts Alertmanager lists (resolved ones it never lists), by segment."""
        query = urllib.parse.urlencode({"filter": f'test_run="{run}"', **filters})
        return {alert["labels"]["segment"]: alert for alert in self.request("GET", f"/api/v2/alerts?{query}")}

    def silence(self, labels: dict[str, str]) -> str:
        now = datetime.now(UTC)
        body = {
            "matchers": [{"name": n, "value": v, "isRegex": False, "isEqual": True} for n, v in labels.items()],
            "startsAt": now.isoformat(),
            "endsAt": (now + timedelta(hours=1)).isoformat(),
            "createdBy": "test",
            "comment": "silenced in Alertmanager",
        }
        return str(self.request("POST", "/api/v2/silences", body)["silenceID"])


def basic_auth_header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture(scope="module")
def sink() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        yield fake


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory: pytest.TempPathFactory, sink: FakeSlack) -> Iterator[AlertmanagerProcess]:
    if not Path(BINARY).exists():
        pytest.skip(f"no Alertmanager binary at {BINARY} (apt-get install prometheus-alertmanager)")
    process = AlertmanagerProcess(tmp_path_factory.mktemp("alertmanager"), webhook_url=sink.json_webhook_url)
    yield process.start()
    process.stop()


@pytest.fixture
def own_alertmanager(tmp_path: Path) -> Iterator[AlertmanagerProcess]:
    """One for a test that stops it or guards it with basic auth."""
    if not Path(BINARY).exists():
        pytest.skip(f"no Alertmanager binary at {BINARY} (apt-get install prometheus-alertmanager)")
    process = AlertmanagerProcess(tmp_path / "alertmanager", basic_auth=True)
    yield process
    process.stop()


def am_config(url: str, run: str, **receiver: Any) -> AlertsConfig:
    """Alerts go to Alertmanager at once (no group_wait), resolve as soon as a detector run misses them."""
    settings = {"type": "alertmanager", "alertmanager_url": url, "static_labels": {"test_run": run}} | receiver
    return AlertsConfig.model_validate(
        {
            "receivers": {"am": settings},
            "default_receiver": "am",
            "group_wait": "0s",
            "group_interval": "0s",
            "resolve_after": "0s",
            "report_url": REPORT_URL,
            "dispatch_interval_s": 0.5,
        }
    )


def breach(segment: str, alpha: float = 0.41) -> Finding:
    evidence = {"alpha": alpha, "interval": [0.36, 0.47], "confidence": 0.95, "samples": 120, "threshold": 0.65}
    evidence["text"] = SAMPLE_TEXT
    return Finding("threshold", segment, "1h", "critical", f"alpha {alpha} below 0.65 for {segment}", evidence)


class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def outbox(engine: Engine) -> list[OutboxMessage]:
    with Session(engine) as session:
        return list(session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))


# ---- against the real Alertmanager


@SQLITE_ONLY
def test_alerts_posted_silenced_in_alertmanager_and_resolved(
    engine: Engine, alertmanager: AlertmanagerProcess, sink: FakeSlack
) -> None:
    run = uuid.uuid4().hex
    config = am_config(alertmanager.url, run)
    clock = Clock(datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10))
    fired_at = clock()
    raise_findings(config, engine, [breach("lang=zh"), breach("lang=en", 0.5)], EVALUATED, now=fired_at)
    posted_at = datetime.now(UTC)
    clock.advance(seconds=1)
    report = dispatch(config, engine, clock=clock)
    assert report.failed == 0 and pending_count(engine) == 0

    alerts = alertmanager.alerts(run)
    assert set(alerts) == {"lang=zh", "lang=en"}
    zh = alerts["lang=zh"]
    assert zh["labels"] == {
        "alertname": "AcceptanceBelowThreshold",
        "severity": "critical",
        "segment": "lang=zh",
        "detector": "threshold",
        "test_run": run,
    }
    annotations = zh["annotations"]
    assert annotations["summary"] == "alpha 0.41 below 0.65 for lang=zh"
    assert annotations["alpha"] == "0.410" and annotations["threshold"] == "0.65" and annotations["window"] == "1h"
    assert annotations["interval"] == "0.360–0.470 (95%)"
    for number in ("alpha 0.410", "interval 0.360–0.470 (95%)", "threshold 0.65", "samples 120"):
        assert number in annotations["description"]
    assert annotations["description"].startswith("a segment's alpha is confidently below its threshold")
    assert annotations["report_url"] == REPORT_URL
    assert not any(SAMPLE_TEXT in value for value in annotations.values())
    assert zh["generatorURL"] == REPORT_URL
    assert parse_time(zh["startsAt"]) == fired_at
    lease, millisecond = timedelta(minutes=4), timedelta(milliseconds=1)
    assert posted_at + lease - millisecond <= parse_time(zh["endsAt"]) <= datetime.now(UTC) + lease
    assert {alert["status"]["state"] for alert in alerts.values()} == {"active"}

    alertmanager.silence(zh["labels"])
    states = {segment: alert["status"]["state"] for segment, alert in alertmanager.alerts(run).items()}
    assert states == {"lang=zh": "suppressed", "lang=en": "active"}

    resolved_at = clock.advance(minutes=1)
    raise_findings(config, engine, [breach("lang=zh")], EVALUATED, now=resolved_at)
    assert dispatch(config, engine, clock=clock).failed == 0
    assert set(alertmanager.alerts(run, active="true")) == set(alertmanager.alerts(run)) == {"lang=zh"}
    resolution = wait_for_webhook(sink, run, "lang=en", "resolved")
    assert parse_time(resolution["endsAt"]) == resolved_at  # Alertmanager's own notification says when it ended


def wait_for_webhook(sink: FakeSlack, run: str, segment: str, status: str) -> dict[str, Any]:
    """The alert in the first notification Alertmanager sent the webhook with that segment and status."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for request in sink.json_posts():
            for alert in request.body.get("alerts", []):
                labels = alert["labels"]
                if labels.get("test_run") == run and labels["segment"] == segment and alert["status"] == status:
                    return dict(alert)
        time.sleep(0.1)
    raise AssertionError(f"Alertmanager sent no {status} notification for {segment} within 10 s")


@SQLITE_ONLY
def test_reposting_keeps_a_firing_alert_alive_past_its_first_ends_at(
    engine: Engine, alertmanager: AlertmanagerProcess
) -> None:
    run = uuid.uuid4().hex
    config = am_config(alertmanager.url, run, resend_interval="1s", lease="2s")
    raise_findings(config, engine, [breach("lang=zh")], EVALUATED, now=datetime.now(UTC))
    dispatch(config, engine)
    first_ends_at = parse_time(alertmanager.alerts(run)["lang=zh"]["endsAt"])

    time.sleep(1.1)
    dispatch(config, engine)  # the daemon's dispatch job: the resend is due
    renewed = parse_time(alertmanager.alerts(run)["lang=zh"]["endsAt"])
    assert renewed - first_ends_at >= timedelta(seconds=1)

    sleep_until(first_ends_at + timedelta(seconds=0.3))
    assert "lang=zh" in alertmanager.alerts(run, active="true")  # still firing thanks to the resend
    sleep_until(renewed + timedelta(seconds=0.3))
    assert alertmanager.alerts(run) == {}  # no resend came: Alertmanager resolved it by itself


def sleep_until(moment: datetime) -> None:
    time.sleep(max(0.0, (moment - datetime.now(UTC)).total_seconds()))


@SQLITE_ONLY
def test_delivery_retried_until_alertmanager_is_back(engine: Engine, own_alertmanager: AlertmanagerProcess) -> None:
    run = uuid.uuid4().hex
    credentials = {"basic_auth_user": USER, "basic_auth_password": {"env": "SW_TEST_AM_PASSWORD"}}
    config = am_config(own_alertmanager.url, run, **credentials)
    clock = Clock(datetime.now(UTC) - timedelta(minutes=5))
    raise_findings(config, engine, [breach("lang=zh")], EVALUATED, now=clock())

    with pytest.MonkeyPatch.context() as env:
        env.setenv("SW_TEST_AM_PASSWORD", PASSWORD)
        down = dispatch(config, engine, clock=clock)
        assert down.failed == 1 and pending_count(engine) == 2  # the firing notification and the resend
        assert "alertmanager am: cannot connect" in down.errors[0]

        own_alertmanager.start()
        clock.advance(seconds=2)
        assert dispatch(config, engine, clock=clock).sent == 0  # backing off: 5 s
        env.setenv("SW_TEST_AM_PASSWORD", "wrong-password")
        clock.advance(seconds=4)
        refused = dispatch(config, engine, clock=clock)
        assert refused.failed == 1 and "HTTP 401" in refused.errors[0]
        assert not any("wrong-password" in error for error in refused.errors)

        env.setenv("SW_TEST_AM_PASSWORD", PASSWORD)
        clock.advance(seconds=30)
        back = dispatch(config, engine, clock=clock)
    assert back.sent == 2 and pending_count(engine) == 0
    assert set(own_alertmanager.alerts(run, active="true")) == {"lang=zh"}
    [firing, resend] = outbox(engine)
    assert (firing.kind, firing.attempts, resend.kind) == ("firing", 2, RESEND)


# ---- re-posting, with the outbox and specwatch's own silences


def test_resends_are_queued_once_per_interval_without_muted_alerts(
    engine: Engine, alertmanager: AlertmanagerProcess
) -> None:
    run = uuid.uuid4().hex
    config = am_config(alertmanager.url, run)
    clock = Clock(datetime.now(UTC))
    raise_findings(config, engine, [breach("lang=zh"), breach("lang=en")], EVALUATED, now=clock())
    assert dispatch(config, engine, clock=clock).sent == 3  # a firing notification per segment, the first resend

    add_silence(engine, ["segment=lang=en"], datetime.now(UTC) + timedelta(hours=1), "known", "test")
    assert queue_resends(config, engine, clock.advance(seconds=59)) == []  # not due yet
    [queued] = queue_resends(config, engine, clock.advance(seconds=1))
    assert queue_resends(config, engine, clock.advance(minutes=5)) == []  # one waits already
    rows = [row for row in outbox(engine) if row.kind == RESEND]
    assert [row.id for row in rows] == [queued]  # the sent one made way
    assert [alert["labels"]["segment"] for alert in rows[0].payload["alerts"]] == ["lang=zh"]

    assert dispatch(config, engine, clock=clock).sent == 1
    # both resolve, on the wall clock (Alertmanager judges endsAt by its own), minutes before the last resend
    raise_findings(config, engine, [], EVALUATED, now=datetime.now(UTC))
    assert dispatch(config, engine).sent == 1  # zh's resolution; the incidents are closed, so no resend
    assert set(alertmanager.alerts(run)) == {"lang=en"}  # muted in specwatch, never resolved: it lapses at endsAt


# ---- the request itself


class RecordingServer(ThreadingHTTPServer):
    """Answers every POST with 200 and keeps its headers."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Recorder)
        self.headers: list[dict[str, str]] = []


class _Recorder(BaseHTTPRequestHandler):
    server: RecordingServer

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.headers.append(dict(self.headers))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_bearer_token_goes_in_the_authorization_header(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SW_TEST_AM_TOKEN", "bearer-s3cret")
    server = RecordingServer()
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/prefix/"
        receiver = ReceiverConfig(
            type="alertmanager", alertmanager_url=url, bearer_token=SecretSource(env="SW_TEST_AM_TOKEN")
        )
        alert = Alert({"alertname": "A", "segment": "*"}, {"summary": "s"}, "firing", datetime.now(UTC))
        receipt = build_notifier("am", receiver).send(notification(alert), None)
    finally:
        server.shutdown()
        server.server_close()
    assert receipt.detail == {"status": 200, "alerts": 1}
    assert [headers["Authorization"] for headers in server.headers] == ["Bearer bearer-s3cret"]


def test_refused_post_names_alertmanagers_reason(alertmanager: AlertmanagerProcess) -> None:
    now = datetime.now(UTC)
    notifier = AlertmanagerNotifier("am", url=alertmanager.url, lease=timedelta(minutes=4))
    ends_early = Alert({"alertname": "A", "segment": "*"}, {}, "resolved", now, now - timedelta(minutes=1))
    assert notifier.send(notification(ends_early), None).detail == {"status": 200, "alerts": 1}  # endsAt = startsAt
    unlabelled = Alert({}, {"summary": "s"}, "firing", now)
    with pytest.raises(DeliveryError, match=r"alertmanager am: HTTP 400 \(.*at least one label pair required"):
        notifier.send(notification(unlabelled), None)


def notification(*alerts: Alert) -> Notification:
    return Notification(1, "am", "k", {}, "firing", list(alerts), datetime.now(UTC))


# ---- labels and config


@pytest.mark.parametrize(
    ("name", "valid"),
    [("alertname", "alertname"), ("recent mean", "recent_mean"), ("tenant-id", "tenant_id"), ("9x", "_9x"), ("", "_")],
)
def test_label_names_are_made_valid(name: str, valid: str) -> None:
    assert label_name(name) == valid


def test_labels_skip_empty_values_and_keep_the_alerts_own() -> None:
    alert = Alert(
        {"alertname": "A", "segment": "", "severity": "info"}, {"detector": "threshold"}, "firing", datetime.now(UTC)
    )
    body = postable_alert(alert, datetime.now(UTC), timedelta(minutes=4), {"severity": "x", "team": "infra"}, "")
    assert body["labels"] == {"alertname": "A", "severity": "info", "detector": "threshold", "team": "infra"}
    assert "generatorURL" not in body


def test_config_defaults() -> None:
    receiver = ReceiverConfig(type="alertmanager", alertmanager_url="http://127.0.0.1:9093")
    assert (receiver.resend_interval, receiver.lease) == ("1m", "4m")


@pytest.mark.parametrize(
    ("receiver", "problem"),
    [
        ({"alertmanager_url": ""}, "needs alertmanager_url"),
        ({"alertmanager_url": "127.0.0.1:9093"}, "needs alertmanager_url"),
        ({"lease": "90s"}, "at least 2 x resend_interval"),
        ({"resend_interval": "0s"}, "longer than 0s"),
        ({"basic_auth_user": "u"}, "needs both"),
        ({"basic_auth_password": {"env": "P"}}, "needs both"),
        ({"basic_auth_user": "u", "basic_auth_password": {"env": "P"}, "bearer_token": {"env": "T"}}, "not both"),
        ({"static_labels": {"team-name": "x"}}, "team-name not a label name"),
        ({"generator_url": "specwatch.local"}, "generator_url must start"),
        ({"lease": "10s", "resend_interval": "5s"}, "must exceed resend_interval 5s \\+ dispatch_interval_s 10"),
    ],
)
def test_config_refuses(receiver: dict[str, Any], problem: str) -> None:
    settings = {"type": "alertmanager", "alertmanager_url": "http://127.0.0.1:9093"} | receiver
    with pytest.raises(ValueError, match=problem):
        AlertsConfig.model_validate({"receivers": {"am": settings}, "default_receiver": "am"})
