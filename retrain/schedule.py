"""When retrains start: quarterly on APScheduler's persistent job store, early on recapture, by hand.

    scheduler = start_scheduler(config_path, config, engine)   # the daemon; quarterly job kept in the database
    reason = recapture_due(config, engine, now)                 # a breach/drop alert firing long enough?
    job = queue_job(config, engine, trigger="recapture", reason=reason)
    spawn_job(config_path, job)                                 # its own process, its own log

The quarterly job lives in the `apscheduler_jobs` table with misfire_grace_time=None and
coalesce=True: a daemon that was down at the fire time runs it once when it comes back. On start
the stored job is kept as it is (re-adding it would move its next run time past the missed one);
only a changed schedule replaces it.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Literal

from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from monitor.base.config import Config, load_config, window_length
from monitor.base.db import AlertRecord, RetrainJob, open_database, utcnow
from retrain.jobs import ACTIVE, JobView, create_job, mark_dead_jobs, set_progress

log = logging.getLogger(__name__)

QUARTERLY_JOB_ID = "specwatch-quarterly-retrain"
JOBSTORE_TABLE = "apscheduler_jobs"
RECAPTURE_ALERTS = ("AcceptanceBelowThreshold", "AcceptanceDropped")


def quarterly_trigger(config: Config) -> CronTrigger:
    return CronTrigger.from_crontab(config.retrain.schedule, timezone=config.retrain.timezone)


def start_scheduler(config_path: Path, config: Config, engine: Engine) -> BackgroundScheduler:
    """A started background scheduler whose quarterly retrain job is stored in the database."""
    scheduler = BackgroundScheduler(
        jobstores={"default": SQLAlchemyJobStore(engine=engine, tablename=JOBSTORE_TABLE)},
        job_defaults={"coalesce": True, "misfire_grace_time": None, "max_instances": 1},
        timezone=config.retrain.timezone,
    )
    scheduler.start(paused=True)
    ensure_quarterly_job(scheduler, config_path, config)
    scheduler.resume()
    return scheduler


def ensure_quarterly_job(scheduler: BackgroundScheduler, config_path: Path, config: Config) -> None:
    stored = scheduler.get_job(QUARTERLY_JOB_ID)
    if stored is not None and stored.kwargs.get("schedule") == config.retrain.schedule:
        log.info("quarterly retrain: next run %s", stored.next_run_time)
        return
    scheduler.add_job(
        run_quarterly_retrain,
        quarterly_trigger(config),
        id=QUARTERLY_JOB_ID,
        name="quarterly draft-head retrain",
        kwargs={"config_path": str(config_path), "schedule": config.retrain.schedule},
        replace_existing=True,
    )
    log.info("quarterly retrain scheduled: %s (%s)", config.retrain.schedule, config.retrain.timezone)


def run_quarterly_retrain(config_path: str, schedule: str) -> None:
    """The stored quarterly job: queue a retrain and start it in its own process."""
    config = load_config(config_path)
    engine = open_database(config, migrate=False)
    try:
        job = queue_job(config, engine, trigger="quarterly", reason=f"quarterly schedule {schedule}")
        if job is not None:
            spawn_job(Path(config_path), job)
    finally:
        engine.dispose()


def active_job(engine: Engine) -> RetrainJob | None:
    with Session(engine) as session:
        return session.scalars(select(RetrainJob).where(RetrainJob.state.in_(ACTIVE)).limit(1)).first()


def last_job_created(engine: Engine) -> datetime | None:
    with Session(engine) as session:
        return session.scalars(select(RetrainJob.created_at).order_by(RetrainJob.id.desc()).limit(1)).first()


def recapture_due(config: Config, engine: Engine, now: datetime | None = None) -> str | None:
    """Why a recapture retrain should start now, or None: a breach or drop alert has been firing for
    `recapture_after`, no retrain is active, and none started within `cooldown`."""
    now = now or utcnow()
    persisted_since = now - window_length(config.retrain.recapture_after)
    with Session(engine) as session:
        alert = session.scalars(
            select(AlertRecord)
            .where(
                AlertRecord.status == "firing",
                AlertRecord.alertname.in_(RECAPTURE_ALERTS),
                AlertRecord.starts_at <= persisted_since,
            )
            .order_by(AlertRecord.starts_at)
            .limit(1)
        ).first()
    if alert is None or active_job(engine) is not None:
        return None
    last = last_job_created(engine)
    if last is not None and now - last < window_length(config.retrain.cooldown):
        log.info("recapture retrain due but in cooldown (last retrain %s)", last)
        return None
    segment = alert.labels.get("segment", "")
    return f"{alert.alertname} for {segment} firing since {alert.starts_at:%Y-%m-%d %H:%M} UTC"


def queue_job(
    config: Config,
    engine: Engine,
    *,
    trigger: str,
    reason: str,
    kind: str | None = None,
    trainer: Literal["internal", "external"] | None = None,
) -> JobView | None:
    """A new queued job, unless one is already queued or running (then None). `kind` and `trainer`
    default to retrain.training's; the trainer is stored with the job (its progress), so a resumed job
    keeps it."""
    mark_dead_jobs(engine, config.retrain.stale_after_s)
    if active_job(engine) is not None:
        log.info("a retrain is already queued or running; %s retrain not queued", trigger)
        return None
    kind = kind or config.retrain.training.kind
    trainer = trainer or config.retrain.training.trainer
    if trainer == "external" and not config.retrain.external.command:
        raise ValueError("the external trainer needs retrain.external.command")
    job = create_job(engine, trigger=trigger, reason=reason, kind=kind, work_root=config.storage.data_dir / "retrain")
    set_progress(engine, job.id, trainer=trainer)
    return replace(job, progress={**job.progress, "trainer": trainer})


def spawn_job(config_path: Path, job: JobView) -> subprocess.Popen[bytes]:
    """Runs the job in its own process (its own session, so the daemon's stop does not kill it
    mid-checkpoint); its output goes to <work dir>/process.log beside job.log."""
    job.work_dir.mkdir(parents=True, exist_ok=True)
    with (job.work_dir / "process.log").open("ab") as output:
        command = [sys.executable, "-m", "monitor", "retrain", "run-job", str(job.id)]
        if config_path.exists():
            command += ["--config", str(config_path)]
        return subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
