"""`specwatch run` as a real subprocess on the tiny reference models: sd_notify on a real datagram socket
(READY, WATCHDOG, STOPPING), /healthz and /readyz, SIGKILL and restart without lost or doubled work,
refusal without models, an unreachable database; the systemd unit through systemd-analyze; and the
daemon's small parts (failure classes, intake pause on a full disk, health, systemd environment) in-process.

    SPECWATCH_TEST_REFERENCE_DIR=/tmp/tiny-ref .venv/bin/pytest tests/monitor/service/test_daemon.py
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from monitor.base.config import Config
from monitor.base.db import AlertRecord, IntakeCounter, ReplayResult, Sample
from monitor.base.results import SCORED
from monitor.service.daemon.health import Backoff, Health
from monitor.service.daemon.intake import FollowJob
from monitor.service.daemon.logs import JsonFormatter
from monitor.service.daemon.systemd import Systemd
from monitor.service.demo_traffic import traffic, write_jsonl
from tests.monitor.service.daemon_process import (
    ROOT,
    STARTUP_S,
    NotifyListener,
    config_value,
    count,
    free_port,
    http_get,
    scored_results,
    start_daemon,
    wait_until,
    write_config,
)

UNIT = ROOT / "monitor" / "service" / "systemd" / "specwatch.service"
MIX = {"en": 0.4, "zh": 0.3, "code": 0.3}


def deploy(heads: Path, draft: Path) -> str:
    """What a retrain's deploy (or a rollback) does to the live head: the registry's pointer moves."""
    from retrain.registry import HeadRegistry

    registry = HeadRegistry(heads)
    version = registry.register(draft, parent=None, source="test deploy").version
    registry.switch(version, reason="test deploy")
    return version


def replayed_by(engine: Engine, draft_version: str) -> int:
    query = select(func.count()).where(ReplayResult.mode == SCORED, ReplayResult.draft_version == draft_version)
    return count(engine, query)


def post_sample(url: str, record: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(record).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        return dict(json.loads(reply.read()))


@pytest.mark.slow
def test_notify_watchdog_health_deploy_and_clean_stop(
    tmp_path: Path, engine: Engine, database_url: str, reference_models: Path, daemons: list[Any]
) -> None:
    config = write_config(
        tmp_path, database_url, reference_models, daemon='log_format = "json"\nmax_replay_lag_s = 0.001'
    )
    write_jsonl(tmp_path / "logs" / "traffic.jsonl", traffic(6, MIX, seed=3))
    health = f"http://127.0.0.1:{config_value(config, 'metrics', 'port')}"
    out = tmp_path / "daemon.log"
    notify = NotifyListener()
    try:
        process = start_daemon(config, out, NOTIFY_SOCKET=notify.address, WATCHDOG_USEC="2000000")
        daemons.append(process)
        wait_until("READY=1", lambda: "READY=1" in notify.messages, process, out, STARTUP_S)
        assert http_get(f"{health}/healthz") == (200, {"alive": True, "problem": None})
        wait_until("the log replayed", lambda: scored_results(engine) == 6, process, out, 60)
        wait_until("/readyz 200", lambda: http_get(f"{health}/readyz")[0] == 200, process, out, 60)
        ready = http_get(f"{health}/readyz")[1]
        assert ready["ready"] and ready["problems"] == [] and ready["pending"] == 0
        intake = f"http://127.0.0.1:{config_value(config, 'intake.http', 'port')}/v1/samples"
        assert post_sample(intake, next(traffic(1, MIX, seed=4, first_index=100)))["stored"] == 1
        deployed = deploy(tmp_path / "data" / "heads", reference_models / "drafts" / "medusa")
        wait_until("the deployed head replayed", lambda: replayed_by(engine, deployed) == 7, process, out, 60)
        assert http_get(f"{health}/readyz")[1]["draft_version"] == deployed
        wait_until("2 watchdog pings", lambda: notify.after("READY=1").count("WATCHDOG=1") >= 2, process, out, 10)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0, out.read_text()[-4000:]
        assert "STOPPING=1" in notify.after("READY=1")
    finally:
        notify.close()
    logged = [json.loads(line) for line in out.read_text().splitlines() if line.startswith("{")]
    assert any(entry["message"].startswith("specwatch daemon ready") for entry in logged)


@pytest.mark.slow
def test_sigkill_and_restart_score_every_sample_once(
    tmp_path: Path, engine: Engine, database_url: str, reference_models: Path, daemons: list[Any]
) -> None:
    config = write_config(tmp_path, database_url, reference_models)
    lines = write_jsonl(tmp_path / "logs" / "traffic.jsonl", traffic(30, MIX, seed=7))
    out = tmp_path / "daemon.log"
    first = start_daemon(config, out)
    daemons.append(first)
    wait_until("the first results", lambda: scored_results(engine) >= 2, first, out, STARTUP_S)
    first.send_signal(signal.SIGKILL)
    first.wait()
    at_kill = scored_results(engine)
    assert at_kill < lines, "killed after the whole log was replayed: nothing was interrupted"
    second = start_daemon(config, out)
    daemons.append(second)
    wait_until("every sample scored", lambda: scored_results(engine) >= lines, second, out, STARTUP_S)
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=20) == 0
    distinct = select(func.count(func.distinct(ReplayResult.sample_id))).where(ReplayResult.mode == SCORED)
    assert scored_results(engine) == count(engine, distinct) == lines
    assert count(engine, select(func.count()).select_from(Sample)) == lines
    with Session(engine) as session:
        counter = session.scalars(select(IntakeCounter)).one()
    assert (counter.records, counter.stored, counter.duplicates) == (lines, lines, 0), "lines read twice"


@pytest.mark.slow
def test_missing_model_directory_refuses_to_start(tmp_path: Path, reference_models: Path) -> None:
    missing = tmp_path / "no-such-target"
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", reference_models, target=missing)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "monitor", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=STARTUP_S,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"models.target = {missing}: no such directory" in result.stderr
    assert time.monotonic() - started < 60


@pytest.mark.slow
def test_unreachable_database_waits_not_ready_and_stops_cleanly(
    tmp_path: Path, reference_models: Path, daemons: list[Any]
) -> None:
    nobody = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/specwatch"
    config = write_config(tmp_path, nobody, reference_models)
    health = f"http://127.0.0.1:{config_value(config, 'metrics', 'port')}"
    out = tmp_path / "daemon.log"
    process = start_daemon(config, out)
    daemons.append(process)
    wait_until("a retry", lambda: "database unreachable" in out.read_text(), process, out, STARTUP_S)
    assert http_get(f"{health}/healthz")[0] == 200
    status, body = http_get(f"{health}/readyz")
    assert status == 503 and any(problem.startswith("database unreachable") for problem in body["problems"])
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 0


def firing_alerts(engine: Engine) -> set[str]:
    with Session(engine) as session:
        return {a.alertname for a in session.scalars(select(AlertRecord).where(AlertRecord.status == "firing"))}


NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a usable GPU")


@NO_GPU
@pytest.mark.slow
def test_gpu_gone_falls_back_to_the_cpu_with_an_alert(
    tmp_path: Path, engine: Engine, database_url: str, reference_models: Path, daemons: list[Any]
) -> None:
    config = write_config(
        tmp_path,
        database_url,
        reference_models,
        device="cuda",
        models='on_device_lost = "cpu"',
        alerts='group_wait = "0s"',
    )
    lines = write_jsonl(tmp_path / "logs" / "traffic.jsonl", traffic(8, MIX, seed=5))
    out = tmp_path / "daemon.log"
    process = start_daemon(config, out)
    daemons.append(process)
    wait_until("every sample scored on the CPU", lambda: scored_results(engine) == lines, process, out, STARTUP_S)
    wait_until("ReplayDeviceLost", lambda: "ReplayDeviceLost" in firing_alerts(engine), process, out, 60)
    wait_until("the notification", lambda: "[firing] ReplayDeviceLost" in out.read_text(), process, out, 60)
    health = f"http://127.0.0.1:{config_value(config, 'metrics', 'port')}"
    wait_until("/readyz 200", lambda: http_get(f"{health}/readyz")[0] == 200, process, out, 60)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    assert "replaying on the CPU" in out.read_text()


@NO_GPU
@pytest.mark.slow
def test_gpu_gone_pauses_replay_with_an_alert_when_so_configured(
    tmp_path: Path, engine: Engine, database_url: str, reference_models: Path, daemons: list[Any]
) -> None:
    config = write_config(tmp_path, database_url, reference_models, device="cuda", models='on_device_lost = "pause"')
    lines = write_jsonl(tmp_path / "logs" / "traffic.jsonl", traffic(5, MIX, seed=6))
    out = tmp_path / "daemon.log"
    process = start_daemon(config, out)
    daemons.append(process)
    stored = select(func.count()).select_from(Sample)
    wait_until("the log stored", lambda: count(engine, stored) == lines, process, out, STARTUP_S)
    wait_until("ReplayDeviceLost", lambda: "ReplayDeviceLost" in firing_alerts(engine), process, out, 60)
    status, body = http_get(f"http://127.0.0.1:{config_value(config, 'metrics', 'port')}/readyz")
    assert status == 503 and any(problem.startswith("replay paused") for problem in body["problems"]), body
    assert scored_results(engine) == 0
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    """systemd-analyze verify on the shipped unit, its ExecStart pointed at this checkout's venv (the
    shipped path, /opt/specwatch/.venv/bin/specwatch, does not exist here)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    executable = Path(sys.executable).parent / "specwatch"
    if not executable.exists():
        pytest.skip(f"{executable} is not installed (pip install -e .)")
    text = UNIT.read_text()
    assert "ExecStart=/opt/specwatch/.venv/bin/specwatch run --config /etc/specwatch/config.toml" in text
    unit = tmp_path / "specwatch.service"
    unit.write_text(text.replace("/opt/specwatch/.venv/bin/specwatch", str(executable)))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if "specwatch" in line]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr
    for setting in ("Type=notify", "WatchdogSec=60", "TimeoutStopSec=60", "DynamicUser=yes", "ProtectSystem=strict"):
        assert setting in text.splitlines()


# -- the daemon's parts, in-process --------------------------------------------------------------------


def sqlite_error(message: str) -> OperationalError:
    return OperationalError("INSERT ...", {}, sqlite3.OperationalError(message))


class FullDisk:
    """A file follower whose database has no space left until `space` is set."""

    def __init__(self) -> None:
        self.polls = 0
        self.space = False

    def poll_once(self) -> None:
        self.polls += 1
        if not self.space:
            raise sqlite_error("database or disk is full")


def test_intake_pauses_while_the_disk_is_full_then_resumes(caplog: pytest.LogCaptureFixture) -> None:
    follower = FullDisk()
    paused = Backoff(0.05, 1.0)
    job = FollowJob(follower, paused)  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger="monitor.service.daemon"):
        job.poll()
        job.poll()  # within the backoff: not tried
        assert follower.polls == 1 and paused.problem and "no space left" in paused.problem
        time.sleep(0.06)
        follower.space = True
        job.poll()
    assert follower.polls == 2 and paused.problem is None
    assert "intake paused" in caplog.text and "intake resumed" in caplog.text


class Buggy:
    def poll_once(self) -> None:
        raise ValueError("a bug")


def test_other_intake_failures_are_left_to_the_job_runner() -> None:
    paused = Backoff(1.0, 1.0)
    with pytest.raises(ValueError):
        FollowJob(Buggy(), paused).poll()  # type: ignore[arg-type]
    assert paused.problem is None


def test_readiness_and_liveness() -> None:
    health = Health()
    assert "starting" in health.readiness_problems(60) and health.liveness_problem(False, 10, time.monotonic()) is None
    health.phase, health.models, health.replay_lag_s = "running", None, 5.0
    health.database.succeeded()
    assert health.readiness_problems(60) == []
    health.replay_lag_s = 120.0
    assert health.readiness_problems(60) == ["replay lag 120s over daemon.max_replay_lag_s = 60"]
    health.database.failed("connection refused")
    assert "database unreachable: connection refused" in health.readiness_problems(60)
    assert health.liveness_problem(True, 10, time.monotonic()) is None
    assert health.liveness_problem(False, 10, time.monotonic()) == "the scheduler is not running"
    assert "no replay round completed" in str(health.liveness_problem(True, 10, time.monotonic() + 11))


def test_systemd_environment_is_read_once_and_removed() -> None:
    environ = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid()), "OTHER": "kept"}
    systemd = Systemd(environ)
    assert systemd.watchdog_interval_s == 1.0 and environ == {"OTHER": "kept"}
    systemd.notify("READY=1")  # no NOTIFY_SOCKET: nothing to send, nothing raised
    assert Systemd({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}).watchdog_interval_s is None


def test_json_log_lines() -> None:
    record = logging.LogRecord("monitor.service.daemon", logging.INFO, __file__, 1, "ready in %ds", (3,), None)
    entry = json.loads(JsonFormatter().format(record))
    assert (entry["level"], entry["logger"], entry["message"]) == ("INFO", "monitor.service.daemon", "ready in 3s")


class GpuFailsMidRound:
    """A replay loop whose device fails in the middle of a round, as a GPU that fell off the bus does:
    torch raises a RuntimeError naming the CUDA error."""

    def step(self) -> bool:
        raise RuntimeError("CUDA error: unspecified launch failure")


@pytest.mark.parametrize("policy", ["cpu", "pause"])
def test_gpu_lost_mid_replay_moves_replay_to_the_cpu_or_pauses_it(
    policy: str, engine: Engine, reference_models: Path
) -> None:
    from monitor.base.config import Config, ModelsConfig
    from monitor.service.daemon import Daemon
    from monitor.service.metrics import Metrics

    models = ModelsConfig(
        target=reference_models / "target", draft=reference_models / "drafts" / "eagle", on_device_lost=policy
    )
    daemon = Daemon(Config(models=models), Path("config.toml"))
    daemon.engine, daemon.draft_dir = engine, models.draft
    daemon.metrics = Metrics([])
    daemon.loop = GpuFailsMidRound()  # type: ignore[assignment]
    daemon.jobs.replay_job()
    assert daemon.health.device is not None and "CUDA error" in daemon.health.device
    if policy == "cpu":
        assert daemon.loop is not None and str(daemon.loop.models.target.device) == "cpu"
        assert daemon.health.models is None
    else:
        assert daemon.loop is None and daemon.health.models is not None
        assert daemon.health.models.startswith("replay paused")
    assert [finding.detector for finding in daemon.jobs.daemon_findings()] == ["device_lost"]


def test_health_and_metrics_endpoints_over_http(config: Config, tmp_path: Path) -> None:
    """/healthz, /readyz and /metrics as the daemon serves them (uvicorn + starlette), in-process."""
    from prometheus_client import CollectorRegistry

    from monitor.service.daemon import Daemon
    from monitor.service.daemon.health_server import Endpoints, serve_http
    from monitor.service.metrics import Metrics, prometheus_reader

    registry = CollectorRegistry()
    metrics = Metrics([prometheus_reader(registry)])
    daemon = Daemon(config, tmp_path / "config.toml", Systemd({}))
    served = serve_http("127.0.0.1", 0, Endpoints(daemon, registry))
    base = f"http://127.0.0.1:{served.port}"
    try:
        metrics.observe_backlog(7, 2.0)
        assert http_get(f"{base}/healthz") == (200, {"alive": True, "problem": None})
        status, ready = http_get(f"{base}/readyz")
        assert status == 503 and not ready["ready"] and "starting" in ready["problems"]
        with urllib.request.urlopen(served.url, timeout=10) as reply:
            assert "specwatch_replay_pending_samples 7.0" in reply.read().decode()
        assert http_get(f"{base}/nowhere")[0] == 404
    finally:
        served.stop()
        metrics.shutdown()
    without_metrics = serve_http("127.0.0.1", 0, Endpoints(daemon, None))
    try:
        assert http_get(f"http://127.0.0.1:{without_metrics.port}/metrics")[0] == 404
    finally:
        without_metrics.stop()


def test_exposed_intake_without_a_token_refuses_to_start(
    config: Config, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from monitor.base.config import HttpIntakeConfig
    from monitor.service.daemon import Daemon, StartupRefused

    monkeypatch.delenv("SPECWATCH_INGEST_TOKEN", raising=False)
    monkeypatch.setenv("SPECWATCH_HASH_SALT", "daemon-test")
    exposed = config.intake.model_copy(update={"http": HttpIntakeConfig(host="0.0.0.0", port=0)})
    daemon = Daemon(config.model_copy(update={"intake": exposed}), tmp_path / "config.toml", Systemd({}))
    daemon.engine = engine
    with pytest.raises(StartupRefused, match="without a bearer token") as refused:
        daemon.intake.start()
    assert "SPECWATCH_INGEST_TOKEN" in str(refused.value)
