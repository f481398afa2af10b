"""The Daemon: the shared state (config, stop event, health, database, meters, the replay loop on the live
models) and the parts that act on it, composed as uvicorn composes Config, Server and lifespan."""

from __future__ import annotations

import threading
from pathlib import Path

from sqlalchemy import Engine

from monitor.base.config import Config
from monitor.replay.live_models import LiveModels
from monitor.service.daemon.device_watch import DeviceWatch
from monitor.service.daemon.head_watch import HeadWatch
from monitor.service.daemon.health import INTAKE_RETRY_MAX_S, Backoff, Health
from monitor.service.daemon.intake import Intake
from monitor.service.daemon.jobs import Jobs
from monitor.service.daemon.lifecycle import Lifecycle
from monitor.service.daemon.retrains import Retrains
from monitor.service.daemon.systemd import Systemd
from monitor.service.metrics import Metrics
from monitor.service.replay_loop import ReplayLoop


class Daemon:
    """What the parts share, and the parts: lifecycle (start, sd_notify, stop), jobs (the job table, the
    runner, stall tracking), device (GPU loss), heads (live head swaps), retrains, intake. The health and
    metrics server is started by lifecycle and reads this state."""

    def __init__(self, config: Config, config_path: Path, systemd: Systemd | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.systemd = systemd or Systemd()
        self.stop = threading.Event()
        self.health = Health(intake=Backoff(config.intake.follow.poll_interval_s, INTAKE_RETRY_MAX_S))
        self.engine: Engine | None = None
        self.metrics: Metrics | None = None
        self.loop: ReplayLoop | None = None  # replay on the live models; None while replay is paused
        self.draft_dir: Path | None = None  # the live head's directory, as loaded
        self.gpu_free = not config.replays  # no shadow replay: acceptance is the engines' own
        self.version_without_models: str | None = None  # the live head's name in GPU-free mode
        self.lifecycle = Lifecycle(self)
        self.jobs = Jobs(self)
        self.device = DeviceWatch(self)
        self.heads = HeadWatch(self)
        self.retrains = Retrains(self)
        self.intake = Intake(self)

    def run(self) -> int:
        """Starts everything, serves until SIGTERM/SIGINT, stops; 0 on a clean stop."""
        return self.lifecycle.run()

    def use_models(self, models: LiveModels | None) -> None:
        """Replay with these models from the next round on; None pauses replay."""
        self.loop = self.replay_loop_for(models) if models is not None else None

    def replay_loop_for(self, models: LiveModels) -> ReplayLoop:
        """A ReplayLoop that only replays: the daemon evaluates and dispatches on jobs of its own."""
        loop = ReplayLoop(self.config, self.db, models, self.meters, evaluate=False)
        self.meters.observe_live_draft(models.versions)
        return loop

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
        """The live head's version, also while replay is paused (no models loaded) and in GPU-free mode."""
        if self.version_without_models is not None:
            return self.version_without_models
        if self.loop is not None:
            return self.loop.models.versions.draft
        assert self.device.paused_version is not None, "replay runs, or device_lost paused it"
        return self.device.paused_version

    @property
    def replay_loop(self) -> ReplayLoop:
        assert self.loop is not None, "the models are loaded at startup"
        return self.loop
