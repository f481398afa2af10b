"""Replay claims: which samples a replay worker takes next, and its leases on them.

    pending   samples with no scored result for the live (draft, target) versions
    claim     oldest first inside a segment, the segments taking turns; one lease per sample
              (replay_claims) that expires after `replay.claim_ttl_s`, so a dead worker's samples
              are claimed again
    release   the leases go in the transaction that stores the results (Replayer._store)

The lease insert is the guard on every backend: it inserts a lease or takes over an expired one
(ON CONFLICT ... WHERE expired), and only the rows it wrote are the worker's.

On PostgreSQL several workers claim at once, and a claim is a work-queue take, one short
transaction per attempt:

    rank     the first unleased, unreplayed samples in turn order, four times as many as wanted
    lock     FOR NO KEY UPDATE SKIP LOCKED: rows another worker is claiming right now are passed over
             (NO KEY: the key-share locks of foreign-key checks, e.g. a result insert, do not count)
    lease    the locked rows, then drop any whose result another worker committed meanwhile; commit

An attempt that comes back short (candidates held or leased by others) is followed by another with a
wider candidate set, after a few ms when nothing at all could be locked, so claims come back full-size
while enough samples are unclaimed. The lock and the check after the lease rely on each statement
seeing what other workers committed before it: READ COMMITTED, PostgreSQL's default. SQLite (one
worker, no row locks) ranks and leases in one transaction.

Most of a claim's time is finding the unreplayed samples (an anti-join of every sample against the
results). A LATERAL per-segment LIMIT was measured instead of the rank: far cheaper while most samples
are pending, slower once most are replayed and very slow on tables PostgreSQL has not analyzed (README,
"Replay workers").
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, Engine, and_, any_, delete, exists, func, literal, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from monitor.base.db import ReplayClaim, ReplayResult, Sample, utcnow
from monitor.base.results import SCORED

IDS_PER_STATEMENT = 10_000  # PostgreSQL takes at most 65,535 bind parameters in one statement
CANDIDATES_PER_WANTED = 4
"""samples ranked per sample a claim wants, doubled (up to 64) after each attempt that found too few
unlocked: the spare ones stand in for rows other workers hold locked (a top-N sort: more cost little)"""
CLAIM_ATTEMPTS = 50
RETRY_AFTER_S = 0.005
"""wait before trying again when every candidate was held by another worker mid-claim (a few ms)"""


@dataclass(frozen=True)
class Versions:
    """What a result was measured against: the target's and the draft's fingerprints."""

    target: str
    draft: str


class ClaimQueue:
    """One worker's view of the replay backlog for one (draft, target) version pair."""

    def __init__(self, engine: Engine, draft_version: str, target_version: str, ttl_s: float, worker: str) -> None:
        self.engine = engine
        self.draft_version = draft_version
        self.target_version = target_version
        self.ttl_s = ttl_s
        self.worker = worker

    def pending(self) -> int:
        """Samples with no scored result for these versions (the replay backlog), leased or not."""
        with Session(self.engine) as session:
            return session.scalar(select(func.count()).select_from(Sample).where(~self._replayed())) or 0

    def claim(self, limit: int) -> list[int]:
        """Lease up to `limit` unreplayed, unleased samples: oldest first, taking turns across segments."""
        if self.engine.dialect.name == "postgresql":
            return self._claim_skipping_locked(limit)
        return self._claim_by_rank(limit)

    def release(self, session: Session, sample_ids: Sequence[int]) -> None:
        """Delete this worker's leases on `sample_ids`, in the caller's transaction."""
        for chunk in id_chunks(list(sample_ids)):
            session.execute(
                delete(ReplayClaim).where(
                    and_(
                        ReplayClaim.sample_id.in_(chunk),
                        ReplayClaim.draft_version == self.draft_version,
                        ReplayClaim.worker == self.worker,
                    )
                )
            )

    def _replayed(self) -> Any:
        return exists().where(
            ReplayResult.sample_id == Sample.id,
            ReplayResult.draft_version == self.draft_version,
            ReplayResult.target_version == self.target_version,
            ReplayResult.mode == SCORED,
        )

    def _leased(self, now: datetime) -> Any:
        return exists().where(
            ReplayClaim.sample_id == Sample.id,
            ReplayClaim.draft_version == self.draft_version,
            ReplayClaim.expires_at > now,
        )

    def _first_in_turn(self, count: int, now: datetime) -> Any:
        """The first `count` unleased, unreplayed samples: segments take turns (each segment's oldest is
        turn 1, its next turn 2, ...), the oldest first within a turn. Only the first `count` turns of a
        segment can be among them, and the bound on the rank lets PostgreSQL stop ranking a segment there."""
        turn = func.row_number().over(partition_by=Sample.segment, order_by=(Sample.occurred_at, Sample.id))
        ranked = (
            select(Sample.id, turn.label("turn"), Sample.occurred_at)
            .where(~self._replayed(), ~self._leased(now))
            .subquery()
        )
        return (
            select(ranked.c.id)
            .where(ranked.c.turn <= count)
            .order_by(ranked.c.turn, ranked.c.occurred_at, ranked.c.id)
            .limit(count)
        )

    def _claim_by_rank(self, limit: int) -> list[int]:
        """Rank and lease in one transaction: for one worker (concurrent ones would race for the same rows)."""
        now = utcnow()
        with Session(self.engine) as session, session.begin():
            return self._lease(session, list(session.scalars(self._first_in_turn(limit, now))), now)

    def _claim_skipping_locked(self, limit: int) -> list[int]:
        taken: list[int] = []
        spread = CANDIDATES_PER_WANTED
        for _ in range(CLAIM_ATTEMPTS):
            wanted = limit - len(taken)
            with Session(self.engine) as session, session.begin():
                now = utcnow()
                candidates = list(session.scalars(self._first_in_turn(spread * wanted, now)))
                if not candidates:
                    break
                locked = self._lock(session, candidates, wanted, now)
                taken += self._without_results(session, self._lease(session, locked, now))
            if len(taken) >= limit:
                break
            spread = min(2 * spread, 64)
            if not locked:
                time.sleep(RETRY_AFTER_S)  # their leases show once they commit
        return taken

    def _lock(self, session: Session, candidates: list[int], wanted: int, now: datetime) -> list[int]:
        """Lock the first `wanted` candidates no other transaction holds and no lease committed since the
        rank covers; rows other workers are claiming are skipped, not waited for. (A result committed since
        is caught after the lease: an anti-join against the results here is planned badly on stale
        statistics, and is not needed.)"""
        order = (
            func.unnest(literal(candidates, postgresql.ARRAY(BigInteger)))
            .table_valued("id", with_ordinality="position")
            .render_derived("candidate")
        )
        query = (
            select(Sample.id)
            .join(order, order.c.id == Sample.id)
            .where(~self._leased(now))
            .order_by(order.c.position)
            .limit(wanted)
            .with_for_update(of=Sample, skip_locked=True, key_share=True)
        )
        return list(session.scalars(query))

    def _lease(self, session: Session, ids: list[int], now: datetime) -> list[int]:
        """Insert or take over expired leases; only the rows this statement wrote are ours."""
        if not ids:
            return []
        expires = now + timedelta(seconds=self.ttl_s)
        rows = [
            {"sample_id": sample_id, "draft_version": self.draft_version, "worker": self.worker, "expires_at": expires}
            for sample_id in ids
        ]
        insert = postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert
        statement = insert(ReplayClaim)
        lease_or_take_over = statement.on_conflict_do_update(
            index_elements=["sample_id", "draft_version"],
            set_={"worker": statement.excluded.worker, "expires_at": statement.excluded.expires_at},
            where=ReplayClaim.expires_at <= now,
        ).returning(ReplayClaim.sample_id)
        return [row[0] for row in session.execute(lease_or_take_over, rows)]

    def _without_results(self, session: Session, leased: list[int]) -> list[int]:
        """Drop (and release) leases on samples whose result another worker committed after this claim
        looked: it stored the result and released its lease in one transaction, so a lease this claim
        could insert means that result is visible now."""
        if not leased:
            return []
        stored = set(
            session.scalars(
                select(ReplayResult.sample_id).where(
                    ReplayResult.sample_id == any_(literal(leased, postgresql.ARRAY(BigInteger))),
                    ReplayResult.draft_version == self.draft_version,
                    ReplayResult.target_version == self.target_version,
                    ReplayResult.mode == SCORED,
                )
            )
        )
        if stored:
            self.release(session, sorted(stored))
        return [sample_id for sample_id in leased if sample_id not in stored]


def id_chunks(ids: list[int]) -> list[list[int]]:
    return [ids[start : start + IDS_PER_STATEMENT] for start in range(0, len(ids), IDS_PER_STATEMENT)]
