"""The specwatch daemon: intake, replay, evaluation, alerting and retraining in one process, every loop
a job on one APScheduler BackgroundScheduler, run by systemd (Type=notify, watchdog).

    specwatch run --config /etc/specwatch/config.toml      # monitor/service/systemd/specwatch.service runs this
    curl http://127.0.0.1:9464/readyz                       # /metrics, /healthz and /readyz on metrics.host:port

HTTP, one server on metrics.host:metrics.port: /metrics (prometheus_client's app on the daemon's registry,
404 when metrics.enabled is false), /healthz (200 while the main loop is live, by the watchdog's test;
503 once it stalls), /readyz (200 only when the database answers, the live head is loaded, intake is not
paused and the replay lag is within `daemon.max_replay_lag_s`; the JSON body lists what is not).

Startup: the model directories are checked (missing: refused, exit 2, the path named); /metrics, /healthz
and /readyz are served; the database is opened and migrated, retried with backoff while unreachable
(readiness says so, systemd's start timeout is extended); the live target and draft are loaded (on the
CPU, or not at all with replay paused, when the configured GPU is gone: models.on_device_lost); the jobs
start; intake starts (the file follower as a job, the HTTP endpoint as `intake serve` runs it); READY=1.

Jobs: the quarterly retrain stays in retrain.schedule's SQLAlchemy job store; the interval jobs live in a
memory store on the same scheduler (coalesce, one instance each): replay (drains what is pending and follows
the live head after a deploy or rollback), evaluation + alert dispatch, alert dispatch, retrain check
(resume an interrupted job, or start a recapture retrain), post-deploy watch, retention (hourly) and the
file follower. A job that raises is logged and runs again at its next tick; while the database is
unreachable the jobs back off together; a full disk pauses file intake with backoff.

Watchdog: WATCHDOG=1 every WATCHDOG_USEC/2 while the scheduler runs and a replay round completed within
`daemon.stall_after_s`. SIGTERM/SIGINT: STOPPING=1, intake stops, running jobs finish (the replay job
after its current round) within `daemon.stop_timeout_s`, else they are abandoned (claims expire); exit 0.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from types import FrameType
from typing import Any

import sdnotify
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from alerts.outbox import dispatch
from decoder import DecoderError, draft_version, load_draft
from monitor.base.config import Config, SecretUnavailable
from monitor.base.db_timeouts import abort_database_calls_after
from monitor.base.failures import (
    describe,
    gpu_unavailable,
    is_database_unreachable,
    is_device_lost,
    is_disk_full,
    retry_at_startup,
)
from monitor.base.results import replay_backlog
from monitor.base.serving import ThreadedServer
from monitor.base.stats import ALL_SEGMENTS
from monitor.evaluation.drift import CRITICAL, Finding
from monitor.evaluation.evaluate import deliver_findings, evaluate
from monitor.intake.follow import FileFollower
from monitor.intake.http import ExposedWithoutToken, IntakeHTTPServer
from monitor.intake.pipeline import IngestReport, IntakePipeline
from monitor.intake.retention import purge_expired
from monitor.replay.live_models import (
    LiveModels,
    ModelsUnavailable,
    live_draft_dir,
    load_live_models,
    require_directory,
)
from monitor.replay.replayer import Versions
from monitor.service.commands.common import open_database
from monitor.service.metrics import (
    Metrics,
    MetricsServer,
    MetricsUnavailable,
    metrics_route,
    prometheus_reader,
)
from monitor.service.replay_loop import ReplayLoop
from retrain.jobs import mark_dead_jobs, resumable_job
from retrain.schedule import active_job, queue_job, recapture_due, spawn_job, start_scheduler
from retrain.watch import watch_latest_deploy

log = logging.getLogger(__name__)

MEMORY_STORE = "memory"
DATABASE_RETRY_FIRST_S, DATABASE_RETRY_MAX_S = 1.0, 60.0
INTAKE_RETRY_MAX_S = 300.0
MAX_RETRAIN_ATTEMPTS = 3
DEVICE_RETRY_FIRST_S, DEVICE_RETRY_MAX_S = 30.0, 600.0
DAEMON_DETECTORS = ("device_lost", "intake_paused")
BACKLOG_EVERY_S = 5.0  # readiness's replay lag, refreshed this often while replay drains a backlog
TEXT_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class StartupRefused(Exception):
    """The daemon cannot start as configured; the message says what to fix (exit code 2)."""


# -- memory --------------------------------------------------------------------------------------------


GLIBC_M_ARENA_MAX = -8
MALLOC_ARENAS = 2


@cache
def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 - both exist on glibc only
    except (OSError, AttributeError):
        return None  # not glibc: its allocator's habits do not apply
    return libc


def limit_malloc_arenas() -> None:
    """At most MALLOC_ARENAS glibc heaps for all threads (as MALLOC_ARENA_MAX=2 would). The jobs run on
    a thread pool, and each thread would otherwise get a heap of its own that keeps what replay's tensors
    and the evaluations' frames free. In the soak test's traffic (24 simulated minutes) the daemon peaked
    at about 1,100 MB resident without the limit and 930 MB with it."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(GLIBC_M_ARENA_MAX, MALLOC_ARENAS)


def trim_heap() -> None:
    """Hands freed heap memory back to the OS (glibc's malloc_trim), after replay drains and evaluations."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


# -- logging -------------------------------------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message (and the traceback, when there is one)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class QuietBusySkips(logging.Filter):
    """The replay and intake jobs drain their backlog in one run, so a run outlasts its interval by
    design; APScheduler then warns at every tick that the next run was skipped (max_instances=1)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "maximum number of running instances reached" not in record.getMessage()


def configure_logging(log_format: str) -> None:
    """Log lines to stdout (journald keeps them), as text or JSON, at the level already set."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    if root.level > logging.DEBUG:
        logging.getLogger("apscheduler.executors").setLevel(logging.WARNING)  # "Running job ..." every tick
    logging.getLogger("apscheduler.scheduler").addFilter(QuietBusySkips())


# -- systemd -------------------------------------------------------------------------------------------


def watchdog_interval_s(environ: Mapping[str, str]) -> float | None:
    """Half of WATCHDOG_USEC when systemd asks this process for watchdog pings, else None."""
    usec, pid = environ.get("WATCHDOG_USEC", ""), environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


class Systemd:
    """sd_notify through the `sdnotify` package; does nothing when NOTIFY_SOCKET is unset. The
    variables are taken out of the environment, so retrain processes started later do not see them."""

    def __init__(self, environ: MutableMapping[str, str] = os.environ) -> None:
        self.watchdog_interval_s = watchdog_interval_s(environ)
        self._notifier = sdnotify.SystemdNotifier() if environ.get("NOTIFY_SOCKET") else None
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            environ.pop(name, None)

    def notify(self, *assignments: str) -> None:
        if self._notifier is not None:
            message = "\n".join(assignments).encode("ascii", "replace").decode("ascii")
            self._notifier.notify(message)


# -- health --------------------------------------------------------------------------------------------


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
    replay_lag_s: float | None = None
    replay_progress_at: float = field(default_factory=time.monotonic)
    jobs: dict[str, float] = field(default_factory=dict)  # running job -> when it last made progress (monotonic)

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
        if self.replay_lag_s is None:
            problems.append("replay lag not measured yet")
        elif self.replay_lag_s > max_replay_lag_s:
            problems.append(f"replay lag {self.replay_lag_s:.0f}s over daemon.max_replay_lag_s = {max_replay_lag_s:g}")
        return problems

    def liveness_problem(self, scheduler_running: bool, stall_after_s: float, now: float) -> str | None:
        """Why the main loop is not healthy (the watchdog withholds its pings), or None."""
        if self.phase == "starting":
            return None  # startup makes its own progress; systemd's start timeout bounds it
        if not scheduler_running:
            return "the scheduler is not running"
        idle = now - self.replay_progress_at
        if idle > stall_after_s:
            return f"no replay round completed for {idle:.0f}s (daemon.stall_after_s = {stall_after_s:g})"
        return None


# -- HTTP: /metrics, /healthz, /readyz on one port ---------------------------------------------------


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
        problem = self.daemon.liveness_problem()
        return JSONResponse({"alive": not problem, "problem": problem}, status_code=503 if problem else 200)

    def readyz(self, request: Request) -> Response:
        problems = self.daemon.readiness_problems()
        return JSONResponse(self.daemon.readiness_body(problems), status_code=503 if problems else 200)

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


# -- intake ----------------------------------------------------------------------------------------------


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


# -- the daemon -------------------------------------------------------------------------------------------


class Daemon:
    def __init__(self, config: Config, config_path: Path, systemd: Systemd | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.systemd = systemd or Systemd()
        self.stop = threading.Event()
        self.health = Health(intake=Backoff(config.intake.follow.poll_interval_s, INTAKE_RETRY_MAX_S))
        self.engine: Engine | None = None
        self.metrics: Metrics | None = None
        self.http: MetricsServer | None = None
        self.scheduler: BackgroundScheduler | None = None
        self.intake_server: IntakeHTTPServer | None = None
        self.loop: ReplayLoop | None = None
        self.draft_dir: Path | None = None
        self.follower: FollowJob | None = None
        self.retrains: list[subprocess.Popen[bytes]] = []
        self.device_retry = Backoff(DEVICE_RETRY_FIRST_S, DEVICE_RETRY_MAX_S)
        self.unloadable_head: Path | None = None
        self.paused_version: str | None = None  # the live head's version while replay is paused
        self._dispatch_lock = threading.Lock()

    # -- lifecycle

    def run(self) -> int:
        """Starts everything, serves until SIGTERM/SIGINT, stops; 0 on a clean stop."""
        previous = {sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        limit_malloc_arenas()
        try:
            self.start()
            if not self.stop.is_set():
                self.systemd.notify("READY=1", f"STATUS=running: draft {self.live_draft_version}")
                log.info("specwatch daemon ready (pid %d)", os.getpid())
            while not self.stop.wait(1.0):
                pass
            log.info("stop requested: finishing running jobs")
        except StartupRefused as refused:
            self.systemd.notify(f"STATUS=refused to start: {refused}")
            raise
        finally:
            self.shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0

    def _request_stop(self, signum: int, _frame: FrameType | None) -> None:
        """A database call still unanswered halfway to daemon.stop_timeout_s then fails, so its job (or startup's
        migration) ends, rolled back, and the daemon exits cleanly instead of waiting on a silent database."""
        if not self.stop.is_set():
            abort_database_calls_after(self.config.daemon.stop_timeout_s / 2)
        self.stop.set()

    def start(self) -> None:
        self.draft_dir = self.check_model_directories()
        self.metrics, self.http = self.start_http()
        self.start_watchdog()
        self.engine = self.connect_database()
        if self.engine is None:
            return
        self.use_models(self.load_models())
        if self.stop.is_set():
            return
        self.scheduler = self.start_jobs()
        self.start_intake()
        self.health.phase = "running"

    def shutdown(self) -> None:
        self.health.phase = "stopping"
        self.stop.set()
        self.systemd.notify("STOPPING=1", "STATUS=stopping: finishing the running jobs")
        if self.intake_server is not None:
            self.intake_server.stop()
        if self.scheduler is not None:
            self.stop_scheduler(self.scheduler)
        if self.http is not None:
            self.http.stop()
        if self.metrics is not None:
            self.metrics.shutdown()
        if self.engine is not None:
            self.engine.dispose()
        log.info("specwatch daemon stopped")

    def stop_scheduler(self, scheduler: BackgroundScheduler) -> None:
        """No new runs; waits up to daemon.stop_timeout_s for the running ones, else abandons them."""
        stopper = threading.Thread(target=scheduler.shutdown, name="scheduler-shutdown", daemon=True)
        stopper.start()
        stopper.join(self.config.daemon.stop_timeout_s)
        if stopper.is_alive():
            log.warning(
                "running jobs did not finish within daemon.stop_timeout_s = %gs: abandoning them "
                "(a replay round's claims expire after replay.claim_ttl_s; intake cursors are committed per batch)",
                self.config.daemon.stop_timeout_s,
            )
            logging.shutdown()
            os._exit(0)

    # -- startup steps

    def check_model_directories(self) -> Path:
        """The live draft's directory; refuses to start, naming the path, when a model directory is missing."""
        try:
            draft_dir = live_draft_dir(self.config)
            require_directory(self.config.models.target, "models.target")
            return require_directory(draft_dir, "models.draft")
        except ModelsUnavailable as error:
            raise StartupRefused(str(error)) from None

    def start_http(self) -> tuple[Metrics, MetricsServer]:
        settings = self.config.metrics
        registry = CollectorRegistry()
        readers = [prometheus_reader(registry)] if settings.enabled else []
        try:
            metrics = Metrics(readers, service_name=settings.service_name, otlp_endpoint=settings.otlp_endpoint)
        except MetricsUnavailable as error:
            raise StartupRefused(str(error)) from None
        served = registry if settings.enabled else None
        return metrics, serve_http(settings.host, settings.port, Endpoints(self, served))

    def start_watchdog(self) -> None:
        interval = self.systemd.watchdog_interval_s
        if interval is not None:
            threading.Thread(target=self.keep_watchdog, args=(interval,), name="watchdog", daemon=True).start()

    def connect_database(self) -> Engine | None:
        """The migrated database, retried with backoff while unreachable; None when stopped meanwhile."""
        while not self.stop.is_set():
            try:
                engine = open_database(self.config)
            except SecretUnavailable as error:
                raise StartupRefused(str(error)) from None
            except (DBAPIError, OSError) as error:
                if not retry_at_startup(error):
                    raise
                delay = self.health.database.failed(describe(error))
                log.warning("database unreachable (%s); retrying in %.0fs", describe(error), delay)
                self.systemd.notify(
                    f"STATUS=waiting for the database: {describe(error)}",
                    f"EXTEND_TIMEOUT_USEC={int((delay + 30) * 1e6)}",
                )
                self.stop.wait(delay)
                continue
            self.health.database.succeeded()
            return engine
        return None

    def load_models(self) -> LiveModels | None:
        """The live models on the configured device; when the GPU is gone, on the CPU or none at all
        (replay paused), as models.on_device_lost says."""
        self.systemd.notify(f"STATUS=loading models: {self.config.models.target}, {self.draft_dir}")
        problem = gpu_unavailable(self.config.models.device)
        if problem is not None:
            return self.device_lost(problem)
        try:
            models = load_live_models(self.config.models, self.draft_dir)
        except Exception as error:
            if is_device_lost(error):
                return self.device_lost(describe(error))
            if isinstance(error, ModelsUnavailable | DecoderError | OSError):
                raise StartupRefused(str(error)) from None
            raise
        self.health.models = None
        return models

    def device_lost(self, problem: str) -> LiveModels | None:
        """The GPU is gone: the live models on the CPU (on_device_lost = cpu), else None: replay pauses.
        Either way the ReplayDeviceLost alert fires; the replay job keeps checking for the GPU's return."""
        self.device_retry.failed(problem)
        if self.config.models.on_device_lost == "cpu":
            self.health.device = f"{problem}; replaying on the CPU (models.on_device_lost = cpu)"
            log.error("GPU unavailable (%s): replaying on the CPU until it is back", problem)
            on_cpu = self.config.models.model_copy(update={"device": "cpu"})
            models = load_live_models(on_cpu, self.draft_dir)
            self.health.models = None
            return models
        self.health.device = f"{problem}; replay paused until it is back (models.on_device_lost = pause)"
        log.error("GPU unavailable (%s): replay paused until it is back", problem)
        self.health.models = f"replay paused: {problem}"
        assert self.draft_dir is not None, "the live head is found at startup"
        self.paused_version = draft_version(self.draft_dir)  # hashed once per loss, not at every evaluation
        return None

    def use_models(self, models: LiveModels | None) -> None:
        """Replay with these models from the next round on; None pauses replay."""
        self.loop = self.replay_loop_for(models) if models is not None else None

    def retry_device(self) -> None:
        """After a device loss: back on the configured device once it answers again."""
        if self.health.device is None or self.device_retry.waiting():
            return
        problem = gpu_unavailable(self.config.models.device)
        if problem is not None:
            self.device_retry.failed(problem)
            return
        try:
            models = load_live_models(self.config.models, self.draft_dir)
        except Exception as error:
            if not is_device_lost(error):
                raise
            self.device_retry.failed(describe(error))
            return
        self.device_retry.succeeded()
        self.health.device = self.health.models = None
        self.use_models(models)
        log.info("the GPU is back: replaying on %s again", self.config.models.device)

    def replay_loop_for(self, models: LiveModels) -> ReplayLoop:
        """A ReplayLoop whose step only replays: the daemon evaluates and dispatches on jobs of its own."""
        loop = ReplayLoop(self.config, self.db, models, self.meters, replay_only=True)
        self.meters.observe_live_draft(models.versions)
        return loop

    def start_jobs(self) -> BackgroundScheduler:
        """retrain.schedule's scheduler (quarterly job in the database) plus the interval jobs, in memory."""
        scheduler = start_scheduler(self.config_path, self.config, self.db)
        scheduler.add_jobstore(MemoryJobStore(), MEMORY_STORE)
        replay, alerts = self.config.replay, self.config.alerts
        self.every(scheduler, "replay", replay.interval_s, self.replay_job, now=True)
        self.every(scheduler, "evaluate", replay.evaluate_interval_s, self.evaluate_job)
        self.every(scheduler, "alert-dispatch", alerts.dispatch_interval_s, self.dispatch_job)
        self.every(scheduler, "retrain-check", replay.evaluate_interval_s, self.retrain_check_job)
        self.every(scheduler, "deploy-watch", replay.evaluate_interval_s, self.watch_job)
        self.every(scheduler, "retention", self.config.retention.interval_s, self.retention_job, now=True)
        return scheduler

    @staticmethod
    def every(
        scheduler: BackgroundScheduler, name: str, seconds: float, job: Callable[[], None], now: bool = False
    ) -> None:
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

    def start_intake(self) -> None:
        """The file follower (a job) and the HTTP endpoint, built as `specwatch intake serve` builds them."""
        intake = self.config.intake
        try:
            pipeline = IntakePipeline(self.config, self.db)
            token = intake.http.token.read()
        except (SecretUnavailable, OSError) as error:
            raise StartupRefused(f"intake cannot start: {error}") from None
        follower = FileFollower(pipeline, self.db, intake.follow, on_batch=self.count_intake)
        self.follower = FollowJob(follower, self.health.intake)
        if intake.follow.paths and self.scheduler is not None:
            self.every(self.scheduler, "intake-follow", intake.follow.poll_interval_s, self.intake_job, now=True)
        if intake.http.enabled:
            try:
                self.intake_server = IntakeHTTPServer(
                    intake.http,
                    pipeline,
                    token,
                    on_disk_full=lambda problem: pause_intake(self.health.intake, problem),
                    on_stored=lambda: resume_intake(self.health.intake),
                )
            except ExposedWithoutToken as error:
                raise StartupRefused(str(error)) from None
            except OSError as error:
                raise StartupRefused(
                    f"cannot serve intake on {intake.http.host}:{intake.http.port}: {error.strerror}"
                ) from None
            self.intake_server.start()

    def intake_job(self) -> None:
        if self.follower is not None:
            self.run_job("intake-follow", self.follower.poll)

    def count_intake(self, path: Path, report: IngestReport) -> None:
        self.health.job_progressed("intake-follow")
        self.meters.record_intake(f"file:{path}", report)

    # -- jobs

    def run_job(self, name: str, work: Callable[[], object]) -> bool:
        """Runs a job's work unless stopping or waiting out a database outage; a failure is logged and
        the next run retries. False only when it failed for a reason other than an unreachable database."""
        if self.stop.is_set() or self.health.database.waiting():
            return True
        self.health.job_started(name)
        try:
            work()
        except Exception as error:
            return self.job_failed(name, error)
        finally:
            self.health.job_ended(name)
        if self.health.database.succeeded():
            log.info("database reachable again")
        return True

    def job_failed(self, name: str, error: Exception) -> bool:
        if is_device_lost(error):
            self.use_models(self.device_lost(describe(error)))
            return True
        if is_disk_full(error):
            log.error(
                "%s failed: no space left on the database's or the data directory's disk (%s)", name, describe(error)
            )
            return False
        if is_database_unreachable(error):
            delay = self.health.database.failed(describe(error))
            log.warning("%s: database unreachable (%s); jobs retry in %.0fs", name, describe(error), delay)
            return True
        log.exception("%s failed; its next run retries", name)
        return False

    def replay_job(self) -> None:
        if self.run_job("replay", self.replay_pending):
            self.health.replay_progress_at = time.monotonic()

    def replay_pending(self) -> None:
        """Rounds until nothing is pending or a stop is requested (checked between rounds)."""
        self.retry_device()
        if self.loop is None:
            return  # paused: the GPU is gone (models.on_device_lost = pause)
        measured_at = time.monotonic()
        while not self.stop.is_set():
            self.follow_live_head()  # between rounds: under steady traffic this loop never ends by itself
            if not self.replay_loop.step():
                break
            self.health.replay_progress_at = time.monotonic()
            self.health.job_progressed("replay")
            if self.health.replay_progress_at - measured_at > BACKLOG_EVERY_S:
                self.measure_backlog()
                measured_at = self.health.replay_progress_at
        self.measure_backlog()

    def measure_backlog(self) -> None:
        """Readiness's pending count and replay lag; then the heap is trimmed, as replay just freed tensors."""
        versions = self.replay_loop.models.versions
        self.health.pending, self.health.replay_lag_s = replay_backlog(self.db, versions.draft, versions.target)
        trim_heap()

    def follow_live_head(self) -> None:
        """Loads the live head when the registry's pointer moved (a deploy or a rollback). A head that
        cannot be loaded keeps the old one replaying and makes the daemon not ready."""
        try:
            draft_dir = live_draft_dir(self.config)
        except ModelsUnavailable as error:
            self.models_problem(f"live head unusable: {error}")
            return
        if draft_dir is None or draft_dir == self.draft_dir:
            self.health.models = None
            return
        if draft_dir == self.unloadable_head:
            return  # tried and failed; tried again once the pointer moves
        log.info("the live head moved to %s (deploy or rollback): loading it", draft_dir)
        try:
            self.swap_draft(draft_dir)
        except (DecoderError, OSError) as error:
            self.unloadable_head = draft_dir
            self.models_problem(f"live head {draft_dir} cannot be loaded ({error}); still replaying {self.draft_dir}")

    def models_problem(self, problem: str) -> None:
        """Logged once when it appears or changes (the replay job checks every round); /readyz shows it."""
        if problem != self.health.models:
            log.error("%s", problem)
        self.health.models = problem

    def swap_draft(self, draft_dir: Path) -> None:
        current = self.replay_loop.models
        draft = load_draft(draft_dir, current.target)
        versions = Versions(target=current.versions.target, draft=draft_version(draft_dir))
        self.loop = self.replay_loop_for(LiveModels(current.target, draft, versions))
        self.draft_dir, self.health.models = draft_dir, None
        log.info("now replaying draft %s (was %s)", versions.draft, current.versions.draft)

    def evaluate_job(self) -> None:
        self.run_job("evaluate", self.evaluate_and_alert)

    def evaluate_and_alert(self) -> None:
        evaluation = evaluate(self.config, self.db, self.live_draft_version)
        self.meters.observe_evaluation(evaluation)
        deliver_findings(self.config, self.db, self.daemon_findings(), DAEMON_DETECTORS, evaluation.at)
        self.dispatch_alerts()
        trim_heap()

    def daemon_findings(self) -> list[Finding]:
        """What only this process knows: the GPU is gone, intake is paused on a full disk."""
        problems = {"device_lost": self.health.device, "intake_paused": self.health.intake.problem}
        return [
            Finding(detector, ALL_SEGMENTS, "now", CRITICAL, problem, {"problem": problem})
            for detector, problem in problems.items()
            if problem
        ]

    def dispatch_job(self) -> None:
        self.run_job("alert-dispatch", self.dispatch_alerts)

    def dispatch_alerts(self) -> None:
        with self._dispatch_lock:  # the evaluation and the dispatch job both send the outbox
            dispatch(self.config.alerts, self.db)

    def retrain_check_job(self) -> None:
        self.run_job("retrain-check", self.start_due_retrain)

    def start_due_retrain(self) -> None:
        """Resumes an interrupted retrain (a stop or crash killed it), else starts a due recapture one."""
        self.reap_retrains()
        mark_dead_jobs(self.db, self.config.retrain.stale_after_s)
        if active_job(self.db) is not None:
            return
        job = resumable_job(self.db)
        if job is not None and job.attempts >= MAX_RETRAIN_ATTEMPTS:
            job = None
        if job is None:
            reason = recapture_due(self.config, self.db)
            job = queue_job(self.config, self.db, trigger="recapture", reason=reason) if reason else None
        if job is not None:
            process = spawn_job(self.config_path, job)
            self.retrains.append(process)
            log.info("retrain job %d (%s) started, pid %d, log %s", job.id, job.trigger, process.pid, job.work_dir)

    def reap_retrains(self) -> None:
        for process in self.retrains:
            if process.poll() is not None:
                log.info("retrain process %d exited with code %d", process.pid, process.returncode)
        self.retrains = [process for process in self.retrains if process.returncode is None]

    def watch_job(self) -> None:
        self.run_job("deploy-watch", lambda: watch_latest_deploy(self.config, self.db))

    def retention_job(self) -> None:
        self.run_job("retention", lambda: purge_expired(self.db, self.config.retention))

    # -- health

    def keep_watchdog(self, interval_s: float) -> None:
        withheld = False
        while not self.stop.wait(interval_s):
            problem = self.liveness_problem()
            if problem is None:
                self.systemd.notify("WATCHDOG=1")
            elif not withheld:
                log.error("watchdog pings withheld, systemd will restart the daemon: %s", problem)
            withheld = problem is not None

    def liveness_problem(self) -> str | None:
        running = self.scheduler is not None and self.scheduler.running
        return self.health.liveness_problem(running, self.config.daemon.stall_after_s, time.monotonic())

    def readiness_problems(self) -> list[str]:
        daemon = self.config.daemon
        return self.health.readiness_problems(daemon.max_replay_lag_s, daemon.job_stall_after_s)

    def readiness_body(self, problems: list[str]) -> dict[str, Any]:
        loop = self.loop
        return {
            "ready": not problems,
            "problems": problems,
            "pending": self.health.pending,
            "replay_lag_s": self.health.replay_lag_s,
            "draft_version": loop.models.versions.draft if loop else None,
        }

    # -- what startup made

    @property
    def db(self) -> Engine:
        assert self.engine is not None, "the database is opened at startup"
        return self.engine

    @property
    def meters(self) -> Metrics:
        assert self.metrics is not None, "metrics start at startup"
        return self.metrics

    @property
    def live_draft_version(self) -> str:
        """The live head's version, also while replay is paused (no models loaded)."""
        if self.loop is not None:
            return self.loop.models.versions.draft
        assert self.paused_version is not None, "replay runs, or device_lost paused it"
        return self.paused_version

    @property
    def replay_loop(self) -> ReplayLoop:
        assert self.loop is not None, "the models are loaded at startup"
        return self.loop
