"""Health detectors: is the pipeline itself keeping up? Their findings go through the same door
as drift findings (evaluate.deliver_findings) and become ReplayStalled / IntakeErrorsHigh alerts.

    health_findings(config, engine, draft_version, now)
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from monitor.base.config import Config
from monitor.base.db import HeadEvent, QuarantinedRecord, RetrainJob
from monitor.base.results import replay_backlog
from monitor.base.stats import ALL_SEGMENTS
from monitor.evaluation.finding import WARNING, Finding

HEALTH_DETECTORS = ("replay_stalled", "intake_errors", "retrain_failed", "deploy_rolled_back")
ROLLBACK_ALERT_HOURS = 24


def replay_stalled(engine: Engine, draft_version: str, stall_after_s: float, now: datetime) -> Finding | None:
    pending, waited_s = replay_backlog(engine, draft_version, now=now)
    if waited_s <= stall_after_s:
        return None
    return Finding(
        detector="replay_stalled",
        segment=ALL_SEGMENTS,
        window=f"{int(stall_after_s)}s",
        severity=WARNING,
        summary=f"{pending} samples wait for replay; the oldest for {waited_s / 60:.0f} min "
        f"(limit {stall_after_s / 60:.0f} min)",
        evidence={"pending": pending, "oldest_wait_s": round(waited_s, 1), "stall_after_s": stall_after_s},
    )


def intake_errors(engine: Engine, per_hour_limit: int, now: datetime) -> Finding | None:
    query = (
        select(func.count())
        .select_from(QuarantinedRecord)
        .where(QuarantinedRecord.received_at > now - timedelta(hours=1))
    )
    with Session(engine) as session:
        quarantined = session.scalar(query) or 0
    if quarantined <= per_hour_limit:
        return None
    return Finding(
        detector="intake_errors",
        segment=ALL_SEGMENTS,
        window="1h",
        severity=WARNING,
        summary=f"{quarantined} records quarantined in the last hour (limit {per_hour_limit}); "
        "see `specwatch intake errors`",
        evidence={"quarantined": quarantined, "limit": per_hour_limit},
    )


def retrain_failed(engine: Engine) -> Finding | None:
    """The latest retrain job failed or was interrupted (and none finished since)."""
    query = select(RetrainJob).where(RetrainJob.state.in_(["succeeded", "refused", "failed", "interrupted"]))
    with Session(engine) as session:
        job = session.scalars(query.order_by(RetrainJob.id.desc()).limit(1)).first()
        if job is None or job.state not in ("failed", "interrupted"):
            return None
        return Finding(
            detector="retrain_failed",
            segment=ALL_SEGMENTS,
            window="latest",
            severity=WARNING,
            summary=f"retrain job {job.id} ({job.trigger}) {job.state}: {(job.error or '')[:300]}",
            evidence={"job": job.id, "trigger": job.trigger, "state": job.state, "stage": job.progress.get("stage")},
        )


def deploy_rolled_back(engine: Engine, now: datetime) -> Finding | None:
    """The live head changed last by a rollback, within the last ROLLBACK_ALERT_HOURS hours."""
    query = select(HeadEvent).where(HeadEvent.event.in_(["deployed", "rolled_back"])).order_by(HeadEvent.id.desc())
    with Session(engine) as session:
        event = session.scalars(query.limit(1)).first()
        if event is None or event.event != "rolled_back" or now - event.at > timedelta(hours=ROLLBACK_ALERT_HOURS):
            return None
        return Finding(
            detector="deploy_rolled_back",
            segment=ALL_SEGMENTS,
            window=f"{ROLLBACK_ALERT_HOURS}h",
            severity="critical",
            summary=f"head {event.previous_version} was rolled back to {event.version}: {event.reason[:300]}",
            evidence={"rolled_back": event.previous_version, "live": event.version, **event.details.get("watch", {})},
        )


def health_findings(config: Config, engine: Engine, draft_version: str, now: datetime) -> list[Finding]:
    found = [
        replay_stalled(engine, draft_version, config.replay.stall_after_s, now) if config.replays else None,
        intake_errors(engine, config.intake.quarantined_per_hour_alert, now),
        retrain_failed(engine),
        deploy_rolled_back(engine, now),
    ]
    return [finding for finding in found if finding is not None]
