"""Retrain spawning: an interrupted retrain (a stop or crash killed it) resumes, else a due recapture
retrain starts, each as a subprocess (retrain.schedule.spawn_job); exited ones are reaped and logged."""

from __future__ import annotations

import logging
import subprocess
from typing import TYPE_CHECKING

from retrain.jobs import mark_dead_jobs, resumable_job
from retrain.schedule import active_job, queue_job, recapture_due, spawn_job

if TYPE_CHECKING:
    from monitor.service.daemon.core import Daemon

log = logging.getLogger("monitor.service.daemon")  # one logger for all the daemon's parts: operators filter on it

MAX_RETRAIN_ATTEMPTS = 3


class Retrains:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.processes: list[subprocess.Popen[bytes]] = []
        self.said_untrainable = False

    def start_due(self) -> None:
        """Resumes an interrupted retrain (a stop or crash killed it), else starts a due recapture one."""
        daemon = self.daemon
        config, db = daemon.config, daemon.db
        self.reap()
        mark_dead_jobs(db, config.retrain.stale_after_s)
        if active_job(db) is not None:
            return
        job = resumable_job(db)
        if job is not None and job.attempts >= MAX_RETRAIN_ATTEMPTS:
            job = None
        if job is None:
            reason = recapture_due(config, db)
            if reason and not self.can_train():
                return
            job = queue_job(config, db, trigger="recapture", reason=reason) if reason else None
        if job is not None:
            process = spawn_job(daemon.config_path, job)
            self.processes.append(process)
            log.info("retrain job %d (%s) started, pid %d, log %s", job.id, job.trigger, process.pid, job.work_dir)

    def can_train(self) -> bool:
        """Retraining needs the target and the live head on a device; without them a due recapture is said, once."""
        models = self.daemon.config.models
        if models.target is not None and models.draft is not None:
            return True
        if not self.said_untrainable:
            log.warning(
                "a recapture retrain is due, but retraining needs models.target, models.draft and a device "
                "(GPU-free mode measures the engines' acceptance only); no retrain started"
            )
            self.said_untrainable = True
        return False

    def reap(self) -> None:
        for process in self.processes:
            if process.poll() is not None:
                log.info("retrain process %d exited with code %d", process.pid, process.returncode)
        self.processes = [process for process in self.processes if process.returncode is None]
