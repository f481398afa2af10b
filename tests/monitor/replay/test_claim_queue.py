"""The replay claim queue on real PostgreSQL: concurrent workers, each with its own engine, take
disjoint full-size claims in turn order, and expired leases are taken over. No models: a worker
here stores a fixed result row per claimed sample and releases its leases, as Replayer._store does."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from monitor.base.db import ReplayClaim, ReplayResult, Sample, create_db_engine, upgrade, utcnow
from monitor.base.results import SCORED
from monitor.replay.claims import ClaimQueue
from tests.conftest import POSTGRES_URL, fresh_postgres_schema

pytestmark = pytest.mark.postgres

DRAFT, TARGET = "draft-v1", "target-v1"
START = datetime(2026, 11, 1, tzinfo=utcnow().tzinfo)
RESULT = {
    "draft_version": DRAFT,
    "target_version": TARGET,
    "mode": SCORED,
    "window": 4,
    "temperature": 0.0,
    "accepted": 3,
    "rejected": 1,
    "drafted": 4,
    "steps": 1,
    "counts": {},
    "outcomes": [],
    "prompt_tokens": 1,
    "completion_tokens": 4,
    "truncated_tokens": 0,
    "seconds": 0.0,
}


@pytest.fixture
def queue_database_url() -> Iterator[str]:
    """A fresh PostgreSQL schema (claims need row locks: SQLite runs one worker)."""
    if not POSTGRES_URL:
        pytest.skip("SPECWATCH_TEST_DATABASE_URL not set")
    with fresh_postgres_schema() as url:
        yield url


@pytest.fixture
def queue_engine(queue_database_url: str) -> Iterator[Engine]:
    engine = create_db_engine(queue_database_url)
    upgrade(engine)
    yield engine
    engine.dispose()


def add_samples(engine: Engine, per_segment: dict[str, int]) -> None:
    """Samples one second apart, the segments interleaved in time."""
    rows: list[dict[str, Any]] = []
    for index in range(max(per_segment.values())):
        for segment, count in per_segment.items():
            if index < count:
                moment = START + timedelta(seconds=len(rows))
                rows.append(
                    {
                        "sample_key": f"{segment}-{index}",
                        "received_at": moment,
                        "occurred_at": moment,
                        "segment": segment,
                        "language": "en",
                        "source": "test",
                        "messages": [{"role": "user", "content": "hi"}],
                        "completion": "hello",
                        "attributes": {},
                        "redactions": {},
                        "prompt_chars": 2,
                        "completion_chars": 5,
                    }
                )
    with engine.begin() as connection:
        connection.execute(Sample.__table__.insert(), rows)


def queue(engine: Engine, worker: str, ttl_s: float = 600.0) -> ClaimQueue:
    return ClaimQueue(engine, DRAFT, TARGET, ttl_s, worker)


def store(claims: ClaimQueue, sample_ids: list[int]) -> None:
    """A fixed scored result per sample, and the leases released, in one transaction."""
    with Session(claims.engine) as session, session.begin():
        claimed = select(Sample.id, Sample.segment, Sample.occurred_at).where(Sample.id.in_(sample_ids))
        session.execute(
            ReplayResult.__table__.insert(),
            [
                {
                    **RESULT,
                    "sample_id": sample_id,
                    "segment": segment,
                    "occurred_at": occurred_at,
                    "replayed_at": utcnow(),
                    "worker": claims.worker,
                }
                for sample_id, segment, occurred_at in session.execute(claimed)
            ],
        )
        claims.release(session, sample_ids)


def samples_by_id(engine: Engine) -> dict[int, Sample]:
    with Session(engine) as session:
        return {sample.id: sample for sample in session.scalars(select(Sample))}


def oldest_first(samples: dict[int, Sample], segment: str, count: int) -> set[int]:
    ids = sorted((s.occurred_at, s.id) for s in samples.values() if s.segment == segment)
    return {sample_id for _, sample_id in ids[:count]}


def leases(engine: Engine) -> dict[int, str]:
    with Session(engine) as session:
        return {claim.sample_id: claim.worker for claim in session.scalars(select(ReplayClaim))}


def test_a_claim_takes_turns_across_segments_oldest_first(queue_engine: Engine) -> None:
    add_samples(queue_engine, {f"s{n:02d}": 40 for n in range(12)})
    claimed = queue(queue_engine, "w1").claim(24)
    samples = samples_by_id(queue_engine)
    assert len(claimed) == 24
    for segment in {sample.segment for sample in samples.values()}:
        assert {i for i in claimed if samples[i].segment == segment} == oldest_first(samples, segment, 2)


def test_a_claim_reaches_past_small_segments_into_a_big_one(queue_engine: Engine) -> None:
    add_samples(queue_engine, {"big": 500, **{f"small{n:02d}": 5 for n in range(11)}})
    claimed = queue(queue_engine, "w1").claim(100)
    samples = samples_by_id(queue_engine)
    assert Counter(samples[i].segment for i in claimed) == {"big": 45, **{f"small{n:02d}": 5 for n in range(11)}}
    assert {i for i in claimed if samples[i].segment == "big"} == oldest_first(samples, "big", 45)


def run_worker(url: str, name: str, limit: int, start: threading.Barrier, claims: list[tuple[str, list[int]]]) -> None:
    engine = create_db_engine(url)
    worker = queue(engine, name)
    try:
        start.wait()
        while taken := worker.claim(limit):
            claims.append((name, taken))
            store(worker, taken)
    finally:
        engine.dispose()


def test_concurrent_workers_take_disjoint_full_claims_until_the_backlog_is_done(
    queue_engine: Engine, queue_database_url: str
) -> None:
    segments = {f"s{n:02d}": 200 for n in range(12)}
    add_samples(queue_engine, segments)
    workers, limit = 4, 50
    claims: list[tuple[str, list[int]]] = []  # list.append is atomic under the GIL
    start = threading.Barrier(workers)
    threads = [
        threading.Thread(target=run_worker, args=(queue_database_url, f"w{n}", limit, start, claims))
        for n in range(workers)
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    elapsed = time.monotonic() - started

    claimed = Counter(sample_id for _, taken in claims for sample_id in taken)
    assert len(claimed) == 2400 and set(claimed.values()) == {1}, "every sample claimed once, by one worker"
    short = [len(taken) for _, taken in claims if len(taken) < limit]
    assert len(short) <= workers, f"claims shrank while rows remained: {short}"
    assert len({name for name, _ in claims}) == workers
    assert leases(queue_engine) == {}
    with Session(queue_engine) as session:
        assert len(session.scalars(select(ReplayResult.sample_id)).all()) == 2400
    assert elapsed < 30


def test_the_first_claims_of_concurrent_workers_take_turns_across_segments(
    queue_engine: Engine, queue_database_url: str
) -> None:
    add_samples(queue_engine, {f"s{n:02d}": 100 for n in range(10)})
    workers, limit = 4, 25
    claims: list[tuple[str, list[int]]] = []
    start = threading.Barrier(workers)

    def first_claim(name: str) -> None:
        engine = create_db_engine(queue_database_url)
        try:
            start.wait()
            claims.append((name, queue(engine, name).claim(limit)))
        finally:
            engine.dispose()

    threads = [threading.Thread(target=first_claim, args=(f"w{n}",)) for n in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(len(taken) for _, taken in claims) == [limit] * workers
    union = [sample_id for _, taken in claims for sample_id in taken]
    assert len(set(union)) == workers * limit
    samples = samples_by_id(queue_engine)
    per_segment = Counter(samples[i].segment for i in union)
    assert per_segment == {f"s{n:02d}": 10 for n in range(10)}
    for segment in per_segment:
        assert {i for i in union if samples[i].segment == segment} == oldest_first(samples, segment, 10)


def test_expired_leases_are_taken_over_and_the_old_worker_cannot_release_them(queue_engine: Engine) -> None:
    add_samples(queue_engine, {"a": 5, "b": 5})
    dead = queue(queue_engine, "dead", ttl_s=0.5)
    alive = queue(queue_engine, "alive")
    taken = dead.claim(10)
    assert len(taken) == 10
    assert alive.claim(10) == []
    time.sleep(0.6)
    assert sorted(alive.claim(10)) == sorted(taken)
    with Session(queue_engine) as session, session.begin():
        dead.release(session, taken)  # a late worker releases only its own leases
    assert set(leases(queue_engine).values()) == {"alive"}
    assert dead.claim(10) == []


def test_a_result_stored_between_the_lock_and_the_lease_is_not_claimed(queue_engine: Engine) -> None:
    """Another worker's transaction (result in, lease out) commits after this claim locked its rows."""
    add_samples(queue_engine, {"a": 3})
    first = samples_by_id(queue_engine)
    landed = min(first)

    class Interleaved(ClaimQueue):
        def _lease(self, session: Session, ids: list[int], now: datetime) -> list[int]:
            if ids and landed in ids:
                store(queue(queue_engine, "other"), [landed])
            return super()._lease(session, ids, now)

    claimed = Interleaved(queue_engine, DRAFT, TARGET, 600.0, "w1").claim(3)
    assert sorted(claimed) == sorted(set(first) - {landed})
    assert set(leases(queue_engine)) == set(claimed)
