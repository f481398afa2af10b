"""The queries several layers read: scored replay results, deploys, the replay backlog, the cost ratio.

    results = load_results(engine, draft_version, since)    # scored results of one head, oldest first
    everything = load_scored(engine, since)                 # every head's scored results
    deploys(engine)                                         # each draft version and when it went live
    replay_backlog(engine, draft_version)                   # (pending samples, seconds the oldest waited)

Replay stores results in two modes: SCORED (teacher-forced over the logged completion, every sample)
and EXACT (the verify loop run for real, a share of them, with a measured speedup).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, exists, func, select
from sqlalchemy.orm import Session

from decoder.metrics import AcceptCounts
from monitor.base.db import ReplayResult, Sample, as_utc, utcnow
from monitor.base.stats import SampleResult

SCORED, EXACT = "scored", "exact"  # replay modes, as stored in replay_results.mode


def load_results(engine: Engine, draft_version: str, since: datetime) -> list[SampleResult]:
    """Scored results of one draft version for traffic since `since`, oldest first."""
    query = (
        select(ReplayResult)
        .where(
            ReplayResult.draft_version == draft_version,
            ReplayResult.mode == SCORED,
            ReplayResult.skipped.is_(None),
            ReplayResult.occurred_at > since,
        )
        .order_by(ReplayResult.occurred_at, ReplayResult.id)
    )
    with Session(engine) as session:
        return [sample_result(row) for row in session.scalars(query)]


def sample_result(row: ReplayResult) -> SampleResult:
    """A stored result as the statistics read it."""
    return SampleResult(
        sample_id=row.sample_id,
        segment=row.segment,
        occurred_at=row.occurred_at,
        counts=AcceptCounts.from_dict(row.counts),
        completion_tokens=row.completion_tokens,
        draft_version=row.draft_version,
        token_source=row.token_source,
        retokenized_equal=row.retokenized_equal,
    )


def measured_cost_ratio(engine: Engine, draft_version: str, window_k: int) -> float | None:
    """Draft/target forward cost implied by exact replays: speedup = tau / (1 + k c) solved for c, with tau the
    emitted tokens per verify step, (A + S - E) / S (counts stored before E was recorded read E = 0)."""
    query = select(ReplayResult.counts, ReplayResult.speedup).where(
        ReplayResult.draft_version == draft_version, ReplayResult.mode == EXACT, ReplayResult.speedup.is_not(None)
    )
    with Session(engine) as session:
        ratios = []
        for counts, speedup in session.execute(query):
            tau = AcceptCounts.from_dict(counts).tau
            if tau is not None and speedup:
                ratios.append(max(0.0, (tau / speedup - 1.0) / window_k))
    return sum(ratios) / len(ratios) if ratios else None


def load_scored(engine: Engine, since: datetime) -> list[SampleResult]:
    """Scored, not skipped results of every draft version for traffic since `since`, oldest first."""
    query = (
        select(ReplayResult)
        .where(ReplayResult.mode == SCORED, ReplayResult.skipped.is_(None), ReplayResult.occurred_at > since)
        .order_by(ReplayResult.occurred_at, ReplayResult.id)
    )
    with Session(engine) as session:
        return [sample_result(row) for row in session.scalars(query)]


def deploys(engine: Engine) -> list[Deploy]:
    """Every draft version in replay_results with its first replay time, oldest first. The replayer works
    through the backlog oldest-first, so a version's first replay, not its oldest traffic, dates it."""
    first = func.min(ReplayResult.replayed_at)
    query = (
        select(ReplayResult.draft_version, first, func.count())
        .where(ReplayResult.mode == SCORED)
        .group_by(ReplayResult.draft_version)
        .order_by(first)
    )
    with Session(engine) as session:
        return [Deploy(version, at, count) for version, at, count in session.execute(query)]


@dataclass(frozen=True)
class Deploy:
    """A draft version and when it went live: the first time any sample was replayed against it."""

    draft_version: str
    at: datetime
    results: int


def replay_backlog(
    engine: Engine, draft_version: str, target_version: str | None = None, now: datetime | None = None
) -> tuple[int, float]:
    """(samples without a scored result for the draft version (and target version, when given),
    seconds the oldest of them has waited since it was received); (0, 0.0) when nothing is pending."""
    replayed = exists().where(
        ReplayResult.sample_id == Sample.id,
        ReplayResult.draft_version == draft_version,
        ReplayResult.mode == SCORED,
    )
    if target_version is not None:
        replayed = replayed.where(ReplayResult.target_version == target_version)
    query = select(func.count(), func.min(Sample.received_at)).select_from(Sample).where(~replayed)
    with Session(engine) as session:
        pending, oldest = session.execute(query).one()
    if not pending or oldest is None:
        return 0, 0.0
    return int(pending), max(0.0, ((now or utcnow()) - as_utc(oldest)).total_seconds())
