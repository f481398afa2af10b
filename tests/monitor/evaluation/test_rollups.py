"""The shift the product exists for, at production segment counts: Chinese traffic sinks acceptance across
eight tenants in four regions. No full segment has enough samples to say so; the `lang=zh` roll-up does,
fires, routes and silences like a segment alert (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from alerts.queries import add_silence
from monitor.base.config import Config
from monitor.base.db import AlertRecord, OutboxMessage
from monitor.evaluation.evaluate import evaluate
from tests.monitor.stored_counts import sample_row, shadow_row

TENANTS = [f"h:{i:016x}" for i in range(8)]
REGIONS = ["eu", "us", "sg", "jp"]


def store_requests(engine: Engine, rng: np.random.Generator, now: datetime) -> None:
    """Per (tenant, region) six Chinese requests at acceptance ~0.45 and six English ones at ~0.8, over the
    last hour: 64 segments of 6 samples, under drift.min_samples (30) each."""
    index = 0
    with Session(engine) as session, session.begin():
        for tenant in TENANTS:
            for region in REGIONS:
                for lang, acceptance in (("zh", 0.45), ("en", 0.8)):
                    for _ in range(6):
                        occurred_at = now - timedelta(minutes=int(rng.integers(1, 55)), seconds=index)
                        sample = sample_row(f"r{index}", f"tenant={tenant}/region={region}/lang={lang}", occurred_at)
                        sample.language = lang
                        session.add(sample)
                        session.flush()
                        steps = [(4, min(4, int(a))) for a in rng.geometric(1 - acceptance, size=20) - 1]
                        session.add(shadow_row(sample, steps, "draft-a"))
                        index += 1


def outbox_receivers(engine: Engine) -> dict[str, str]:
    with Session(engine) as session:
        return {m.payload["group_labels"]["segment"]: m.receiver for m in session.scalars(select(OutboxMessage))}


def firing(engine: Engine) -> set[tuple[str, str]]:
    with Session(engine) as session:
        rows = session.scalars(select(AlertRecord).where(AlertRecord.status == "firing"))
        return {(row.alertname, row.labels["segment"]) for row in rows}


def rollup_config(config: Config) -> Config:
    return config.model_validate(
        {
            **config.model_dump(),
            "intake": {"segment_keys": ["tenant", "region"]},
            "stats": {"windows": ["1h"], "resamples": 200, "rollups": [["region", "lang"]]},
            "alerts": {
                "receivers": {"console": {"type": "console"}, "zh-oncall": {"type": "console"}},
                "routes": [{"matchers": ["segment=lang=zh"], "receiver": "zh-oncall"}],
            },
        }
    )


def test_a_language_shift_across_tenants_fires_on_the_language_roll_up(config: Config, engine: Engine) -> None:
    config = rollup_config(config)
    now = datetime.now(UTC)
    store_requests(engine, np.random.default_rng(9), now)

    evaluation = evaluate(config, engine, "draft-a", now=now)

    by_name = {item.segment: item for item in evaluation.stats}
    assert by_name["lang=zh"].kind == "rollup" and by_name["lang=zh"].samples == 8 * 4 * 6
    assert max(item.samples for item in evaluation.stats if item.kind == "segment") == 6
    threshold = {f.segment for f in evaluation.findings if f.detector == "threshold"}
    assert "lang=zh" in threshold
    assert {f"region={region}/lang=zh" for region in REGIONS} <= threshold  # 48 samples each
    assert not any(f.segment.startswith("tenant=") or "lang=en" in f.segment for f in evaluation.findings)
    zh = next(f for f in evaluation.findings if f.segment == "lang=zh" and f.detector == "threshold")
    assert (
        zh.evidence["tests"] >= len([s for s in evaluation.stats if s.samples >= 30]) and zh.evidence["q_value"] < 0.05
    )
    assert ("AcceptanceBelowThreshold", "lang=zh") in firing(engine)

    evaluate(config, engine, "draft-a", now=now + timedelta(minutes=1))  # past group_wait: notifications queue
    receivers = outbox_receivers(engine)
    assert receivers["lang=zh"] == "zh-oncall"  # the route addresses the roll-up by name
    assert receivers["region=eu/lang=zh"] == "console"


def test_a_silence_on_the_roll_up_mutes_it(config: Config, engine: Engine) -> None:
    config = rollup_config(config)
    add_silence(engine, ["segment=~.*lang=zh"], datetime.now(UTC) + timedelta(hours=2), "known: zh rollout", "test")
    now = datetime.now(UTC)  # silences start at the wall clock: evaluate after it
    store_requests(engine, np.random.default_rng(9), now)

    evaluate(config, engine, "draft-a", now=now)
    evaluate(config, engine, "draft-a", now=now + timedelta(minutes=1))

    assert ("AcceptanceBelowThreshold", "lang=zh") in firing(engine)  # it fires, silenced: no message
    assert outbox_receivers(engine) == {}
