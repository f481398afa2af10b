"""Columns read straight from the database hold what the object loaders hold (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from decoder import AcceptCounts
from monitor.base.columns import ResultColumns
from monitor.base.db import LiveResult
from monitor.base.results import (
    HISTOGRAM_ESTIMATE,
    PER_STEP,
    load_live,
    load_live_columns,
    load_pairs,
    load_result_columns,
    load_results,
)
from tests.monitor.stored_counts import live_row, sample_row, shadow_row

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def store_varied(engine: Engine, rng: np.random.Generator, count: int) -> None:
    """Samples in three segments with their own steps; most with a shadow result, some with an engine
    report (exact or histogram-estimated R), some reports without a sample."""
    segments = ["tenant=a/lang=zh", "tenant=b/lang=en", "lang=ko"]
    with Session(engine) as session, session.begin():
        for index in range(count):
            occurred_at = NOW - timedelta(minutes=int(rng.integers(1, 600)), seconds=index)
            steps = [(4, int(a)) for a in rng.integers(0, 5, size=int(rng.integers(1, 12)))]
            segment = segments[index % 3]
            sample = sample_row(f"s{index}", segment, occurred_at)
            session.add(sample)
            session.flush()
            if index % 5:
                session.add(shadow_row(sample, steps, "draft-a"))
            if index % 2:
                basis = (PER_STEP, HISTOGRAM_ESTIMATE)[index % 4 // 2]
                report = live_row(f"s{index}", segment, occurred_at, steps, basis)
                report.sample_id = sample.id if index % 3 else None
                session.add(report)


def assert_same(columns: ResultColumns, expected: ResultColumns) -> None:
    assert columns.segments == expected.segments or set(columns.segments) == set(expected.segments)
    names = [columns.segments[i] for i in columns.segment]
    assert names == [expected.segments[i] for i in expected.segment]
    for field in ("sample_id", "occurred", "accepted", "rejected", "drafted", "steps", "eos_ended", "tokens"):
        np.testing.assert_array_equal(getattr(columns, field), getattr(expected, field), err_msg=field)
    for field in ("from_ids", "retokenized_differs", "rejected_estimated"):
        np.testing.assert_array_equal(getattr(columns, field), getattr(expected, field), err_msg=field)
    for row in range(len(columns)):
        assert columns.sample_counts(row) == expected.sample_counts(row)


def test_scored_and_live_columns_equal_the_object_loaders(engine: Engine) -> None:
    store_varied(engine, np.random.default_rng(4), 90)
    since = NOW - timedelta(hours=8)

    scored = load_result_columns(engine, "draft-a", since)
    assert len(scored) > 30
    assert_same(scored, ResultColumns.from_results(load_results(engine, "draft-a", since)))
    assert np.all(np.diff(scored.occurred) >= 0)

    live = load_live_columns(engine, since)
    assert len(live) > 10 and live.rejected_estimated.any() and not live.rejected_estimated.all()
    assert_same(live, ResultColumns.from_results(load_live(engine, since)))
    assert (live.sample_id < 0).any()  # reports without a sample keep minus their row id

    assert len(load_result_columns(engine, "draft-b", since)) == 0
    assert len(load_live_columns(engine, NOW)) == 0


def test_windows_are_slices_of_time() -> None:
    from tests.monitor.base.test_stats import result, simulated_counts

    rng = np.random.default_rng(1)
    results = [result(i, "lang=en", simulated_counts(rng, 0.7), ago=timedelta(minutes=i)) for i in range(100)]
    columns = ResultColumns.from_results(results)
    inside = columns.window(NOW - timedelta(minutes=30), NOW - timedelta(minutes=10))
    assert sorted(inside.sample_id.tolist()) == list(range(10, 30))  # (start, end]: 30 minutes ago is out
    assert columns.counts() == sum((r.counts for r in results[1:]), results[0].counts)


def store_pairable(engine: Engine, rng: np.random.Generator, count: int) -> None:
    """Samples whose replays draft fewer than k = 4 tokens in some steps (so S - hist[4] overstates R), with
    engine reports of k = 4 or 3, exact or histogram-estimated R; some without a replay or a sample."""
    with Session(engine) as session, session.begin():
        for index in range(count):
            occurred_at = NOW - timedelta(minutes=int(rng.integers(1, 600)), seconds=index)
            steps = []
            for _ in range(int(rng.integers(1, 10))):
                drafted = int(rng.choice([2, 4, 4]))
                steps.append((drafted, int(rng.integers(0, drafted + 1))))
            segment = ("tenant=a/lang=zh", "tenant=b/lang=en")[index % 2]
            sample = sample_row(f"p{index}", segment, occurred_at)
            session.add(sample)
            session.flush()
            if index % 7:
                session.add(shadow_row(sample, steps, "draft-a"))
            report = live_row(f"p{index}", segment, occurred_at, steps, (PER_STEP, HISTOGRAM_ESTIMATE)[index % 3 // 2])
            report.num_spec_tokens = 3 if index % 5 == 0 else 4
            report.sample_id = sample.id if index % 11 else None
            session.add(report)


def test_pairs_join_live_and_shadow_by_sample_with_r_counted_as_the_engine_did(engine: Engine) -> None:
    store_pairable(engine, np.random.default_rng(7), 120)
    since = NOW - timedelta(hours=8)
    with Session(engine) as session:
        engine_k = dict(session.execute(select(LiveResult.sample_id, LiveResult.num_spec_tokens)).all())
    shadow_of = {result.sample_id: result.counts for result in load_results(engine, "draft-a", since)}
    expected = []
    for live in load_live(engine, since):
        shadow = shadow_of.get(live.sample_id)
        if live.sample_id <= 0 or shadow is None:
            continue
        if live.rejected_estimated:  # the engine's R is S - hist[k]: the shadow's is counted the same way
            k = engine_k[live.sample_id]
            full = shadow.accept_histogram[k] if len(shadow.accept_histogram) > k else 0.0
            shadow = AcceptCounts(**{**shadow.to_dict(), "rejected": shadow.steps - full})
        expected.append((live.sample_id, live.segment, live.occurred_at, live.counts, shadow))
    expected.sort(key=lambda pair: (pair[2], pair[0]))

    pairs = load_pairs(engine, "draft-a", since)
    assert len(pairs) == len(expected) > 40
    assert pairs.live.rejected_estimated.any() and (pairs.shadow.rejected != pairs.live.rejected).any()
    for row, (sample_id, segment, occurred_at, live_counts, shadow_counts) in enumerate(expected):
        assert int(pairs.live.sample_id[row]) == int(pairs.shadow.sample_id[row]) == sample_id
        assert pairs.live.segments[pairs.live.segment[row]] == segment
        assert pairs.live.occurred_at(row) == occurred_at
        assert pairs.live.sample_counts(row) == live_counts
        assert pairs.shadow.sample_counts(row) == shadow_counts
    late = pairs.window(NOW - timedelta(hours=2), NOW)
    assert late.live.sample_id.tolist() == [pair[0] for pair in expected if pair[2] > NOW - timedelta(hours=2)]
    assert len(load_pairs(engine, "draft-b", since)) == 0
