"""The job table: the interval jobs on one APScheduler BackgroundScheduler (a memory store beside
retrain.schedule's SQLAlchemy store of the quarterly retrain), the work each does, and the runner every
job goes through: stall tracking (Health.jobs, named on /readyz), a failure logged and retried at the next
tick, the jobs backing off together while the database is unreachable, a lost GPU handed to device watch."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING

from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.background import BackgroundScheduler

from alerts.outbox import dispatch
from monitor.base.config import window_length
from monitor.base.db import utcnow
from monitor.base.failures import describe, is_database_unreachable, is_device_lost, is_disk_full
from monitor.base.results import replay_backlog
from monitor.evaluation.evaluate import deliver_findings, evaluate
from monitor.evaluation.finding import Finding
from monitor.intake.engine_metrics import ScrapeError, engine_totals_by_window, scrape_engine
from monitor.intake.retention import purge_expired
from monitor.replay.live_models import version_without_models
from monitor.service.memory import trim_heap
from monitor.service.metrics import publish_evaluation
from retrain.schedule import start_scheduler
from retrain.watch import watch_latest_deploy

if TYPE_CHECKING:
    from monitor.service.daemon.core import Daemon

log = logging.getLogger("monitor.service.daemon")  # one logger for all the daemon's parts: operators filter on it

MEMORY_STORE = "memory"
DAEMON_DETECTORS = ("device_lost", "intake_paused")
BACKLOG_EVERY_S = 5.0  # readiness's replay lag, refreshed this often while replay drains a backlog


def every(
    scheduler: BackgroundScheduler, name: str, seconds: float, job: Callable[[], None], now: bool = False
) -> None:
    """An interval job in the memory store: coalesced, one instance at a time, never dropped as misfired."""
    scheduler.add_job(
        job,
        "interval",
        seconds=seconds,
        id=name,
        name=name,
        jobstore=MEMORY_STORE,
        coalesce=True,
        max_instances=1,
        misfire_grace_time=None,
        **({"next_run_time": datetime.now(UTC)} if now else {}),
    )


class Jobs:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.scheduler: BackgroundScheduler | None = None  # set once every job is added
        self._dispatch_lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self.scheduler is not None and self.scheduler.running

    def start(self) -> None:
        """retrain.schedule's scheduler (quarterly job in the database) plus the interval jobs, in memory."""
        daemon = self.daemon
        scheduler = start_scheduler(daemon.config_path, daemon.config, daemon.db)
        scheduler.add_jobstore(MemoryJobStore(), MEMORY_STORE)
        replay, alerts = daemon.config.replay, daemon.config.alerts
        if not daemon.gpu_free:
            every(scheduler, "replay", replay.interval_s, self.replay_job, now=True)
        every(scheduler, "evaluate", replay.evaluate_interval_s, self.evaluate_job)
        every(scheduler, "alert-dispatch", alerts.dispatch_interval_s, self.dispatch_job)
        every(scheduler, "retrain-check", replay.evaluate_interval_s, self.retrain_check_job)
        every(scheduler, "deploy-watch", replay.evaluate_interval_s, self.watch_job)
        every(scheduler, "retention", daemon.config.retention.interval_s, self.retention_job, now=True)
        for name, endpoint in daemon.config.engines.items():
            every(
                scheduler, f"engine-scrape:{name}", endpoint.interval_s, partial(self.engine_scrape_job, name), now=True
            )
        self.scheduler = scheduler

    def stop(self, timeout_s: float) -> bool:
        """No new runs; waits up to `timeout_s` for the running ones. False when they are still running."""
        if self.scheduler is None:
            return True
        stopper = threading.Thread(target=self.scheduler.shutdown, name="scheduler-shutdown", daemon=True)
        stopper.start()
        stopper.join(timeout_s)
        return not stopper.is_alive()

    # -- the runner

    def run_job(self, name: str, work: Callable[[], object]) -> bool:
        """Runs a job's work unless stopping or waiting out a database outage; a failure is logged and
        the next run retries. False only when it failed for a reason other than an unreachable database."""
        health = self.daemon.health
        if self.daemon.stop.is_set() or health.database.waiting():
            return True
        health.job_started(name)
        try:
            work()
        except Exception as error:
            return self.job_failed(name, error)
        finally:
            health.job_ended(name)
        if health.database.succeeded():
            log.info("database reachable again")
        return True

    def job_failed(self, name: str, error: Exception) -> bool:
        if is_device_lost(error):
            self.daemon.use_models(self.daemon.device.lost(describe(error)))
            return True
        if is_disk_full(error):
            log.error(
                "%s failed: no space left on the database's or the data directory's disk (%s)", name, describe(error)
            )
            return False
        if is_database_unreachable(error):
            delay = self.daemon.health.database.failed(describe(error))
            log.warning("%s: database unreachable (%s); jobs retry in %.0fs", name, describe(error), delay)
            return True
        log.exception("%s failed; its next run retries", name)
        return False

    # -- replay

    def replay_job(self) -> None:
        if self.run_job("replay", self.replay_pending):
            self.daemon.health.replay_progress_at = time.monotonic()

    def replay_pending(self) -> None:
        """Rounds until nothing is pending or a stop is requested (checked between rounds)."""
        daemon = self.daemon
        health = daemon.health
        daemon.device.retry()
        if daemon.loop is None:
            return  # paused: the GPU is gone (models.on_device_lost = pause)
        measured_at = time.monotonic()
        while not daemon.stop.is_set():
            daemon.heads.follow()  # between rounds: under steady traffic this loop never ends by itself
            if not daemon.replay_loop.step():
                break
            health.replay_progress_at = time.monotonic()
            health.job_progressed("replay")
            if health.replay_progress_at - measured_at > BACKLOG_EVERY_S:
                self.measure_backlog()
                measured_at = health.replay_progress_at
        self.measure_backlog()

    def measure_backlog(self) -> None:
        """Readiness's pending count and replay lag; then the heap is trimmed, as replay just freed tensors."""
        daemon = self.daemon
        versions = daemon.replay_loop.models.versions
        daemon.health.pending, daemon.health.replay_lag_s = replay_backlog(daemon.db, versions.draft, versions.target)
        trim_heap()

    # -- evaluation and alerts

    def evaluate_job(self) -> None:
        self.run_job("evaluate", self.evaluate_and_alert)

    def evaluate_and_alert(self) -> None:
        daemon = self.daemon
        if daemon.gpu_free:  # the registry's live head may change by hand (heads import --live) or by a deploy
            daemon.version_without_models = version_without_models(daemon.config)
        evaluation = evaluate(daemon.config, daemon.db, daemon.live_draft_version)
        deliver_findings(daemon.config, daemon.db, self.daemon_findings(), DAEMON_DETECTORS, evaluation.at)
        publish_evaluation(daemon.meters, daemon.config, daemon.db, evaluation)
        if not daemon.gpu_free:
            self.observe_backlog()
        self.dispatch_alerts()
        trim_heap()

    def observe_backlog(self) -> None:
        """The backlog gauges, measured as the ReplayStalled detector measures them: on the evaluation's clock,
        so they keep growing while replay is stuck or paused (replay rounds set them too)."""
        daemon = self.daemon
        daemon.meters.observe_backlog(*replay_backlog(daemon.db, daemon.live_draft_version))

    def daemon_findings(self) -> list[Finding]:
        """What only this process knows: the GPU is gone, intake is paused on a full disk."""
        return self.daemon.device.findings() + self.daemon.intake.findings()

    def dispatch_job(self) -> None:
        self.run_job("alert-dispatch", self.dispatch_alerts)

    def dispatch_alerts(self) -> None:
        with self._dispatch_lock:  # the evaluation and the dispatch job both send the outbox
            dispatch(self.daemon.config.alerts, self.daemon.db)

    # -- retraining, deploys, retention

    def retrain_check_job(self) -> None:
        self.run_job("retrain-check", self.daemon.retrains.start_due)

    def watch_job(self) -> None:
        self.run_job("deploy-watch", lambda: watch_latest_deploy(self.daemon.config, self.daemon.db))

    def retention_job(self) -> None:
        self.run_job("retention", lambda: purge_expired(self.daemon.db, self.daemon.config.retention))

    # -- the engines' own counters

    def engine_scrape_job(self, name: str) -> None:
        self.run_job(f"engine-scrape:{name}", lambda: self.scrape_and_observe_engine(name))

    def scrape_and_observe_engine(self, name: str) -> None:
        """One scrape of [engines.NAME]; one that fails (the engine restarting, say) is a warning and the next
        tick tries again. Then the engine gauges show that endpoint's stored windows."""
        daemon = self.daemon
        try:
            scrape_engine(name, daemon.config.engines[name], daemon.db, utcnow())
        except ScrapeError as error:
            log.warning("engine-scrape:%s: %s", name, error)
        windows = {window: window_length(window) for window in daemon.config.stats.windows}
        daemon.meters.observe_engine_totals(name, engine_totals_by_window(daemon.db, windows, utcnow(), endpoint=name))
