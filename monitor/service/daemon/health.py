"""What /healthz, /readyz and the watchdog report: startup's phase, the failing dependencies (each a Backoff),
the models, the replay lag, and the running jobs' progress (a job without progress is named as stalled)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

DATABASE_RETRY_FIRST_S, DATABASE_RETRY_MAX_S = 1.0, 60.0
INTAKE_RETRY_MAX_S = 300.0


class Backoff:
    """A failing dependency: what is wrong, and when to try again (doubling waits up to a bound)."""

    def __init__(self, first_s: float, max_s: float, problem: str | None = None) -> None:
        self.first_s, self.max_s = first_s, max_s
        self.problem = problem
        self.delay_s = 0.0
        self.retry_at = 0.0
        self._lock = threading.Lock()

    def failed(self, problem: str) -> float:
        """Records a failure; returns the seconds until the next try."""
        with self._lock:
            self.problem = problem
            self.delay_s = min(self.max_s, max(self.first_s, self.delay_s * 2))
            self.retry_at = time.monotonic() + self.delay_s
            return self.delay_s

    def succeeded(self) -> bool:
        """Records a success; True when it ends a failure."""
        with self._lock:
            was_failing = self.problem is not None
            self.problem, self.delay_s = None, 0.0
            return was_failing

    def waiting(self) -> bool:
        return self.problem is not None and time.monotonic() < self.retry_at


@dataclass
class Health:
    """What /healthz, /readyz and the watchdog report, updated by startup and the jobs."""

    database: Backoff = field(
        default_factory=lambda: Backoff(DATABASE_RETRY_FIRST_S, DATABASE_RETRY_MAX_S, "not connected yet")
    )
    intake: Backoff = field(default_factory=lambda: Backoff(1.0, INTAKE_RETRY_MAX_S))
    phase: str = "starting"  # starting | running | stopping
    models: str | None = "models not loaded yet"  # what is wrong with the models; None when the live head is loaded
    device: str | None = None  # the configured GPU is gone: replaying on the CPU, or paused (see .models)
    pending: int | None = None
    replays: bool = True
    """False in GPU-free mode: no replay lag to measure, no models to load"""
    replay_lag_s: float | None = None
    replay_progress_at: float = field(default_factory=time.monotonic)
    jobs: dict[str, float] = field(default_factory=dict)  # running job -> when it last made progress (monotonic)

    def conditions(self) -> dict[str, bool]:
        """The daemon's condition gauges (monitor.service.metrics.CONDITIONS): intake paused, GPU gone."""
        return {"intake_paused": self.intake.problem is not None, "device_lost": self.device is not None}

    def job_started(self, name: str) -> None:
        self.jobs[name] = time.monotonic()

    def job_progressed(self, name: str) -> None:
        """A running job did a unit of work (a replay round, an intake batch)."""
        if name in self.jobs:
            self.jobs[name] = time.monotonic()

    def job_ended(self, name: str) -> None:
        self.jobs.pop(name, None)

    def stalled_jobs(self, stall_after_s: float, now: float) -> list[str]:
        """Running jobs without progress for longer than `stall_after_s`, each with how long."""
        idle = {name: now - progress_at for name, progress_at in list(self.jobs.items())}
        return [
            f"job {name} stalled: no progress for {seconds:.0f}s (daemon.job_stall_after_s = {stall_after_s:g})"
            for name, seconds in sorted(idle.items())
            if seconds > stall_after_s
        ]

    def readiness_problems(
        self, max_replay_lag_s: float, job_stall_after_s: float = float("inf"), now: float | None = None
    ) -> list[str]:
        problems = [] if self.phase == "running" else [self.phase]
        problems += self.stalled_jobs(job_stall_after_s, time.monotonic() if now is None else now)
        if self.database.problem:
            problems.append(f"database unreachable: {self.database.problem}")
        if self.models:
            problems.append(self.models)
        if self.intake.problem:
            problems.append(f"intake paused: {self.intake.problem}")
        if not self.replays:
            return problems
        if self.replay_lag_s is None:
            problems.append("replay lag not measured yet")
        elif self.replay_lag_s > max_replay_lag_s:
            problems.append(f"replay lag {self.replay_lag_s:.0f}s over daemon.max_replay_lag_s = {max_replay_lag_s:g}")
        return problems

    def liveness_problem(self, scheduler_running: bool, stall_after_s: float | None, now: float) -> str | None:
        """Why the main loop is not healthy (the watchdog withholds its pings), or None; `stall_after_s` None:
        nothing replays (GPU-free mode), so replay rounds are not the loop's heartbeat."""
        if self.phase == "starting":
            return None  # startup makes its own progress; systemd's start timeout bounds it
        if not scheduler_running:
            return "the scheduler is not running"
        idle = now - self.replay_progress_at
        if stall_after_s is not None and idle > stall_after_s:
            return f"no replay round completed for {idle:.0f}s (daemon.stall_after_s = {stall_after_s:g})"
        return None
