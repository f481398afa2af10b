"""Health: what /readyz and /healthz (and the watchdog) report, from startup's phase to the replay lag."""

from __future__ import annotations

import time

from monitor.service.daemon.health import Health
from monitor.service.metrics import CONDITIONS


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


def test_readiness_names_a_job_without_progress_for_its_stall_limit() -> None:
    health = Health()
    health.phase, health.models, health.replay_lag_s = "running", None, 1.0
    health.database.succeeded()
    health.job_started("intake-follow")
    health.job_started("replay")
    now = time.monotonic()
    assert health.readiness_problems(60, 30, now + 10) == []
    assert health.readiness_problems(60, 30, now + 31) == [
        "job intake-follow stalled: no progress for 31s (daemon.job_stall_after_s = 30)",
        "job replay stalled: no progress for 31s (daemon.job_stall_after_s = 30)",
    ]
    health.job_ended("intake-follow")
    health.job_progressed("replay")
    assert health.readiness_problems(60, 30, time.monotonic() + 10) == []


def test_gpu_free_readiness_and_liveness_ask_nothing_of_replay() -> None:
    health = Health(phase="running", replays=False, models=None)
    health.database.succeeded()
    assert health.readiness_problems(max_replay_lag_s=60) == [], "no replay lag to measure"
    long_ago = health.replay_progress_at + 3600
    assert health.liveness_problem(True, None, long_ago) is None, "no replay rounds to wait for"
    assert health.liveness_problem(True, 600, long_ago) is not None


def test_health_reports_every_condition_the_metrics_export() -> None:
    health = Health()
    assert set(health.conditions()) == set(CONDITIONS) and not any(health.conditions().values())
    health.intake.failed("no space left on device")
    health.device = "CUDA error: unspecified launch failure"
    assert health.conditions() == {"intake_paused": True, "device_lost": True}
