"""Health detectors: is the pipeline itself keeping up? Their findings go through the same door
as drift findings (evaluate.deliver_findings) and become ReplayStalled / IntakeErrorsHigh alerts.

    health_findings(config, engine, draft_version, now)
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from monitor.config import Config
from monitor.db import QuarantinedRecord
from monitor.drift import WARNING, Finding
from monitor.metrics import replay_backlog

HEALTH_DETECTORS = ("replay_stalled", "intake_errors")
ALL_TRAFFIC = "*"


def replay_stalled(engine: Engine, draft_version: str, stall_after_s: float, now: datetime) -> Finding | None:
    pending, waited_s = replay_backlog(engine, draft_version, now=now)
    if waited_s <= stall_after_s:
        return None
    return Finding(
        detector="replay_stalled",
        segment=ALL_TRAFFIC,
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
        segment=ALL_TRAFFIC,
        window="1h",
        severity=WARNING,
        summary=f"{quarantined} records quarantined in the last hour (limit {per_hour_limit}); "
        "see `specwatch intake errors`",
        evidence={"quarantined": quarantined, "limit": per_hour_limit},
    )


def health_findings(config: Config, engine: Engine, draft_version: str, now: datetime) -> list[Finding]:
    found = [
        replay_stalled(engine, draft_version, config.replay.stall_after_s, now),
        intake_errors(engine, config.intake.quarantined_per_hour_alert, now),
    ]
    return [finding for finding in found if finding is not None]
