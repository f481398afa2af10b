"""Retrain fixtures: the tiny reference models loaded once, and traffic the target served."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from decoder import TargetModel, load_target
from monitor.base.config import Config, IntakeConfig, SamplingConfig, Secret
from monitor.base.db import utcnow
from monitor.intake.pipeline import IntakePipeline, RawRecord
from monitor.service.demo_traffic import served, traffic


@pytest.fixture(scope="session")
def target(reference_models: Path) -> TargetModel:
    return load_target(reference_models / "target", device="cpu")


def ingest_served(
    config: Config,
    engine: Engine,
    target: TargetModel,
    count: int,
    mix: dict[str, float],
    *,
    seed: int,
    hours: float = 12.0,
    max_new_tokens: int = 48,
) -> None:
    """`count` records the target answered, spread over the last `hours`, stored by the real intake."""
    start = utcnow() - timedelta(hours=hours)
    records = traffic(count, mix, seed=seed, start=start, spacing_s=hours * 3600 / count, first_index=seed * 100_000)
    answered = served(records, target, max_new_tokens=max_new_tokens)
    intake = config.intake.model_copy(update={"sampling": SamplingConfig(rate=1.0), "segment_keys": []})
    everything = config.model_copy(update={"intake": IntakeConfig.model_validate(intake.model_dump())})
    raw = [RawRecord(position=f"item {i}", value=value) for i, value in enumerate(answered)]
    IntakePipeline(everything, engine, Secret("salt")).ingest("test", raw)
