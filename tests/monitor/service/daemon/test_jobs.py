"""The daemon's evaluate job on a real database: what it leaves on the metrics (statistics with each group's
threshold, the firing alerts per rule, the replay backlog), also while replay is paused and no replay round
measures the backlog."""

from __future__ import annotations

from pathlib import Path

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from sqlalchemy import Engine

from monitor.base.config import Config, DriftConfig, ModelsConfig
from monitor.base.db import utcnow
from monitor.service.daemon import Daemon
from monitor.service.daemon.systemd import Systemd
from monitor.service.metrics import Metrics
from tests.monitor.service.test_metrics import values
from tests.monitor.stored_counts import LOW, store_traffic

ZH_24H = (("group", "rollup"), ("segment", "lang=zh"), ("source", "shadow"), ("window", "24h"))


def test_the_evaluate_job_publishes_statistics_alerts_and_the_backlog_while_replay_is_paused(
    config: Config, engine: Engine, tmp_path: Path
) -> None:
    models = ModelsConfig(target=tmp_path / "target", draft=tmp_path / "draft", on_device_lost="pause")
    drift = DriftConfig(threshold_overrides={"lang=zh": 0.7})
    daemon = Daemon(config.model_copy(update={"models": models, "drift": drift}), tmp_path / "config.toml", Systemd({}))
    reader = InMemoryMetricReader()
    daemon.engine, daemon.metrics = engine, Metrics([reader])
    daemon.device.paused_version = "draft-a"  # as device watch leaves replay paused (models.on_device_lost = pause)
    daemon.health.device = "CUDA error: unspecified launch failure; replay paused until it is back"
    now = utcnow()
    store_traffic(engine, "lang=zh", 30, now=now, shadow=LOW, live=None)  # alpha 1/4 over 30 samples
    store_traffic(engine, "lang=en", 4, now=now, shadow=None, live=None)  # waiting for replay for 30 minutes

    daemon.jobs.evaluate_and_alert()

    assert values(reader, "specwatch_alpha")[ZH_24H] == pytest.approx(0.25)
    assert values(reader, "specwatch_alpha_threshold")[ZH_24H] == 0.7
    assert values(reader, "specwatch_samples")[ZH_24H] == 30
    firing = {dict(key)["alertname"]: value for key, value in values(reader, "specwatch_alerts_firing").items()}
    assert firing["ReplayDeviceLost"] == 1 and firing["AcceptanceBelowThreshold"] >= 1
    assert firing["IntakePaused"] == 0
    assert values(reader, "specwatch_replay_pending_samples") == {(): 4}
    [lag] = values(reader, "specwatch_replay_lag_seconds").values()
    assert 29 * 60 < lag < 31 * 60
