"""Lifecycle: startup in order (model directories, /metrics /healthz /readyz, watchdog, database, models,
jobs, intake, READY=1), sd_notify along the way, the watchdog's pings, and the stop on SIGTERM/SIGINT
(STOPPING=1, intake first, the running jobs drained within daemon.stop_timeout_s, else abandoned; exit 0)."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from decoder import DecoderError
from monitor.base.config import SecretUnavailable
from monitor.base.db_timeouts import abort_database_calls_after
from monitor.base.failures import describe, gpu_unavailable, is_device_lost, retry_at_startup
from monitor.replay.live_models import (
    LiveModels,
    ModelsUnavailable,
    live_draft_dir,
    load_live_models,
    require_directory,
    version_without_models,
)
from monitor.service.commands.common import open_database
from monitor.service.daemon.errors import StartupRefused
from monitor.service.daemon.health_server import liveness_problem, start_http
from monitor.service.memory import limit_malloc_arenas
from monitor.service.metrics import MetricsServer

if TYPE_CHECKING:
    from monitor.service.daemon.core import Daemon

log = logging.getLogger("monitor.service.daemon")  # one logger for all the daemon's parts: operators filter on it


class Lifecycle:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.http: MetricsServer | None = None

    def run(self) -> int:
        """Starts everything, serves until SIGTERM/SIGINT, stops; 0 on a clean stop."""
        daemon = self.daemon
        previous = {sig: signal.signal(sig, self.request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        limit_malloc_arenas()
        try:
            self.start()
            if not daemon.stop.is_set():
                mode = " (GPU-free: the engines' own acceptance)" if daemon.gpu_free else ""
                daemon.systemd.notify("READY=1", f"STATUS=running: draft {daemon.live_draft_version}{mode}")
                log.info("specwatch daemon ready (pid %d)", os.getpid())
            while not daemon.stop.wait(1.0):
                pass
            log.info("stop requested: finishing running jobs")
        except StartupRefused as refused:
            daemon.systemd.notify(f"STATUS=refused to start: {refused}")
            raise
        finally:
            self.shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0

    def request_stop(self, signum: int, _frame: FrameType | None) -> None:
        """A database call still unanswered halfway to daemon.stop_timeout_s then fails, so its job (or startup's
        migration) ends, rolled back, and the daemon exits cleanly instead of waiting on a silent database."""
        daemon = self.daemon
        if not daemon.stop.is_set():
            abort_database_calls_after(daemon.config.daemon.stop_timeout_s / 2)
        daemon.stop.set()

    def start(self) -> None:
        daemon = self.daemon
        if daemon.gpu_free:
            daemon.version_without_models = self.gpu_free_version()
            daemon.health.replays, daemon.health.models = False, None
        else:
            daemon.draft_dir = self.check_model_directories()
        daemon.metrics, self.http = start_http(daemon, daemon.config.metrics)
        self.start_watchdog()
        daemon.engine = self.connect_database()
        if daemon.engine is None:
            return
        if not daemon.gpu_free:
            daemon.use_models(self.load_models())
        if daemon.stop.is_set():
            return
        daemon.jobs.start()
        daemon.intake.start()
        daemon.health.phase = "running"

    def shutdown(self) -> None:
        daemon = self.daemon
        daemon.health.phase = "stopping"
        daemon.stop.set()
        daemon.systemd.notify("STOPPING=1", "STATUS=stopping: finishing the running jobs")
        daemon.intake.stop()
        self.stop_jobs()
        if self.http is not None:
            self.http.stop()
        if daemon.metrics is not None:
            daemon.metrics.shutdown()
        if daemon.engine is not None:
            daemon.engine.dispose()
        log.info("specwatch daemon stopped")

    def stop_jobs(self) -> None:
        """No new runs; waits up to daemon.stop_timeout_s for the running ones, else abandons them."""
        timeout_s = self.daemon.config.daemon.stop_timeout_s
        if not self.daemon.jobs.stop(timeout_s):
            log.warning(
                "running jobs did not finish within daemon.stop_timeout_s = %gs: abandoning them "
                "(a replay round's claims expire after replay.claim_ttl_s; intake cursors are committed per batch)",
                timeout_s,
            )
            logging.shutdown()
            os._exit(0)

    # -- startup steps

    def check_model_directories(self) -> Path:
        """The live draft's directory; refuses to start, naming the path, when a model directory is missing."""
        config = self.daemon.config
        try:
            draft_dir = live_draft_dir(config)
            require_directory(config.models.target, "models.target")
            return require_directory(draft_dir, "models.draft")
        except ModelsUnavailable as error:
            raise StartupRefused(str(error)) from None

    def gpu_free_version(self) -> str:
        """GPU-free mode (no replay: replay.enabled is false or no target/draft is set): nothing to load;
        acceptance is what the serving engines report, findings are filed under the registry's live head."""
        config = self.daemon.config
        try:
            version = version_without_models(config)
        except ModelsUnavailable as error:
            raise StartupRefused(str(error)) from None
        why = "replay.enabled is false" if not config.replay.enabled else "models.target or models.draft is not set"
        log.info(
            "GPU-free mode (%s): acceptance is the serving engines' own per-request counts; findings are filed "
            "under %s; retraining needs models.target, models.draft and a device",
            why,
            version,
        )
        return version

    def start_watchdog(self) -> None:
        interval = self.daemon.systemd.watchdog_interval_s
        if interval is not None:
            threading.Thread(target=self.keep_watchdog, args=(interval,), name="watchdog", daemon=True).start()

    def keep_watchdog(self, interval_s: float) -> None:
        daemon = self.daemon
        withheld = False
        while not daemon.stop.wait(interval_s):
            problem = liveness_problem(daemon)
            if problem is None:
                daemon.systemd.notify("WATCHDOG=1")
            elif not withheld:
                log.error("watchdog pings withheld, systemd will restart the daemon: %s", problem)
            withheld = problem is not None

    def connect_database(self) -> Engine | None:
        """The migrated database, retried with backoff while unreachable; None when stopped meanwhile."""
        daemon = self.daemon
        while not daemon.stop.is_set():
            try:
                engine = open_database(daemon.config)
            except SecretUnavailable as error:
                raise StartupRefused(str(error)) from None
            except (DBAPIError, OSError) as error:
                if not retry_at_startup(error):
                    raise
                delay = daemon.health.database.failed(describe(error))
                log.warning("database unreachable (%s); retrying in %.0fs", describe(error), delay)
                daemon.systemd.notify(
                    f"STATUS=waiting for the database: {describe(error)}",
                    f"EXTEND_TIMEOUT_USEC={int((delay + 30) * 1e6)}",
                )
                daemon.stop.wait(delay)
                continue
            daemon.health.database.succeeded()
            return engine
        return None

    def load_models(self) -> LiveModels | None:
        """The live models on the configured device; when the GPU is gone, on the CPU or none at all
        (replay paused), as models.on_device_lost says."""
        daemon = self.daemon
        models_config = daemon.config.models
        daemon.systemd.notify(f"STATUS=loading models: {models_config.target}, {daemon.draft_dir}")
        problem = gpu_unavailable(models_config.device)
        if problem is not None:
            return daemon.device.lost(problem)
        try:
            models = load_live_models(models_config, daemon.draft_dir)
        except Exception as error:
            if is_device_lost(error):
                return daemon.device.lost(describe(error))
            if isinstance(error, ModelsUnavailable | DecoderError | OSError):
                raise StartupRefused(str(error)) from None
            raise
        daemon.health.models = None
        return models
