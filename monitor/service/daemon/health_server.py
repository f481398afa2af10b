"""The health and metrics server: one uvicorn server on metrics.host:metrics.port with /metrics (the daemon's
registry; 404 when metrics.enabled is false), /healthz (liveness, as the watchdog tests it) and /readyz
(readiness, the problems listed, a stalled job named)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from monitor.base.config import MetricsConfig
from monitor.base.serving import ThreadedServer
from monitor.service.daemon.errors import StartupRefused
from monitor.service.metrics import Metrics, MetricsServer, MetricsUnavailable, metrics_route, prometheus_reader

if TYPE_CHECKING:
    from monitor.service.daemon.core import Daemon

log = logging.getLogger("monitor.service.daemon")  # one logger for all the daemon's parts: operators filter on it


def liveness_problem(daemon: Daemon) -> str | None:
    """Why the main loop is not healthy (/healthz 503, the watchdog withholds its pings), or None."""
    stall_after_s = None if daemon.gpu_free else daemon.config.daemon.stall_after_s  # GPU-free: no replay rounds
    return daemon.health.liveness_problem(daemon.jobs.running, stall_after_s, time.monotonic())


def readiness_problems(daemon: Daemon) -> list[str]:
    settings = daemon.config.daemon
    return daemon.health.readiness_problems(settings.max_replay_lag_s, settings.job_stall_after_s)


def readiness_body(daemon: Daemon, problems: list[str]) -> dict[str, Any]:
    loop, health = daemon.loop, daemon.health
    return {
        "ready": not problems,
        "problems": problems,
        "pending": health.pending,
        "replay_lag_s": health.replay_lag_s,
        "draft_version": loop.models.versions.draft if loop else daemon.version_without_models,
        "acceptance": "engine" if daemon.gpu_free else "shadow and engine",
    }


class Endpoints:
    """The ASGI app: /metrics (the daemon's registry; None: metrics.enabled is false, 404), /healthz,
    /readyz. The health handlers are plain functions, which starlette runs on its worker threads."""

    def __init__(self, daemon: Daemon, registry: CollectorRegistry | None) -> None:
        self.daemon = daemon
        routes = [Route("/healthz", self.healthz, methods=["GET"]), Route("/readyz", self.readyz, methods=["GET"])]
        if registry is not None:
            routes.append(metrics_route(registry))
        self.app = Starlette(routes=routes, exception_handlers={404: self.not_found, 405: self.not_found})

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)

    def healthz(self, request: Request) -> Response:
        problem = liveness_problem(self.daemon)
        return JSONResponse({"alive": not problem, "problem": problem}, status_code=503 if problem else 200)

    def readyz(self, request: Request) -> Response:
        problems = readiness_problems(self.daemon)
        return JSONResponse(readiness_body(self.daemon, problems), status_code=503 if problems else 200)

    async def not_found(self, request: Request, error: Exception) -> Response:
        return JSONResponse({"error": "GET /healthz, /readyz or /metrics"}, status_code=404)


def serve_http(host: str, port: int, app: Endpoints) -> MetricsServer:
    """Serves `app` on uvicorn from a daemon thread; port 0 picks a free port."""
    try:
        server = ThreadedServer(app, host, port, name="http-health-metrics")
    except OSError as error:
        raise StartupRefused(f"cannot serve /metrics, /healthz, /readyz on {host}:{port}: {error.strerror}") from None
    server.start()
    served = MetricsServer(server)
    log.info("metrics, health and readiness on http://%s:%d (/metrics /healthz /readyz)", host, served.port)
    return served


def start_http(daemon: Daemon, settings: MetricsConfig) -> tuple[Metrics, MetricsServer]:
    """The daemon's meters (exported on /metrics unless metrics.enabled is false) and the server."""
    registry = CollectorRegistry()
    readers = [prometheus_reader(registry)] if settings.enabled else []
    try:
        metrics = Metrics(readers, service_name=settings.service_name, otlp_endpoint=settings.otlp_endpoint)
    except MetricsUnavailable as error:
        raise StartupRefused(str(error)) from None
    metrics.follow_conditions(daemon.health.conditions)
    served = registry if settings.enabled else None
    return metrics, serve_http(settings.host, settings.port, Endpoints(daemon, served))
