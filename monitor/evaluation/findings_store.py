"""Findings stored as episodes: one row per key (detector, segment, window, draft_version) for as long as the
key keeps being reported, instead of one row per evaluation.

    store_findings(engine, at, draft_version, findings, evaluated)   # after each evaluation (evaluate.evaluate)
    latest_findings(engine)                                           # the report, `specwatch findings`

A finding reported again updates its key's open row: last_seen_at, times_seen and the newest severity, summary
and evidence; created_at stays the first-seen time. An open row is closed (resolved_at) by the first
evaluation in which its detector ran and did not report its key, so a later recurrence opens a new row. Only
the detectors in `evaluated` close rows: input drift runs at most every `drift.input_interval`, and an
evaluation that skipped it says nothing about its findings.

Two evaluators at once: each finding is one INSERT .. ON CONFLICT DO UPDATE on the partial unique index of
open rows (uq_findings_open, on PostgreSQL and SQLite), so one key has one open row whoever inserts first;
an evaluation older than the row's last sighting neither counts nor overwrites it.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from monitor.base.db import StoredFinding, as_utc
from monitor.evaluation.drift import Finding

log = logging.getLogger(__name__)

FindingKey = tuple[str, str, str, str]
"""(detector, segment, window, draft_version): what makes two findings the same one"""
KEY_COLUMNS = ["detector", "segment", "window", "draft_version"]


def finding_key(finding: Finding, draft_version: str) -> FindingKey:
    return (finding.detector, finding.segment, finding.window, draft_version)


def stored_key(row: StoredFinding) -> FindingKey:
    return (row.detector, row.segment, row.window, row.draft_version)


def store_findings(
    engine: Engine, at: datetime, draft_version: str, findings: Sequence[Finding], evaluated: Collection[str]
) -> None:
    """Record one evaluation at `at`: each finding updates its key's open row or opens one; an open row of a
    detector in `evaluated` whose key was not found now is resolved at `at`. One transaction."""
    at = as_utc(at)
    reported = {finding_key(finding, draft_version): finding for finding in findings}
    with Session(engine) as session, session.begin():
        for key in sorted(reported):  # one lock order for evaluators that run at once
            session.execute(_upsert(engine, reported[key], draft_version, at))
        for row in resolve_unreported(session, at, set(reported), evaluated):
            detector, segment, window, _ = stored_key(row)
            log.info(
                "finding resolved: %s %s %s, seen %d times since %s",
                detector,
                segment,
                window,
                row.times_seen,
                row.created_at,
            )


def _upsert(engine: Engine, finding: Finding, draft_version: str, at: datetime) -> Any:
    insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
    statement = insert(StoredFinding).values(
        created_at=at,
        last_seen_at=at,
        times_seen=1,
        draft_version=draft_version,
        detector=finding.detector,
        segment=finding.segment,
        window=finding.window,
        severity=finding.severity,
        summary=finding.summary,
        evidence=finding.evidence,
    )
    newest = statement.excluded
    return statement.on_conflict_do_update(
        index_elements=KEY_COLUMNS,
        index_where=StoredFinding.resolved_at.is_(None),
        set_={
            "last_seen_at": newest.last_seen_at,
            "times_seen": StoredFinding.times_seen + 1,
            "severity": newest.severity,
            "summary": newest.summary,
            "evidence": newest.evidence,
        },
        where=StoredFinding.last_seen_at <= newest.last_seen_at,
    )


def resolve_unreported(
    session: Session, at: datetime, reported: set[FindingKey], evaluated: Collection[str]
) -> list[StoredFinding]:
    """Close the open rows of the detectors that ran whose keys were not reported at `at` (under any draft
    version: findings are filed under the live head only); the rows it closed, as they were."""
    if not evaluated:
        return []
    query = select(StoredFinding).where(StoredFinding.resolved_at.is_(None), StoredFinding.detector.in_(evaluated))
    gone = {row.id: row for row in session.scalars(query) if stored_key(row) not in reported and row.last_seen_at < at}
    if not gone:
        return []
    closed = session.scalars(
        update(StoredFinding)
        .where(StoredFinding.id.in_(gone), StoredFinding.resolved_at.is_(None), StoredFinding.last_seen_at < at)
        .values(resolved_at=at)
        .returning(StoredFinding.id)
        .execution_options(synchronize_session=False)
    )
    return [gone[row_id] for row_id in closed]


def latest_findings(engine: Engine, limit: int = 50) -> list[StoredFinding]:
    """The most recently seen findings, one row per episode, open or resolved."""
    with Session(engine) as session:
        query = select(StoredFinding).order_by(StoredFinding.last_seen_at.desc(), StoredFinding.id.desc()).limit(limit)
        return list(session.scalars(query))
