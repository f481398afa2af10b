"""Retrain triggers: the quarterly job in APScheduler's persistent store (a missed run happens when
the scheduler comes back), and recapture when a breach alert persists, with a cooldown."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from alerts.lifecycle import raise_findings
from monitor.base.config import Config
from monitor.base.db import RetrainJob, utcnow
from monitor.evaluation.finding import Finding
from retrain.jobs import finish
from retrain.schedule import QUARTERLY_JOB_ID, quarterly_trigger, queue_job, recapture_due, start_scheduler


def write_config(tmp_path: Path, database_url: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[storage]\ndata_dir = "{tmp_path / "data"}"\ndatabase_url = "{database_url}"\n')
    return path


def test_default_schedule_is_quarterly(config: Config) -> None:
    trigger = quarterly_trigger(config)
    assert isinstance(trigger, CronTrigger)
    fires = []
    moment = datetime(2026, 11, 28, tzinfo=UTC)
    for _ in range(4):
        moment = trigger.get_next_fire_time(None, moment + timedelta(minutes=1))
        fires.append(moment)
    assert [(f.month, f.day, f.hour) for f in fires] == [(1, 1, 3), (4, 1, 3), (7, 1, 3), (10, 1, 3)]


def jobs(engine: Engine) -> list[RetrainJob]:
    with Session(engine) as session:
        return list(session.scalars(select(RetrainJob).order_by(RetrainJob.id)))


def test_quarterly_run_missed_while_down_runs_when_the_scheduler_is_back(
    tmp_path: Path, config: Config, engine: Engine, database_url: str
) -> None:
    path = write_config(tmp_path, database_url)
    scheduler = start_scheduler(path, config, engine)
    stored = scheduler.get_job(QUARTERLY_JOB_ID)
    assert stored is not None and stored.next_run_time > datetime.now(UTC)
    scheduler.pause()  # the fire time passes while the daemon is down:
    scheduler.modify_job(QUARTERLY_JOB_ID, next_run_time=datetime.now(UTC) - timedelta(hours=5))
    scheduler.remove_jobstore("default")  # detach the store so the stopping scheduler cannot touch it
    scheduler.shutdown(wait=False)
    assert jobs(engine) == []

    back = start_scheduler(path, config, engine)  # the stored job is kept, not re-added
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not jobs(engine):
            time.sleep(0.1)
        [job] = jobs(engine)
        assert job.trigger == "quarterly"
        next_run = back.get_job(QUARTERLY_JOB_ID).next_run_time
        assert next_run > datetime.now(UTC), "coalesced into one run, then the next quarter"
        deadline = time.monotonic() + 60  # the spawned job fails fast: no models configured
        while time.monotonic() < deadline and jobs(engine)[0].state in ("queued", "running"):
            time.sleep(0.2)
        assert jobs(engine)[0].state == "failed" and "models" in (jobs(engine)[0].error or "")
    finally:
        back.shutdown(wait=False)


def breach(segment: str = "lang=zh") -> Finding:
    return Finding("threshold", segment, "1h", "critical", f"alpha 0.4 below 0.65 for {segment}", {"alpha": 0.4})


def test_recapture_when_a_breach_persists_with_a_cooldown(config: Config, engine: Engine) -> None:
    now = utcnow()
    raise_findings(config.alerts, engine, [breach()], {"threshold"}, now=now - timedelta(hours=1))
    assert recapture_due(config, engine, now) is None, "firing for 1h < recapture_after 6h"
    raise_findings(config.alerts, engine, [breach("lang=ja")], {"threshold"}, now=now - timedelta(hours=7))
    reason = recapture_due(config, engine, now)
    assert reason is not None and "lang=ja" in reason
    job = queue_job(config, engine, trigger="recapture", reason=reason)
    assert job is not None and queue_job(config, engine, trigger="recapture", reason=reason) is None, "one at a time"
    assert recapture_due(config, engine, now) is None, "a retrain is already queued"
    finish(engine, job.id, "refused")
    assert recapture_due(config, engine, now) is None, "cooldown (3d) after the last retrain"
    assert recapture_due(config, engine, now + timedelta(days=4)) is not None
