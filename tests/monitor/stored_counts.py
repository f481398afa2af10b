"""Acceptance counts written straight into the database the way intake (live_results: the serving engine's own
per-request report) and replay (replay_results: specwatch's scored shadow replay) store them, for the tests of
what reads both sources side by side (status, report, metrics)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from decoder import AcceptCounts
from monitor.base.db import LiveResult, ReplayResult, Sample
from monitor.base.results import HISTOGRAM_ESTIMATE, PER_STEP, SCORED

WINDOW = 4
Steps = Sequence[tuple[int, int]]
"""verify steps as (drafted, accepted)"""
HIGH: Steps = [(4, 4), (4, 3), (4, 4)]  # alpha 11 / 12
LOW: Steps = [(4, 0), (4, 1), (4, 0)]  # alpha 1 / 4
NONE_ACCEPTED: Steps = [(4, 0), (4, 0), (4, 0)]  # alpha 0


def counts_of(steps: Steps) -> AcceptCounts:
    counts = AcceptCounts()
    for drafted, accepted in steps:
        counts.add_step(drafted, accepted)
    return counts


def sample_row(key: str, segment: str, occurred_at: datetime) -> Sample:
    return Sample(
        sample_key=key,
        received_at=occurred_at + timedelta(seconds=1),
        occurred_at=occurred_at,
        segment=segment,
        language=segment.removeprefix("lang="),
        source="gateway",
        model="target",
        temperature=0.0,
        messages=[{"role": "user", "content": f"request {key}"}],
        completion=f"answer {key}",
        attributes={},
        redactions={},
        prompt_chars=12,
        completion_chars=12,
    )


def shadow_row(sample: Sample, steps: Steps, draft_version: str) -> ReplayResult:
    counts = counts_of(steps)
    return ReplayResult(
        sample_id=sample.id,
        segment=sample.segment,
        occurred_at=sample.occurred_at,
        replayed_at=sample.occurred_at + timedelta(seconds=5),
        draft_version=draft_version,
        target_version="target",
        mode=SCORED,
        window=WINDOW,
        temperature=0.0,
        accepted=counts.accepted,
        rejected=counts.rejected,
        drafted=counts.drafted,
        steps=counts.steps,
        counts=counts.to_dict(),
        outcomes=[],
        prompt_tokens=8,
        completion_tokens=int(counts.accepted + counts.steps),
        truncated_tokens=0,
        seconds=0.01,
        worker="test",
        token_source="ids",
        retokenized_equal=True,
    )


def live_row(key: str, segment: str, occurred_at: datetime, steps: Steps, basis: str | None) -> LiveResult:
    """The engine's report; `basis` None: R unknown (the engine gave neither per-step arrays nor k)."""
    counts = counts_of(steps)
    return LiveResult(
        sample_key=key,
        received_at=occurred_at + timedelta(seconds=1),
        occurred_at=occurred_at,
        segment=segment,
        language=segment.removeprefix("lang="),
        model="target",
        engine="vllm",
        method="eagle",
        num_spec_tokens=WINDOW if basis else None,
        steps=int(counts.steps),
        drafted=int(counts.drafted),
        accepted=int(counts.accepted),
        rejected=int(counts.rejected) if basis else None,
        rejected_basis=basis,
        counts={
            "accept_histogram": list(counts.accept_histogram),
            "accepted_per_position": list(counts.accepted_per_position),
        },
    )


def store_traffic(
    engine: Engine,
    segment: str,
    count: int,
    *,
    now: datetime,
    shadow: Steps | None,
    live: Steps | None,
    draft_version: str = "draft-a",
    basis: str | None = PER_STEP,
) -> None:
    """`count` samples of `segment` in the last half hour, each with a shadow result and an engine report
    (linked to the sample, so they pair) where their steps are given."""
    with Session(engine) as session, session.begin():
        for index in range(count):
            key = f"{segment}-{index}"
            occurred_at = now - timedelta(minutes=30) + timedelta(seconds=10 * index)
            sample = sample_row(key, segment, occurred_at)
            session.add(sample)
            session.flush()
            if shadow is not None:
                session.add(shadow_row(sample, shadow, draft_version))
            if live is not None:
                report = live_row(key, segment, occurred_at, live, basis)
                report.sample_id = sample.id
                session.add(report)


def store_engine_reports(
    engine: Engine, segment: str, count: int, *, now: datetime, steps: Steps, basis: str | None = HISTOGRAM_ESTIMATE
) -> None:
    """`count` engine reports of requests sampled out of replay (no sample, so they never pair)."""
    with Session(engine) as session, session.begin():
        for index in range(count):
            occurred_at = now - timedelta(minutes=20) + timedelta(seconds=10 * index)
            session.add(live_row(f"{segment}-unsampled-{basis}-{index}", segment, occurred_at, steps, basis))
