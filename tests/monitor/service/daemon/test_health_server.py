"""The health and metrics server: /healthz, /readyz and /metrics over HTTP, in-process."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from monitor.base.config import Config
from monitor.service.daemon.systemd import Systemd
from tests.monitor.service.daemon_process import http_get


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
