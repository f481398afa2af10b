"""After a deploy, the new head is compared with the old one on the same replayed samples: a
regression rolls back (pointer, deploy hook, DeployRolledBack); a head that holds up is kept."""

from __future__ import annotations

import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from decoder import Draft, TargetModel, create_draft, load_draft, save_draft
from monitor.base.config import Config, DeployConfig, ModelsConfig, RetrainConfig, Secret, WatchConfig
from monitor.base.db import utcnow
from monitor.evaluation.divergence import SINCE_HEAD_CHANGE
from monitor.evaluation.evaluate import evaluate
from monitor.evaluation.health import deploy_rolled_back
from monitor.intake.pipeline import IntakePipeline, RawRecord
from monitor.replay.replayer import Replayer, Versions
from monitor.service.demo_traffic import traffic
from retrain.pipeline import deploy
from retrain.registry import HeadRegistry
from retrain.watch import deploy_under_watch, watch_latest_deploy
from tests.monitor.engine_side import served_by_engine
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


def engine_traffic(
    config: Config, engine: Engine, target: TargetModel, head: Draft, *, start: datetime, count: int, seed: int
) -> None:
    """`count` requests answered by an engine serving `head`, with its own per-request counts, taken in."""
    records = traffic(count, {"en": 1.0}, seed=seed, start=start, spacing_s=60, first_index=seed * 1000)
    logged = served_by_engine(records, target, head, window=config.replay.window, max_new_tokens=24)
    raws = [RawRecord(position=f"line {i}", value=item) for i, item in enumerate(logged)]
    IntakePipeline(config, engine, Secret("salt")).ingest("gateway", raws)


def test_a_head_the_engine_did_not_load_is_not_kept_and_fires_divergence_until_it_does(
    watched: Config, engine: Engine, target: TargetModel, reference_models: Path, tmp_path: Path
) -> None:
    registry = HeadRegistry(watched.heads_dir)
    untrained = create_draft("eagle", target)
    seed = registry.ensure_seed(save_draft(untrained, tmp_path / "untrained"))
    before = utcnow() - timedelta(hours=1)
    engine_traffic(watched, engine, target, untrained, start=before, count=20, seed=1)
    replay(watched, engine, target, registry)
    trained = deploy_head(watched, engine, registry, reference_models / "drafts" / "eagle", target)
    deployed_at = utcnow()
    # the engine keeps serving the old head (its reload did not happen)
    engine_traffic(watched, engine, target, untrained, start=deployed_at + timedelta(seconds=1), count=20, seed=2)
    replay(watched, engine, target, registry)

    later = deployed_at + timedelta(hours=7)
    verdict = watch_latest_deploy(watched, engine, now=later)
    assert verdict is not None and verdict.state == "waiting", verdict
    assert f"the engine does not serve {trained}" in verdict.summary and verdict.gain is not None and verdict.gain > 0
    assert registry.live_version() == trained, "the registry's head is fine: nothing is rolled back"
    judged = watched.model_copy(update={"drift": watched.drift.model_copy(update={"divergence_min_pairs": 20})})
    evaluation = evaluate(judged, engine, trained, now=deployed_at + timedelta(minutes=30))
    [since_deploy] = [f for f in evaluation.findings if f.detector == "divergence" and f.window == SINCE_HEAD_CHANGE]
    assert since_deploy.segment == "*" and since_deploy.evidence["difference"] < -0.05

    # the engine reloads: its newest requests are served by the deployed head
    engine_traffic(watched, engine, target, registry_head(registry, trained, target), start=later, count=40, seed=3)
    replay(watched, engine, target, registry)
    verdict = watch_latest_deploy(watched, engine, now=later + timedelta(hours=1))
    assert verdict is not None and verdict.state == "kept", verdict
    assert registry.get(seed.version).version == seed.version


def registry_head(registry: HeadRegistry, version: str, target: TargetModel) -> Draft:
    return load_draft(registry.draft_dir(version), target)
