"""After a deploy, the new head is compared with the old one on the same replayed samples: a
regression rolls back (pointer, deploy hook, DeployRolledBack); a head that holds up is kept."""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from decoder import TargetModel, create_draft, load_draft, save_draft
from monitor.base.config import Config, DeployConfig, ModelsConfig, RetrainConfig, WatchConfig
from monitor.base.db import utcnow
from monitor.evaluation.health import deploy_rolled_back
from monitor.replay.replayer import Replayer, Versions
from retrain.pipeline import deploy
from retrain.registry import HeadRegistry
from retrain.watch import deploy_under_watch, watch_latest_deploy
from tests.retrain.conftest import ingest_served

HOOK = "import os, sys; open(sys.argv[1], 'a').write(os.environ['SPECWATCH_HEAD_VERSION'] + '\\n')"


@pytest.fixture
def watched(config: Config, reference_models: Path, tmp_path: Path) -> Config:
    hook = DeployConfig(command=[sys.executable, "-c", HOOK, str(tmp_path / "hook.log")], timeout_s=30)
    return config.model_copy(
        update={
            "models": ModelsConfig(target=reference_models / "target", draft=reference_models / "drafts" / "eagle"),
            "retrain": RetrainConfig(deploy=hook, watch=WatchConfig(window="6h", min_samples=20, tolerance=0.03)),
        }
    )


def replay(config: Config, engine: Engine, target: TargetModel, registry: HeadRegistry) -> None:
    version = registry.live_version()
    assert version is not None
    draft = load_draft(registry.draft_dir(version), target)
    Replayer(engine, target, draft, Versions(target.fingerprint[:16], version), config.replay).replay_all()


def deploy_head(config: Config, engine: Engine, registry: HeadRegistry, directory: Path, target: TargetModel) -> str:
    seed = registry.live_version()
    head = registry.register(directory, parent=seed, source="test")
    deploy(config, engine, registry, head.version, None, None, "test deploy", lambda: target)
    return head.version


def test_a_regression_rolls_back(
    watched: Config, engine: Engine, target: TargetModel, reference_models: Path, tmp_path: Path
) -> None:
    ingest_served(watched, engine, target, 40, {"en": 0.5, "code": 0.5}, seed=3)
    registry = HeadRegistry(watched.heads_dir)
    seed = registry.ensure_seed(reference_models / "drafts" / "eagle")
    replay(watched, engine, target, registry)
    untrained = save_draft(create_draft("eagle", target), tmp_path / "untrained")
    bad = deploy_head(watched, engine, registry, untrained, target)
    assert registry.live_version() == bad
    replay(watched, engine, target, registry)

    verdict = watch_latest_deploy(watched, engine)
    assert verdict is not None and verdict.state == "rolled_back", verdict
    assert verdict.gain is not None and verdict.gain < -0.03 and verdict.samples == 40
    assert registry.live_version() == seed.version and registry.get(bad).state == "rolled_back"
    assert (tmp_path / "hook.log").read_text().split() == [bad, seed.version], "hook ran for deploy and rollback"
    assert deploy_under_watch(engine) is None
    finding = deploy_rolled_back(engine, utcnow())
    assert finding is not None and finding.evidence["rolled_back"] == bad


def test_a_head_that_holds_up_is_kept_after_the_window(
    watched: Config, engine: Engine, target: TargetModel, reference_models: Path, tmp_path: Path
) -> None:
    ingest_served(watched, engine, target, 30, {"en": 1.0}, seed=4)
    registry = HeadRegistry(watched.heads_dir)
    registry.ensure_seed(reference_models / "drafts" / "eagle")
    replay(watched, engine, target, registry)
    same_weights = load_draft(reference_models / "drafts" / "eagle", target)
    relabelled = save_draft(same_weights, tmp_path / "relabelled", training={"note": "same weights, new version"})
    kept = deploy_head(watched, engine, registry, relabelled, target)
    replay(watched, engine, target, registry)

    waiting = watch_latest_deploy(watched, engine)
    assert waiting is not None and waiting.state == "waiting" and waiting.gain == pytest.approx(0.0, abs=1e-9)
    verdict = watch_latest_deploy(watched, engine, now=utcnow() + timedelta(hours=7))
    assert verdict is not None and verdict.state == "kept"
    assert registry.live_version() == kept and deploy_under_watch(engine) is None
