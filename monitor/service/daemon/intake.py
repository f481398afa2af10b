"""Intake in the daemon: the file follower as a job and the HTTP endpoint, built as `specwatch intake serve`
builds them; a full disk pauses intake with backoff, says so on /readyz and raises the IntakePaused alert."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from monitor.base.config import SecretUnavailable
from monitor.base.failures import describe, is_disk_full
from monitor.base.stats import ALL_SEGMENTS
from monitor.evaluation.finding import CRITICAL, Finding
from monitor.intake.follow import FileFollower
from monitor.intake.http import ExposedWithoutToken, IntakeHTTPServer
from monitor.intake.pipeline import IngestReport, IntakePipeline
from monitor.service.daemon.errors import StartupRefused
from monitor.service.daemon.health import Backoff
from monitor.service.daemon.jobs import every

if TYPE_CHECKING:
    from monitor.service.daemon.core import Daemon

log = logging.getLogger("monitor.service.daemon")  # one logger for all the daemon's parts: operators filter on it


class FollowJob:
    """The file follower as a scheduled job: while the disk is full it pauses itself, with backoff."""

    def __init__(self, follower: FileFollower, paused: Backoff) -> None:
        self.follower = follower
        self.paused = paused

    def poll(self) -> None:
        if self.paused.waiting():
            return
        try:
            self.follower.poll_once()
        except Exception as error:
            if not is_disk_full(error):
                raise
            pause_intake(self.paused, f"no space left on the database's disk ({describe(error)})")
            return
        resume_intake(self.paused)


def pause_intake(paused: Backoff, problem: str) -> None:
    """A full disk (seen by the follower or the HTTP endpoint): the follower waits with backoff, /readyz
    says so, and the IntakePaused alert fires (when the alert itself can still be stored)."""
    delay = paused.failed(problem)
    log.error("intake paused: %s; file intake retries in %.0fs", problem, delay)


def resume_intake(paused: Backoff) -> None:
    if paused.succeeded():
        log.info("intake resumed: samples are stored again")


class Intake:
    """The daemon's intake: started after the jobs, stopped first at shutdown."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.server: IntakeHTTPServer | None = None
        self.follower: FollowJob | None = None

    def start(self) -> None:
        """The file follower (a job) and the HTTP endpoint, built as `specwatch intake serve` builds them."""
        daemon = self.daemon
        intake, paused = daemon.config.intake, daemon.health.intake
        try:
            pipeline = IntakePipeline(daemon.config, daemon.db)
            token = intake.http.token.read()
        except (SecretUnavailable, OSError) as error:
            raise StartupRefused(f"intake cannot start: {error}") from None
        follower = FileFollower(pipeline, daemon.db, intake.follow, on_batch=self.count)
        self.follower = FollowJob(follower, paused)
        scheduler = daemon.jobs.scheduler
        if intake.follow.paths and scheduler is not None:
            every(scheduler, "intake-follow", intake.follow.poll_interval_s, self.job, now=True)
        if intake.http.enabled:
            try:
                self.server = IntakeHTTPServer(
                    intake.http,
                    pipeline,
                    token,
                    on_disk_full=lambda problem: pause_intake(paused, problem),
                    on_stored=lambda: resume_intake(paused),
                )
            except ExposedWithoutToken as error:
                raise StartupRefused(str(error)) from None
            except OSError as error:
                raise StartupRefused(
                    f"cannot serve intake on {intake.http.host}:{intake.http.port}: {error.strerror}"
                ) from None
            self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def job(self) -> None:
        if self.follower is not None:
            self.daemon.jobs.run_job("intake-follow", self.follower.poll)

    def count(self, path: Path, report: IngestReport, _read_to: int) -> None:
        self.daemon.health.job_progressed("intake-follow")
        self.daemon.meters.record_intake(f"file:{path}", report)

    def findings(self) -> list[Finding]:
        """The IntakePaused alert's finding while a full disk pauses intake."""
        problem = self.daemon.health.intake.problem
        return (
            [Finding("intake_paused", ALL_SEGMENTS, "now", CRITICAL, problem, {"problem": problem})] if problem else []
        )
