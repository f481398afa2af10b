"""Retention: purge samples, the engines' per-request counts and counter scrapes, and quarantined records
older than the configured number of days."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import CursorResult, Engine, delete
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import Delete

from monitor.base.config import RetentionConfig
from monitor.base.db import EngineScrape, LiveResult, QuarantinedRecord, Sample, SamplingBucket, utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PurgeReport:
    samples: int
    quarantined: int
    sampling_buckets: int
    engine_scrapes: int
    live_results: int = 0


def deleted(session: Session, statement: Delete) -> int:
    result = session.execute(statement)
    return result.rowcount if isinstance(result, CursorResult) else 0


def purge_expired(engine: Engine, config: RetentionConfig, now: datetime | None = None) -> PurgeReport:
    now = now or utcnow()
    sample_cutoff = now - timedelta(days=config.samples_days)
    quarantine_cutoff = now - timedelta(days=config.quarantine_days)
    with Session(engine) as session, session.begin():
        live = deleted(session, delete(LiveResult).where(LiveResult.received_at < sample_cutoff))
        samples = deleted(session, delete(Sample).where(Sample.received_at < sample_cutoff))
        quarantined = deleted(
            session, delete(QuarantinedRecord).where(QuarantinedRecord.received_at < quarantine_cutoff)
        )
        buckets = deleted(session, delete(SamplingBucket).where(SamplingBucket.hour < now - timedelta(days=2)))
        scrapes = deleted(session, delete(EngineScrape).where(EngineScrape.scraped_at < sample_cutoff))
    report = PurgeReport(samples, quarantined, buckets, scrapes, live)
    log.info(
        "retention purged %d samples, %d engine-reported counts, %d quarantined records and %d engine scrapes",
        report.samples,
        report.live_results,
        report.quarantined,
        report.engine_scrapes,
    )
    return report
