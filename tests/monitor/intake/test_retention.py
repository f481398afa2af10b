from datetime import timedelta

from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session

from monitor.base.config import Config, RetentionConfig, Secret
from monitor.base.db import QuarantinedRecord, Sample, utcnow
from monitor.intake.pipeline import IntakePipeline, RawRecord
from monitor.intake.retention import purge_expired
from tests.monitor.intake.traffic import line


def test_purges_only_what_is_past_retention(config: Config, engine: Engine) -> None:
    pipeline = IntakePipeline(config, engine, Secret("salt"))
    batch = [RawRecord(position=f"line {i}", data=line(i).rstrip()) for i in range(6)]
    batch.append(RawRecord(position="line 99", data=b"{oops"))
    pipeline.ingest("test", batch)
    old = utcnow() - timedelta(days=40)
    with Session(engine) as session, session.begin():
        session.execute(update(Sample).where(Sample.id <= 2).values(received_at=old))
        session.execute(update(QuarantinedRecord).values(received_at=old))
    report = purge_expired(engine, RetentionConfig(samples_days=30, quarantine_days=14))
    assert (report.samples, report.quarantined) == (2, 1)
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(Sample)) == 4
        assert session.scalar(select(func.count()).select_from(QuarantinedRecord)) == 0


def test_engine_counts_are_purged_with_the_samples_they_came_with(config: Config, engine: Engine) -> None:
    from monitor.base.db import LiveResult
    from tests.monitor.intake.test_live_intake import take_in, with_engine_counts

    take_in(config, engine, [with_engine_counts(i) for i in range(4)])
    old = utcnow() - timedelta(days=40)
    with Session(engine) as session, session.begin():
        session.execute(update(LiveResult).where(LiveResult.id <= 3).values(received_at=old))
        session.execute(update(Sample).where(Sample.id <= 3).values(received_at=old))
    report = purge_expired(engine, RetentionConfig(samples_days=30))
    assert (report.samples, report.live_results) == (3, 3)
    with Session(engine) as session:
        [kept] = session.scalars(select(LiveResult))
        assert kept.sample_id == session.scalars(select(Sample.id)).one()
