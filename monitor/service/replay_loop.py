"""The replay loop: replay what is pending, evaluate every `replay.evaluate_interval_s`, export metrics.

specwatch replay --follow     # until SIGTERM/SIGINT; /metrics on metrics.host:metrics.port

Whether a loop evaluates is its constructor's `evaluate` argument: `replay --follow` builds one that does;
the daemon builds one that does not (evaluation and alert delivery run on jobs of their own there).
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy import Engine

from alerts.outbox import dispatch
from monitor.base.config import Config
from monitor.base.results import replay_backlog
from monitor.evaluation.evaluate import evaluate
from monitor.replay.live_models import LiveModels
from monitor.replay.replayer import Replayer
from monitor.service.metrics import Metrics, publish_evaluation

log = logging.getLogger(__name__)


class ReplayLoop:
    """Replays pending samples round after round; with `evaluate`, also evaluates and sends alerts when due."""

    def __init__(self, config: Config, engine: Engine, models: LiveModels, metrics: Metrics, *, evaluate: bool) -> None:
        self.config = config
        self.engine = engine
        self.models = models
        self.metrics = metrics
        self.replayer = Replayer(engine, models.target, models.draft, models.versions, config.replay)
        self.evaluates = evaluate
        self._last_evaluation = float("-inf")

    def step(self) -> int:
        """One round: replay, update metrics, evaluate when due; returns the samples claimed."""
        report = self.replayer.replay_once()
        self.metrics.record_replay(report.rows, report)
        versions = self.models.versions
        self.metrics.observe_backlog(*replay_backlog(self.engine, versions.draft, versions.target))
        if self.evaluation_due():
            evaluation = evaluate(self.config, self.engine, self.models.versions.draft)
            publish_evaluation(self.metrics, self.config, self.engine, evaluation)
            dispatch(self.config.alerts, self.engine)
            self._last_evaluation = time.monotonic()
        return report.claimed

    def evaluation_due(self) -> bool:
        """Never for a loop built without `evaluate`; else on the first round and then every
        `replay.evaluate_interval_s`."""
        if not self.evaluates:
            return False
        return time.monotonic() - self._last_evaluation >= self.config.replay.evaluate_interval_s

    def run(self, stop: threading.Event) -> None:
        self.metrics.observe_live_draft(self.models.versions)
        while not stop.is_set():
            try:
                claimed = self.step()
            except Exception:
                log.exception("replay round failed; retrying in %.0fs", self.config.replay.interval_s)
                claimed = 0
            if not claimed:
                stop.wait(self.config.replay.interval_s)
