"""Findings collapse into episodes (monitor.evaluation.findings_store), on SQLite and PostgreSQL: a finding
reported again updates its row, a key its detector no longer reports is resolved, a recurrence opens a new
row, and a detector that did not run closes nothing. And the 0010 migration over existing rows."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from monitor.base.db import StoredFinding, UtcDateTime, create_db_engine, upgrade
from monitor.evaluation.drift import Finding
from monitor.evaluation.findings_store import latest_findings, store_findings

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
EVERY = timedelta(minutes=5)
DRAFT = "draft-a"
RAN = {"threshold", "change", "input_drift"}
"""the detectors that ran in an evaluation that checked input drift"""
RAN_WITHOUT_INPUT_DRIFT = {"threshold", "change"}


def at(evaluations: int) -> datetime:
    return T0 + evaluations * EVERY


def breach(segment: str = "lang=zh", alpha: float = 0.30, severity: str = "critical") -> Finding:
    return Finding("threshold", segment, "24h", severity, f"alpha {alpha:.2f} below 0.65", {"alpha": alpha})


def input_drift() -> Finding:
    return Finding("input_drift", "*", "1h", "warning", "6 of 6 features drifted", {"drifted": 6})


def rows(engine: Engine) -> list[StoredFinding]:
    with Session(engine) as session:
        return list(session.scalars(select(StoredFinding).order_by(StoredFinding.id)))


def test_a_repeated_finding_is_one_row_seen_many_times_with_the_newest_evidence(engine: Engine) -> None:
    store_findings(engine, at(0), DRAFT, [breach(alpha=0.40, severity="warning")], RAN)
    store_findings(engine, at(1), DRAFT, [breach(alpha=0.35)], RAN)
    store_findings(engine, at(2), DRAFT, [breach(alpha=0.30)], RAN)

    [row] = rows(engine)
    assert (row.created_at, row.last_seen_at, row.times_seen, row.resolved_at) == (at(0), at(2), 3, None)
    assert (row.severity, row.summary, row.evidence) == ("critical", "alpha 0.30 below 0.65", {"alpha": 0.30})
    assert [f.id for f in latest_findings(engine)] == [row.id]


def test_a_key_that_stops_is_resolved_and_its_recurrence_is_a_new_row(engine: Engine) -> None:
    store_findings(engine, at(0), DRAFT, [breach("lang=zh"), breach("lang=ja")], RAN)
    store_findings(engine, at(1), DRAFT, [breach("lang=ja")], RAN)
    [zh] = [row for row in rows(engine) if row.segment == "lang=zh"]
    [ja] = [row for row in rows(engine) if row.segment == "lang=ja"]
    assert zh.resolved_at == at(1) and zh.last_seen_at == at(0) and zh.times_seen == 1
    assert ja.resolved_at is None and ja.times_seen == 2

    store_findings(engine, at(2), DRAFT, [breach("lang=zh")], RAN)
    first, again = [row for row in rows(engine) if row.segment == "lang=zh"]
    assert first.id == zh.id and first.resolved_at == at(1), "the closed episode stays closed"
    assert (again.created_at, again.last_seen_at, again.times_seen, again.resolved_at) == (at(2), at(2), 1, None)
    [ja] = [row for row in rows(engine) if row.segment == "lang=ja"]
    assert ja.resolved_at == at(2), "lang=ja was not reported at 2"
    assert [(f.segment, f.created_at) for f in latest_findings(engine)] == [
        ("lang=zh", at(2)),
        ("lang=ja", at(0)),
        ("lang=zh", at(0)),
    ], "most recently seen first"


def test_a_detector_that_did_not_run_closes_none_of_its_rows(engine: Engine) -> None:
    store_findings(engine, at(0), DRAFT, [breach(), input_drift()], RAN)
    store_findings(engine, at(1), DRAFT, [breach()], RAN_WITHOUT_INPUT_DRIFT)
    assert [row.resolved_at for row in rows(engine)] == [None, None], "input drift was not checked at 1"

    store_findings(engine, at(2), DRAFT, [breach()], RAN)
    drift, threshold = sorted(rows(engine), key=lambda row: row.detector)
    assert drift.resolved_at == at(2) and drift.times_seen == 1
    assert threshold.resolved_at is None and threshold.times_seen == 3

    store_findings(engine, at(3), DRAFT, [], set())
    assert threshold.id in {row.id for row in rows(engine) if row.resolved_at is None}


def test_a_new_live_head_resolves_the_findings_filed_under_the_old_one(engine: Engine) -> None:
    store_findings(engine, at(0), DRAFT, [breach()], RAN)
    store_findings(engine, at(1), "draft-b", [breach()], RAN)
    old, new = rows(engine)
    assert (old.draft_version, old.resolved_at) == (DRAFT, at(1))
    assert (new.draft_version, new.created_at, new.resolved_at) == ("draft-b", at(1), None)


def test_an_evaluation_older_than_the_last_sighting_neither_counts_nor_overwrites(engine: Engine) -> None:
    store_findings(engine, at(2), DRAFT, [breach(alpha=0.30)], RAN)
    store_findings(engine, at(1), DRAFT, [breach(alpha=0.50)], RAN)
    store_findings(engine, at(1), DRAFT, [], RAN)
    [row] = rows(engine)
    assert (row.last_seen_at, row.times_seen, row.evidence, row.resolved_at) == (at(2), 1, {"alpha": 0.30}, None)


def test_one_open_row_per_key_even_when_evaluators_store_at_once(engine: Engine) -> None:
    evaluators = 4
    start = threading.Barrier(evaluators)
    errors: list[BaseException] = []

    def evaluator() -> None:
        try:
            start.wait()
            store_findings(engine, at(1), DRAFT, [breach()], RAN)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=evaluator) for _ in range(evaluators)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    [row] = rows(engine)
    assert (row.times_seen, row.resolved_at) == (evaluators, None)

    with pytest.raises(IntegrityError), Session(engine) as session, session.begin():
        session.add(
            StoredFinding(
                created_at=at(2),
                last_seen_at=at(2),
                draft_version=DRAFT,
                detector="threshold",
                segment="lang=zh",
                window="24h",
                severity="critical",
                summary="a second open row",
                evidence={},
            )
        )


LEGACY = sa.table(
    "findings",
    sa.column("id", sa.Integer()),
    sa.column("created_at", UtcDateTime()),
    sa.column("draft_version", sa.String()),
    sa.column("detector", sa.String()),
    sa.column("segment", sa.String()),
    sa.column("window", sa.String()),
    sa.column("severity", sa.String()),
    sa.column("summary", sa.Text()),
    sa.column("evidence", sa.JSON()),
)


def legacy_row(moment: datetime, segment: str) -> dict[str, object]:
    return {
        "created_at": moment,
        "draft_version": DRAFT,
        "detector": "threshold",
        "segment": segment,
        "window": "24h",
        "severity": "critical",
        "summary": f"{segment} at {moment:%H:%M}",
        "evidence": {"alpha": 0.3},
    }


def test_the_migration_reads_each_existing_row_as_seen_once_and_keeps_the_newest_per_key_open(
    database_url: str,
) -> None:
    db = create_db_engine(database_url)
    try:
        upgrade(db, "0009")
        with db.begin() as connection:
            connection.execute(
                LEGACY.insert(), [legacy_row(at(n), "lang=zh") for n in range(3)] + [legacy_row(at(1), "lang=ja")]
            )
        upgrade(db)
        zh0, zh1, zh2, ja = rows(db)
        assert all(row.last_seen_at == row.created_at and row.times_seen == 1 for row in (zh0, zh1, zh2, ja))
        assert (zh0.resolved_at, zh1.resolved_at) == (at(0), at(1)), "older snapshots closed at their own time"
        assert zh2.resolved_at is None and ja.resolved_at is None, "the newest per key stays open"

        store_findings(db, at(3), DRAFT, [breach("lang=zh")], RAN)
        zh2_now, ja_now = (row for row in rows(db) if row.id in {zh2.id, ja.id})
        assert (zh2_now.created_at, zh2_now.last_seen_at, zh2_now.times_seen) == (at(2), at(3), 2)
        assert ja_now.resolved_at == at(3)
        assert len(rows(db)) == 4
    finally:
        db.dispose()
