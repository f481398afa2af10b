"""Alertmanager as a receiver: specwatch's alerts in the shape of its `POST /api/v2/alerts`, and the
re-posting that keeps firing alerts alive there.

    body = postable_alerts(notification.alerts, now, lease=timedelta(minutes=4), static_labels={}, fallback_url="")
    queue_resends(config.alerts, engine)        # `resend` outbox rows for the receivers that are due

Alertmanager resolves an alert by itself once its endsAt has passed. So a firing alert is posted with
endsAt = now + `lease` and posted again every `resend_interval` while it fires (Prometheus does the same:
resend every 1m, endsAt 4 x that); a resolution is posted with endsAt = the moment specwatch resolved it.
A resend goes through the outbox like every notification (retried while Alertmanager is down, after
whatever was queued before it); one per receiver waits at a time, and of the sent ones only the newest
is kept, as the clock for the next.

What a resend carries: the alerts the receiver was told are firing (the open notification log entries)
that still fire and that no silence or inhibition of specwatch's own mutes.

Labels: the alert's own (alertname, severity, segment), its detector, and the receiver's static_labels;
names are made valid label names and empty values are left out (Alertmanager treats them as absent).
Annotations: summary, description (the rule's meaning and the headline numbers: alpha, interval,
samples, threshold, window), each number on its own, runbook_url and report_url; the summaries are
built from numbers and segment names, never from sample text. generatorURL: the report URL, else the
receiver's generator_url, else none.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session

from alerts import render
from alerts.lifecycle import active_silences, as_alert, inhibit_rules_of
from alerts.model import FIRING, RESOLVED, Alert
from alerts.policy import muted
from monitor.base.config import AlertsConfig, window_length
from monitor.base.db import AlertRecord, NotificationLogEntry, OutboxMessage, as_utc, utcnow

RESEND = "resend"  # the outbox kind of a re-post
ALERTMANAGER = "alertmanager"
_NOT_IN_LABEL_NAME = re.compile(r"[^A-Za-z0-9_]")


def label_name(name: str) -> str:
    """`name` as a valid Alertmanager label name ([A-Za-z_][A-Za-z0-9_]*): other characters become "_"."""
    cleaned = _NOT_IN_LABEL_NAME.sub("_", name)
    return cleaned if cleaned and not cleaned[0].isdigit() else f"_{cleaned}"


def alert_labels(alert: Alert, static_labels: Mapping[str, str]) -> dict[str, str]:
    """The receiver's static labels, the alert's detector, then the alert's own labels (which win)."""
    detector = alert.annotations.get("detector")
    merged: dict[str, Any] = {**static_labels, **({"detector": detector} if detector else {}), **alert.labels}
    return {label_name(name): str(value) for name, value in merged.items() if str(value)}


def alert_annotations(alert: Alert) -> dict[str, str]:
    numbers = render.evidence_fields(alert)
    annotations = {"summary": render.summary(alert), "description": description(alert, numbers)}
    annotations |= {label_name(name): value for name, value in numbers}
    for key in ("runbook_url", "report_url"):
        value = alert.annotations.get(key)
        if isinstance(value, str):
            annotations[key] = value
    return {name: value for name, value in annotations.items() if value}


def description(alert: Alert, numbers: Sequence[tuple[str, str]]) -> str:
    """e.g. "a segment's alpha is confidently below its threshold; alpha 0.410, interval 0.360–0.470 (95%), ..."."""
    meaning = " ".join(str(alert.annotations.get("description") or "").split())
    evidence = ", ".join(f"{name} {value}" for name, value in numbers)
    return "; ".join(part for part in (meaning, evidence) if part)


def generator_url(alert: Alert, fallback: str) -> str:
    report = alert.annotations.get("report_url")
    if isinstance(report, str) and report.lower().startswith(("http://", "https://")):
        return report
    return fallback


def rfc3339(moment: datetime) -> str:
    """A datetime as Alertmanager reads it; a naive one is UTC (as the database stores them)."""
    return as_utc(moment).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def postable_alert(
    alert: Alert, now: datetime, lease: timedelta, static_labels: Mapping[str, str], fallback_url: str
) -> dict[str, Any]:
    """One alert of the request body: a firing one ends `lease` after `now`, a resolved one when it resolved."""
    ends_at = (alert.ends_at or now) if alert.status == RESOLVED else now + lease
    body: dict[str, Any] = {
        "labels": alert_labels(alert, static_labels),
        "annotations": alert_annotations(alert),
        "startsAt": rfc3339(alert.starts_at),
        "endsAt": rfc3339(max(as_utc(ends_at), as_utc(alert.starts_at))),
    }
    url = generator_url(alert, fallback_url)
    if url:
        body["generatorURL"] = url
    return body


def postable_alerts(
    alerts: Iterable[Alert], now: datetime, *, lease: timedelta, static_labels: Mapping[str, str], fallback_url: str
) -> list[dict[str, Any]]:
    return [postable_alert(alert, now, lease, static_labels, fallback_url) for alert in alerts]


# ---- re-posting -------------------------------------------------------------------------------------


def queue_resends(config: AlertsConfig, engine: Engine, now: datetime | None = None) -> list[int]:
    """Queues a resend for each alertmanager receiver that is due (its last resend was sent and is at
    least `resend_interval` old) and has alerts to keep alive; returns the outbox ids. Silences are
    matched after the read, with no transaction open (as in alerts.lifecycle)."""
    now = now or utcnow()
    with Session(engine) as session:
        due = [name for name in alertmanager_receivers(config) if resend_due(session, config, name, now)]
        if not due:
            return []
        told = told_firing(session, due)
        if not any(told.values()):
            return []
        rows = session.scalars(select(AlertRecord).where(AlertRecord.status == FIRING))
        firing = {row.fingerprint: as_alert(row) for row in rows}
        silences = active_silences(session, now)
    labels = {fp: alert.labels for fp, alert in firing.items()}
    mutes = muted(labels, list(firing), silences, inhibit_rules_of(config))
    alive = {fp: alert for fp, alert in firing.items() if fp not in mutes}
    queued = []
    with Session(engine) as session, session.begin():
        for receiver in due:
            alerts = [alive[fp] for fp in sorted(told.get(receiver, set())) if fp in alive]
            if alerts:
                queued.append(_queue_resend(session, receiver, alerts, now))
    return queued


def alertmanager_receivers(config: AlertsConfig) -> list[str]:
    return sorted(name for name, receiver in config.receivers.items() if receiver.type == ALERTMANAGER)


def resend_due(session: Session, config: AlertsConfig, receiver: str, now: datetime) -> bool:
    """No resend waits for this receiver and the newest sent one is at least resend_interval old."""
    interval = window_length(config.receivers[receiver].resend_interval)
    query = (
        select(OutboxMessage.created_at, OutboxMessage.sent_at)
        .where(OutboxMessage.receiver == receiver, OutboxMessage.kind == RESEND)
        .order_by(OutboxMessage.id.desc())
        .limit(1)
    )
    last = session.execute(query).first()
    if last is None:
        return True
    created_at, sent_at = last
    return sent_at is not None and as_utc(now) - as_utc(created_at) >= interval


def told_firing(session: Session, receivers: Sequence[str]) -> dict[str, set[str]]:
    """Receiver -> fingerprints its open incidents told it are firing."""
    told: dict[str, set[str]] = {}
    query = select(NotificationLogEntry).where(
        NotificationLogEntry.receiver.in_(list(receivers)), NotificationLogEntry.open.is_(True)
    )
    for entry in session.scalars(query):
        told.setdefault(entry.receiver, set()).update(entry.firing)
    return told


def _queue_resend(session: Session, receiver: str, alerts: Sequence[Alert], now: datetime) -> int:
    """Adds the resend and drops the receiver's sent ones: the new row times the next."""
    session.execute(
        delete(OutboxMessage).where(
            OutboxMessage.receiver == receiver, OutboxMessage.kind == RESEND, OutboxMessage.sent_at.is_not(None)
        )
    )
    row = OutboxMessage(
        receiver=receiver,
        group_key=f"{receiver}:{RESEND}",
        incident=0,
        kind=RESEND,
        payload={"group_labels": {}, "alerts": [alert.to_dict() for alert in alerts]},
        created_at=now,
        attempts=0,
    )
    session.add(row)
    session.flush()
    return row.id
