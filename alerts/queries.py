"""What people ask of the alert store: alerts with their mute state, one alert's history, silences,
and a test notification to check a route's wiring.

    alert_views(config.alerts, engine)              # firing alerts, muted or not
    add_silence(engine, ["segment=~.*lang=zh.*"], ends_at, comment="retrain running", author="dana")
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, or_, select
from sqlalchemy.orm import Session

from alerts.lifecycle import active_silences, as_alert, inhibit_rules_of, queue_event
from alerts.matchers import parse_all
from alerts.model import FIRING, Alert
from alerts.policy import muted
from monitor.base.config import AlertsConfig
from monitor.base.db import AlertRecord, OutboxMessage, Silence, utcnow


@dataclass(frozen=True)
class AlertView:
    alert: Alert
    muted_by: str | None

    def to_dict(self) -> dict[str, Any]:
        return {**self.alert.to_dict(), "muted_by": self.muted_by}


def alert_views(
    config: AlertsConfig, engine: Engine, include_resolved_since: datetime | None = None
) -> list[AlertView]:
    """Firing alerts (and those resolved since the given moment), most severe and oldest first."""
    now = utcnow()
    condition = AlertRecord.status == FIRING
    if include_resolved_since is not None:
        condition = or_(condition, AlertRecord.ends_at >= include_resolved_since)
    with Session(engine) as session:
        rows = list(session.scalars(select(AlertRecord).where(condition)))
        reasons = muted(
            {row.fingerprint: row.labels for row in rows},
            [row.fingerprint for row in rows if row.status == FIRING],
            active_silences(session, now),
            inhibit_rules_of(config),
        )
    views = [AlertView(as_alert(row), reasons.get(row.fingerprint)) for row in rows]
    order = {"critical": 0, "warning": 1, "info": 2}
    return sorted(
        views,
        key=lambda v: (v.alert.status != FIRING, order.get(v.alert.labels.get("severity", ""), 3), v.alert.starts_at),
    )


def find_alert(engine: Engine, fingerprint_prefix: str) -> AlertRecord | None:
    with Session(engine) as session:
        query = select(AlertRecord).where(AlertRecord.fingerprint.startswith(fingerprint_prefix, autoescape=True))
        rows = list(session.scalars(query.limit(2)))
    if len(rows) > 1:
        raise LookupError(f"fingerprint prefix {fingerprint_prefix!r} is ambiguous")
    return rows[0] if rows else None


def notifications_about(engine: Engine, fingerprint: str, limit: int = 50) -> list[dict[str, Any]]:
    """The notifications that carried this alert, newest first, with their delivery state."""
    with Session(engine) as session:
        rows = session.scalars(select(OutboxMessage).order_by(OutboxMessage.id.desc()).limit(limit * 20))
        found = []
        for row in rows:
            if any(item.get("fingerprint") == fingerprint for item in row.payload.get("alerts", [])):
                found.append(
                    {
                        "id": row.id,
                        "receiver": row.receiver,
                        "kind": row.kind,
                        "created_at": row.created_at,
                        "sent_at": row.sent_at,
                        "attempts": row.attempts,
                        "last_error": row.last_error,
                    }
                )
            if len(found) >= limit:
                break
    return found


def add_silence(engine: Engine, matchers: list[str], ends_at: datetime, comment: str, author: str) -> int:
    parse_all(matchers)  # refuse bad matchers before storing
    now = utcnow()
    if ends_at <= now:
        raise ValueError("a silence must end in the future")
    if not comment.strip():
        raise ValueError("a silence needs a comment saying why")
    with Session(engine) as session, session.begin():
        silence = Silence(
            matchers=matchers, starts_at=now, ends_at=ends_at, comment=comment, created_by=author, created_at=now
        )
        session.add(silence)
        session.flush()
        return silence.id


def expire_silence(engine: Engine, silence_id: int) -> bool:
    """Ends a silence now; False when there is no such active silence."""
    now = utcnow()
    with Session(engine) as session, session.begin():
        silence = session.get(Silence, silence_id)
        if silence is None or silence.ends_at <= now:
            return False
        silence.ends_at = now
        return True


def silence_rows(engine: Engine, include_expired: bool = False) -> list[dict[str, Any]]:
    now = utcnow()
    with Session(engine) as session:
        query = select(Silence).order_by(Silence.id)
        if not include_expired:
            query = query.where(Silence.ends_at > now)
        return [
            {
                "id": row.id,
                "matchers": row.matchers,
                "starts_at": row.starts_at,
                "ends_at": row.ends_at,
                "comment": row.comment,
                "created_by": row.created_by,
                "active": row.starts_at <= now < row.ends_at,
            }
            for row in session.scalars(query)
        ]


def queue_test_notification(config: AlertsConfig, engine: Engine, receiver: str) -> int:
    """Queues a sample alert for `receiver` (its own group, kind "event"); returns the outbox id."""
    labels = {"alertname": "SpecwatchTest", "severity": "info", "segment": "lang=zh"}
    annotations = {
        "summary": "test notification from `specwatch alerts test`: the route works",
        "evidence": {"alpha": 0.41, "interval": [0.36, 0.47], "samples": 120, "threshold": 0.65},
        "window": "1h",
    }
    only_to_receiver = config.model_copy(update={"routes": [], "default_receiver": receiver})
    return queue_event(only_to_receiver, engine, labels, annotations)


def outbox_row(engine: Engine, message_id: int) -> OutboxMessage | None:
    with Session(engine) as session:
        return session.get(OutboxMessage, message_id)
