"""The daemon's replay loop only replays: evaluation and alert delivery run on the daemon's own jobs,
so its first round must neither evaluate nor send the outbox (it used to do both: a second
dispatcher at every start and every head swap). A plain `replay --follow` loop still does both."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from alerts.lifecycle import raise_findings
from monitor.base.config import Config, ModelsConfig
from monitor.base.db import AlertRecord, OutboxMessage
from monitor.evaluation.finding import Finding
from monitor.replay.live_models import LiveModels, load_live_models
from monitor.service.metrics import Metrics
from monitor.service.replay_loop import ReplayLoop

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def models_config(config: Config, reference_models: Path) -> Config:
    models = ModelsConfig(target=reference_models / "target", draft=reference_models / "drafts" / "eagle")
    return config.model_copy(update={"models": models})


def queue_firing_alert(config: Config, engine: Engine) -> None:
    """A firing threshold alert with its notification pending in the outbox."""
    finding = Finding("threshold", "lang=zh", "1h", "critical", "alpha 0.41 below 0.65", {"alpha": 0.41})
    start = datetime.now(UTC) - timedelta(minutes=5)
    raise_findings(config.alerts, engine, [finding], {"threshold"}, now=start)
    raise_findings(config.alerts, engine, [finding], {"threshold"}, now=start + timedelta(minutes=1))


def evaluated_and_sent(engine: Engine) -> tuple[bool, bool]:
    """(an evaluation ran: the alert it no longer finds started clearing, the outbox was sent)."""
    with Session(engine) as session:
        [alert] = session.scalars(select(AlertRecord))
        [message] = session.scalars(select(OutboxMessage))
        return alert.clear_since is not None, message.sent_at is not None


def daemon_loop(config: Config, engine: Engine, live: LiveModels) -> ReplayLoop:
    from monitor.service.daemon import Daemon

    daemon = Daemon(config, Path("config.toml"))
    daemon.engine, daemon.metrics = engine, Metrics([])
    return daemon.replay_loop_for(live)


def test_the_daemons_replay_loop_neither_evaluates_nor_dispatches(models_config: Config, engine: Engine) -> None:
    queue_firing_alert(models_config, engine)
    loop = daemon_loop(models_config, engine, load_live_models(models_config.models))
    loop.step()
    loop.step()
    assert evaluated_and_sent(engine) == (False, False)


def test_a_follow_loop_evaluates_and_dispatches_on_its_first_round(models_config: Config, engine: Engine) -> None:
    queue_firing_alert(models_config, engine)
    loop = ReplayLoop(models_config, engine, load_live_models(models_config.models), Metrics([]), evaluate=True)
    loop.step()
    assert evaluated_and_sent(engine) == (True, True)
