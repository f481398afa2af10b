"""Health detectors on a real database: replay that falls behind, intake that quarantines a lot."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import Engine

from monitor.base.config import Config, IntakeConfig, ModelsConfig, ReplayConfig, SamplingConfig, Secret
from monitor.base.db import utcnow
from monitor.evaluation.health import health_findings, intake_errors, replay_stalled
from monitor.intake.pipeline import IntakePipeline, RawRecord
from monitor.service.demo_traffic import traffic

DRAFT = "draft-v1"


def ingest(config: Config, engine: Engine, good: int, bad: int) -> None:
    records = [RawRecord(position=f"good {i}", value=value) for i, value in enumerate(traffic(good, {"en": 1.0}))]
    records += [RawRecord(position=f"bad {i}", data=b"{not json") for i in range(bad)]
    IntakePipeline(config, engine, Secret("salt")).ingest("test", records)


def test_replay_stalled_fires_only_when_the_oldest_sample_waited_too_long(config: Config, engine: Engine) -> None:
    config = config.model_copy(update={"intake": IntakeConfig(sampling=SamplingConfig(rate=1.0))})
    ingest(config, engine, good=5, bad=0)
    now = utcnow()
    assert replay_stalled(engine, DRAFT, stall_after_s=1800, now=now) is None
    finding = replay_stalled(engine, DRAFT, stall_after_s=1800, now=now + timedelta(minutes=31))
    assert finding is not None and finding.detector == "replay_stalled"
    assert finding.evidence["pending"] == 5 and finding.evidence["oldest_wait_s"] > 1800


def test_intake_errors_fire_above_the_hourly_limit(config: Config, engine: Engine) -> None:
    ingest(config, engine, good=0, bad=12)
    now = utcnow()
    assert intake_errors(engine, per_hour_limit=12, now=now) is None
    finding = intake_errors(engine, per_hour_limit=10, now=now)
    assert finding is not None and finding.evidence == {"quarantined": 12, "limit": 10}
    assert intake_errors(engine, per_hour_limit=10, now=now + timedelta(hours=2)) is None, "an hour's window"


def test_health_findings_use_the_configured_limits(config: Config, engine: Engine) -> None:
    config = config.model_copy(
        update={
            "intake": IntakeConfig(sampling=SamplingConfig(rate=1.0), quarantined_per_hour_alert=3),
            "replay": ReplayConfig(stall_after_s=60),
            "models": ModelsConfig(target=Path("target"), draft=Path("draft")),
        }
    )
    ingest(config, engine, good=2, bad=4)
    found = health_findings(config, engine, DRAFT, utcnow() + timedelta(minutes=2))
    assert sorted(f.detector for f in found) == ["intake_errors", "replay_stalled"]
    gpu_free = config.model_copy(update={"replay": ReplayConfig(enabled=False, stall_after_s=60)})
    found = health_findings(gpu_free, engine, DRAFT, utcnow() + timedelta(minutes=2))
    assert [f.detector for f in found] == ["intake_errors"], "nothing replays in GPU-free mode: nothing stalls"


def test_retrain_failed_until_a_later_job_finishes(config: Config, engine: Engine, tmp_path: Path) -> None:
    from monitor.evaluation.health import retrain_failed
    from retrain.jobs import create_job, finish

    assert retrain_failed(engine) is None
    first = create_job(engine, trigger="quarterly", reason="test", kind="eagle", work_root=tmp_path)
    finish(engine, first.id, "failed", error="CorpusError: no samples in the last 30 days")
    finding = retrain_failed(engine)
    assert finding is not None and finding.evidence["job"] == first.id and "no samples" in finding.summary
    second = create_job(engine, trigger="manual", reason="test", kind="eagle", work_root=tmp_path)
    assert retrain_failed(engine) is not None, "a queued job does not clear it"
    finish(engine, second.id, "refused")
    assert retrain_failed(engine) is None
