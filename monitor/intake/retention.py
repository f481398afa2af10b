"""Retention: purge samples and quarantined records older than the configured number of days."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, delete
from sqlalchemy.orm import Session

from monitor.config import RetentionConfig
from monitor.db import QuarantinedRecord, Sample, SamplingBucket, utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PurgeReport:
    samples: int
    quarantined: int
    sampling_buckets: int


def purge_expired(engine: Engine, config: RetentionConfig, now: datetime | None = None) -> PurgeReport:
    now = now or utcnow()
    sample_cutoff = now - timedelta(days=config.samples_days)
    quarantine_cutoff = now - timedelta(days=config.quarantine_days)
    with Session(engine) as session, session.begin():
        samples = session.execute(delete(Sample).where(Sample.received_at < sample_cutoff)).rowcount
        quarantined = session.execute(
            delete(QuarantinedRecord).where(QuarantinedRecord.received_at < quarantine_cutoff)
        ).rowcount
        buckets = session.execute(
            delete(SamplingBucket).where(SamplingBucket.hour < now - timedelta(days=2))
        ).rowcount
    report = PurgeReport(samples or 0, quarantined or 0, buckets or 0)
    log.info("retention purged %d samples and %d quarantined records", report.samples, report.quarantined)
    return report
