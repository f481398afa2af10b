"""Health: what /readyz and /healthz (and the watchdog) report, from startup's phase to the replay lag."""

from __future__ import annotations

import time

from monitor.service.daemon.health import Health


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
