"""`specwatch run` as a real subprocess on the tiny reference models: sd_notify on a real datagram socket
(READY, WATCHDOG, STOPPING), /healthz and /readyz, SIGKILL and restart without lost or doubled work,
refusal without models, an unreachable database, a missing GPU; the systemd unit through systemd-analyze.
The daemon's parts (monitor/service/daemon/) are tested in-process in tests/monitor/service/daemon/.

    SPECWATCH_TEST_REFERENCE_DIR=/tmp/tiny-ref .venv/bin/pytest tests/monitor/service/test_daemon.py
"""

from __future__ import annotations

import json
import os
import shutil
import signal
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
from sqlalchemy.orm import Session

from monitor.base.db import AlertRecord, IntakeCounter, ReplayResult, Sample
from monitor.base.results import SCORED
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
