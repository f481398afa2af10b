"""Device watch: the configured GPU is gone (at startup or mid-round) -> the live models on the CPU
(models.on_device_lost = cpu) or replay paused (pause); the ReplayDeviceLost alert fires either way, and
the replay job checks, with backoff, for the GPU's return."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from monitor.base.failures import describe, gpu_unavailable, is_device_lost
from monitor.base.stats import ALL_SEGMENTS
from monitor.evaluation.finding import CRITICAL, Finding
from monitor.replay.live_models import LiveModels, load_live_models
from monitor.service.daemon.health import Backoff
from retrain.registry import head_version

if TYPE_CHECKING:
    from monitor.service.daemon.core import Daemon

log = logging.getLogger("monitor.service.daemon")  # one logger for all the daemon's parts: operators filter on it

DEVICE_RETRY_FIRST_S, DEVICE_RETRY_MAX_S = 30.0, 600.0


class DeviceWatch:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.retry_backoff = Backoff(DEVICE_RETRY_FIRST_S, DEVICE_RETRY_MAX_S)
        self.paused_version: str | None = None  # the live head's version while replay is paused

    def lost(self, problem: str) -> LiveModels | None:
        """The GPU is gone: the live models on the CPU (on_device_lost = cpu), else None: replay pauses.
        Either way the ReplayDeviceLost alert fires; the replay job keeps checking for the GPU's return."""
        daemon = self.daemon
        health, models_config = daemon.health, daemon.config.models
        self.retry_backoff.failed(problem)
        if models_config.on_device_lost == "cpu":
            health.device = f"{problem}; replaying on the CPU (models.on_device_lost = cpu)"
            log.error("GPU unavailable (%s): replaying on the CPU until it is back", problem)
            on_cpu = models_config.model_copy(update={"device": "cpu"})
            models = load_live_models(on_cpu, daemon.draft_dir)
            health.models = None
            return models
        health.device = f"{problem}; replay paused until it is back (models.on_device_lost = pause)"
        log.error("GPU unavailable (%s): replay paused until it is back", problem)
        health.models = f"replay paused: {problem}"
        assert daemon.draft_dir is not None, "the live head is found at startup"
        self.paused_version = head_version(daemon.draft_dir)
        return None

    def retry(self) -> None:
        """After a device loss: back on the configured device once it answers again."""
        daemon = self.daemon
        if daemon.health.device is None or self.retry_backoff.waiting():
            return
        problem = gpu_unavailable(daemon.config.models.device)
        if problem is not None:
            self.retry_backoff.failed(problem)
            return
        try:
            models = load_live_models(daemon.config.models, daemon.draft_dir)
        except Exception as error:
            if not is_device_lost(error):
                raise
            self.retry_backoff.failed(describe(error))
            return
        self.retry_backoff.succeeded()
        daemon.health.device = daemon.health.models = None
        daemon.use_models(models)
        log.info("the GPU is back: replaying on %s again", daemon.config.models.device)

    def findings(self) -> list[Finding]:
        """The ReplayDeviceLost alert's finding while the GPU is gone."""
        problem = self.daemon.health.device
        return [Finding("device_lost", ALL_SEGMENTS, "now", CRITICAL, problem, {"problem": problem})] if problem else []
