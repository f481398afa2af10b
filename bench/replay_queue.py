"""Replay claims under concurrency: samples claimed and stored per second by 1, 2 and 4 replay workers
(separate processes) sharing one PostgreSQL database, with the work queue (monitor.replay.claims:
FOR NO KEY UPDATE SKIP LOCKED) and, side by side, the claim query it replaced.

    SPECWATCH_BENCH_POSTGRES_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test \\
        PYTHONPATH=. python bench/replay_queue.py [--samples 20000] [--segments 200] [--workers 1,2,4]

(SPECWATCH_TEST_DATABASE_URL is used when the first is not set.) The samples go into a fresh schema,
dropped at the end. Each worker runs Replayer.replay_once with a stub scorer (fixed counts, no model),
so the claim, the sample load and the store (results in, leases out, one transaction) are the real ones;
a worker stops when no sample is left without a scored result. Per run: wall time from the common start
to the last worker's end, samples stored per second, claims (non-empty), their mean size, claims that
came back short of `--per-claim` or empty, the mean time a claim took, double claims (a sample leased to
two workers at once: the leases never expire here, so it must be 0) and samples claimed again after
their result was stored (replayed twice; the second result is dropped). The results and leases are
emptied between runs.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import multiprocessing
import os
import statistics
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Engine, create_engine, exists, func, select, text
from sqlalchemy.orm import Session

from decoder import AcceptCounts, Draft, SampleScore, TargetModel
from decoder.exchange import ExchangeTokens
from monitor.base.config import ReplayConfig
from monitor.base.db import ReplayClaim, ReplayResult, Sample, create_db_engine, upgrade, utcnow
from monitor.base.results import SCORED
from monitor.replay.claims import id_chunks
from monitor.replay.replayer import ClaimedSample, Replayer, Versions

VERSIONS = Versions(target="bench-target", draft="bench-draft")
STUB_TOKENS = ExchangeTokens(
    prompt_ids=[1] * 48, completion_ids=[2] * 96, max_new_tokens=None, source="text", retokenized_equal=None
)
STUB_COUNTS = AcceptCounts(accepted=72.0, rejected=24.0, drafted=96.0, steps=24.0)
PROMPT = "Summarise the verify step of speculative decoding for a new engineer. " * 4
COMPLETION = "The draft proposes k tokens; the target scores them in one forward pass and keeps the prefix. " * 12


class StubReplayer(Replayer):
    """Replayer with the model steps replaced by fixed counts; `previous` claims with the old query.
    Records each claim: its sample ids, when the claim returned (its leases committed before), how long
    it took, and when the store of its results began (its leases are released after)."""

    def __init__(self, engine: Engine, worker: str, config: ReplayConfig, previous: bool) -> None:
        super().__init__(engine, cast(TargetModel, None), cast(Draft, None), VERSIONS, config, worker=worker)
        self.previous = previous
        self.claims: list[tuple[list[int], float, float, float]] = []

    def claim(self, limit: int | None = None) -> list[ClaimedSample]:
        limit = limit or self.config.samples_per_round
        started = time.time()
        samples = previous_claim(self, limit) if self.previous else super().claim(limit)
        now = time.time()
        self.claims.append(([sample.id for sample in samples], now, now - started, now))
        return samples

    def _store(self, claimed: Sequence[ClaimedSample], rows: list[dict[str, Any]]) -> None:
        ids, claimed_at, seconds, _ = self.claims[-1]
        self.claims[-1] = (ids, claimed_at, seconds, time.time())
        super()._store(claimed, rows)

    def _tokenize_all(
        self, claimed: Sequence[ClaimedSample]
    ) -> tuple[list[tuple[ClaimedSample, ExchangeTokens]], list[tuple[ClaimedSample, str]]]:
        return [(sample, STUB_TOKENS) for sample in claimed], []

    def _scored_rows(self, readable: Sequence[tuple[ClaimedSample, ExchangeTokens]]) -> list[dict[str, Any]]:
        return [
            self._scored_row(
                sample,
                SampleScore(str(sample.id), STUB_COUNTS, prompt_tokens=48, completion_tokens=96),
                sample.temperature,
                tokens,
            )
            for sample, tokens in readable
        ]


def previous_claim(replayer: Replayer, limit: int) -> list[ClaimedSample]:
    """Replayer.claim before the work queue (git show 7fc2a77:monitor/replay/replayer.py): rank the whole
    backlog, insert the leases of the top `limit` (only the rows the insert wrote are the worker's)."""
    now = utcnow()
    replayed = exists().where(
        ReplayResult.sample_id == Sample.id,
        ReplayResult.draft_version == VERSIONS.draft,
        ReplayResult.target_version == VERSIONS.target,
        ReplayResult.mode == SCORED,
    )
    live_claim = exists().where(
        ReplayClaim.sample_id == Sample.id, ReplayClaim.draft_version == VERSIONS.draft, ReplayClaim.expires_at > now
    )
    turn = func.row_number().over(partition_by=Sample.segment, order_by=(Sample.occurred_at, Sample.id))
    candidates = select(Sample.id, turn.label("turn"), Sample.occurred_at).where(~replayed, ~live_claim).subquery()
    query = select(candidates.c.id).order_by(candidates.c.turn, candidates.c.occurred_at).limit(limit)
    with Session(replayer.engine) as session, session.begin():
        ids = list(session.scalars(query))
        if not ids:
            return []
        taken = replayer.queue()._lease(session, ids, now)  # the same statement as before
        rows = [
            row for chunk in id_chunks(taken) for row in session.scalars(select(Sample).where(Sample.id.in_(chunk)))
        ]
        return [ClaimedSample.from_row(row) for row in sorted(rows, key=lambda row: (row.occurred_at, row.id))]


def work(url: str, name: str, per_claim: int, previous: bool, start: Any, results: Any) -> None:
    """One worker process: replay rounds until no sample is left without a result."""
    engine = create_db_engine(url)
    replayer = StubReplayer(engine, name, ReplayConfig(samples_per_round=per_claim, exact_fraction=0.0), previous)
    replayer.pending()  # connect before the clock starts
    start.wait()
    started = time.time()
    while True:
        if not replayer.replay_once().claimed:
            if replayer.pending() == 0:
                break
            time.sleep(0.01)  # the rest is leased to other workers (the previous query's claims can come back empty)
    results.put((replayer.claims, started, time.time()))  # the sample ids of each claim, the clock
    engine.dispose()


def measure(url: str, engine: Engine, samples: int, workers: int, per_claim: int, previous: bool) -> dict[str, Any]:
    with engine.begin() as connection:
        connection.execute(text("TRUNCATE replay_results, replay_claims"))
        connection.execute(text("ANALYZE"))
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(workers), context.Queue()
    processes = [
        context.Process(target=work, args=(url, f"bench-{n}", per_claim, previous, start, results))
        for n in range(workers)
    ]
    for process in processes:
        process.start()
    runs = [results.get(timeout=1800) for _ in processes]
    for process in processes:
        process.join()
    with Session(engine) as session:
        stored = session.scalar(select(func.count()).select_from(ReplayResult)) or 0
    claims = [claim for worker_claims, _, _ in runs for claim in worker_claims]
    wall = max(ended for _, _, ended in runs) - min(started for _, started, _ in runs)
    sizes = [len(ids) for ids, _, _, _ in claims if ids]
    held: dict[int, list[tuple[float, float]]] = {}
    for ids, claimed_at, _, storing_at in claims:
        for sample_id in ids:
            held.setdefault(sample_id, []).append((claimed_at, storing_at))
    return {
        "query": "previous" if previous else "queue",
        "workers": workers,
        "wall_s": wall,
        "per_s": stored / wall,
        "claim_ms": 1000 * statistics.fmean(seconds for _, _, seconds, _ in claims),
        "claims": len(sizes),
        "mean_size": statistics.fmean(sizes) if sizes else 0.0,
        "short": sum(1 for size in sizes if size < per_claim),
        "empty": sum(1 for ids, _, _, _ in claims if not ids) - workers,  # each worker's last claim finds nothing
        "at_once": sum(1 for spans in held.values() if overlapping(spans)),
        "again": sum(len(spans) - 1 for spans in held.values()),
        "complete": stored == samples == len(held),
    }


def overlapping(spans: list[tuple[float, float]]) -> bool:
    """Two (claim returned, store began) intervals of one sample overlap. Each lies inside the time its
    lease was held, so an overlap is a sample leased to two workers at once, never a clock artefact."""
    spans = sorted(spans)
    return any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans))


def add_samples(engine: Engine, count: int, segments: int) -> None:
    """`count` samples one second apart over `segments` segments of unequal traffic."""
    start = datetime(2026, 11, 1, tzinfo=UTC)
    weights = [1 + (index % 7) for index in range(segments)]
    order = [index for index, weight in enumerate(weights) for _ in range(weight)]
    rows = [
        {
            "sample_key": f"bench-{index}",
            "received_at": start + timedelta(seconds=index),
            "occurred_at": start + timedelta(seconds=index),
            "segment": f"tenant=t{order[(index * 7919) % len(order)]:03d}",
            "language": "en",
            "source": "bench",
            "temperature": 0.0,
            "messages": [{"role": "user", "content": PROMPT}],
            "completion": COMPLETION,
            "attributes": {},
            "redactions": {},
            "prompt_chars": len(PROMPT),
            "completion_chars": len(COMPLETION),
        }
        for index in range(count)
    ]
    with engine.begin() as connection:
        for first in range(0, count, 2000):
            connection.execute(Sample.__table__.insert(), rows[first : first + 2000])


def fresh_schema(base_url: str) -> tuple[str, str]:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(base_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    admin.dispose()
    separator = "&" if "?" in base_url else "?"
    url = base_url.replace("postgresql://", "postgresql+psycopg://", 1) + f"{separator}options=-csearch_path%3D{schema}"
    return url, schema


def drop_schema(base_url: str, schema: str) -> None:
    admin = create_engine(base_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as connection:
        connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--segments", type=int, default=200)
    parser.add_argument("--workers", default="1,2,4", help="worker counts, comma-separated")
    parser.add_argument("--per-claim", type=int, default=ReplayConfig().samples_per_round)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    base = os.environ.get("SPECWATCH_BENCH_POSTGRES_URL") or os.environ.get("SPECWATCH_TEST_DATABASE_URL")
    if not base:
        raise SystemExit("set SPECWATCH_BENCH_POSTGRES_URL (or SPECWATCH_TEST_DATABASE_URL) to a PostgreSQL URL")
    url, schema = fresh_schema(base)
    engine = create_db_engine(url)
    try:
        upgrade(engine)
        add_samples(engine, args.samples, args.segments)
        print(
            f"{args.samples} samples in {args.segments} segments, {args.per_claim} per claim, "
            f"{os.cpu_count()} CPUs (workers and PostgreSQL share them)"
        )
        print(
            f"{'workers':>7} {'claim':>8} {'wall s':>7} {'samples/s':>9} {'ratio':>5} {'claims':>6} {'mean':>5} "
            f"{'short':>5} {'empty':>5} {'claim ms':>8} {'double':>6} {'again':>5}"
        )
        for workers in (int(count) for count in args.workers.split(",")):
            rows = [measure(url, engine, args.samples, workers, args.per_claim, previous) for previous in (True, False)]
            for row in rows:
                assert row["complete"], row
                ratio = row["per_s"] / rows[0]["per_s"]
                print(
                    f"{row['workers']:>7} {row['query']:>8} {row['wall_s']:>7.1f} {row['per_s']:>9,.0f} {ratio:>4.2f}x "
                    f"{row['claims']:>6} {row['mean_size']:>5.1f} {row['short']:>5} {row['empty']:>5} "
                    f"{row['claim_ms']:>8.1f} {row['at_once']:>6} {row['again']:>5}"
                )
    finally:
        engine.dispose()
        drop_schema(base, schema)


if __name__ == "__main__":
    main()
