"""Retention: purge samples and quarantined records older than the configured number of days."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import CursorResult, Engine, delete
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import Delete

from monitor.base.config import RetentionConfig
from monitor.base.db import QuarantinedRecord, Sample, SamplingBucket, utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PurgeReport:
    samples: int
    quarantined: int
    sampling_buckets: int


def deleted(session: Session, statement: Delete) -> int:
    result = session.execute(statement)
    return result.rowcount if isinstance(result, CursorResult) else 0


def purge_expired(engine: Engine, config: RetentionConfig, now: datetime | None = None) -> PurgeReport:
    now = now or utcnow()
    sample_cutoff = now - timedelta(days=config.samples_days)
    quarantine_cutoff = now - timedelta(days=config.quarantine_days)
    with Session(engine) as session, session.begin():
        samples = deleted(session, delete(Sample).where(Sample.received_at < sample_cutoff))
        quarantined = deleted(
            session, delete(QuarantinedRecord).where(QuarantinedRecord.received_at < quarantine_cutoff)
        )
        buckets = deleted(session, delete(SamplingBucket).where(SamplingBucket.hour < now - timedelta(days=2)))
    report = PurgeReport(samples, quarantined, buckets)
    log.info("retention purged %d samples and %d quarantined records", report.samples, report.quarantined)
    return report
