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


def test_the_daemons_metrics_show_its_conditions(config: Config, tmp_path: Path) -> None:
    """specwatch_intake_paused and specwatch_device_lost on the daemon's /metrics, read at each scrape."""
    from monitor.base.config import MetricsConfig
    from monitor.service.daemon import Daemon
    from monitor.service.daemon.health_server import start_http
    from monitor.service.daemon.intake import pause_intake, resume_intake

    daemon = Daemon(config, tmp_path / "config.toml", Systemd({}))
    metrics, served = start_http(daemon, MetricsConfig(port=0))

    def scraped() -> list[str]:
        with urllib.request.urlopen(served.url, timeout=10) as reply:
            return [
                line
                for line in reply.read().decode().splitlines()
                if line.startswith(("specwatch_intake", "specwatch_device"))
            ]

    try:
        assert scraped() == ["specwatch_intake_paused 0.0", "specwatch_device_lost 0.0"]
        pause_intake(daemon.health.intake, "no space left on device")
        daemon.health.device = "CUDA error: unspecified launch failure; replay paused"
        assert scraped() == ["specwatch_intake_paused 1.0", "specwatch_device_lost 1.0"]
        resume_intake(daemon.health.intake)
        assert scraped()[0] == "specwatch_intake_paused 0.0"
    finally:
        served.stop()
        metrics.shutdown()
