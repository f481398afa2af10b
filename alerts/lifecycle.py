"""From findings to queued notifications, in one transaction.

    raise_findings(config.alerts, engine, findings, evaluated={"threshold", "change", "input_drift"})

1. Rules turn findings into alerts: the rule whose detector produced the finding names the
   alert and sets its severity; labels are alertname, severity and segment, so the alert's
   identity (fingerprint) is stable from one evaluation to the next.
2. Observation: an alert whose condition holds is firing; one whose detector ran (is in
   `evaluated`) and did not find it again is clear, and resolves once it has been clear for
   `resolve_after`. Detectors that did not run leave their alerts as they are.
3. Planning: alerts are routed to receivers, grouped, muted by silences and inhibition, and
   the notification log decides (alerts.policy.decide) what to queue in the outbox.

Silences carry operators' regexes and alert labels come from traffic, so silence matching runs
before the transaction opens (`silencing`), never while it holds the database's write lock.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import Engine, or_, select
from sqlalchemy.orm import Session

from alerts.matchers import MatcherError, parse_all
from alerts.model import FIRING, RESOLVED, Alert, Status, fingerprint
from alerts.policy import (
    ActiveSilence,
    GroupState,
    InhibitRule,
    LogEntry,
    Timing,
    decide,
    group_key,
    inhibited,
    route,
    silenced,
)
from monitor.base.config import AlertRule, AlertsConfig, window_length
from monitor.base.db import AlertRecord, NotificationLogEntry, OutboxMessage, Silence, utcnow

log = logging.getLogger(__name__)


class FindingLike(Protocol):
    """What a detector hands over (monitor.evaluation.drift.Finding has this shape)."""

    @property
    def detector(self) -> str: ...
    @property
    def segment(self) -> str: ...
    @property
    def window(self) -> str: ...
    @property
    def summary(self) -> str: ...
    @property
    def evidence(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Condition:
    """An alert whose condition holds now."""

    detector: str
    labels: dict[str, str]
    annotations: dict[str, Any]

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.labels)


@dataclass
class LifecycleReport:
    fired: list[str] = field(default_factory=list)  # alertname{segment} that started firing
    resolved: list[str] = field(default_factory=list)
    queued: list[str] = field(default_factory=list)  # "receiver kind group_key"


def conditions_from(findings: Iterable[FindingLike], config: AlertsConfig) -> list[Condition]:
    """One condition per (rule, segment); when a detector reports a segment in several windows,
    the first finding's evidence is shown and every window is listed."""
    rules_by_detector: dict[str, list[tuple[str, AlertRule]]] = defaultdict(list)
    for name, rule in config.rules.items():
        rules_by_detector[rule.detector].append((name, rule))
    found: dict[str, Condition] = {}
    for finding in findings:
        for name, rule in rules_by_detector.get(finding.detector, []):
            labels = {"alertname": name, "severity": rule.severity, "segment": finding.segment}
            key = fingerprint(labels)
            if key in found:
                found[key].annotations["windows"].append(finding.window)
                continue
            found[key] = Condition(finding.detector, labels, _annotations(finding, rule, config))
    return list(found.values())


def _annotations(finding: FindingLike, rule: AlertRule, config: AlertsConfig) -> dict[str, Any]:
    return {
        "summary": finding.summary,
        "description": rule.description,
        "detector": finding.detector,
        "evidence": dict(finding.evidence),
        "window": finding.window,
        "windows": [finding.window],
        "runbook_url": rule.runbook_url,
        "report_url": config.report_url,
    }


def raise_findings(
    config: AlertsConfig,
    engine: Engine,
    findings: Iterable[FindingLike],
    evaluated: Collection[str],
    now: datetime | None = None,
) -> LifecycleReport:
    """Records what the detectors in `evaluated` found and queues the notifications it calls for."""
    now = now or utcnow()
    report = LifecycleReport()
    conditions = conditions_from(findings, config)
    silences = silencing(engine, conditions, now)
    with Session(engine) as session, session.begin():
        observe(session, conditions, evaluated, window_length(config.resolve_after), now, report)
        plan(session, config, now, report, silences)
    for line in report.fired:
        log.warning("alert firing: %s", line)
    for line in report.resolved:
        log.info("alert resolved: %s", line)
    return report


def observe(
    session: Session,
    conditions: Sequence[Condition],
    evaluated: Collection[str],
    resolve_after: timedelta,
    now: datetime,
    report: LifecycleReport,
) -> None:
    active = {condition.fingerprint: condition for condition in conditions}
    query = select(AlertRecord).where(
        or_(
            AlertRecord.fingerprint.in_(list(active)),
            (AlertRecord.status == FIRING) & AlertRecord.detector.in_(list(evaluated)),
        )
    )
    known = {row.fingerprint: row for row in session.scalars(query)}
    for fp, condition in active.items():
        row = known.get(fp)
        if row is None:
            row = AlertRecord(
                fingerprint=fp,
                alertname=condition.labels["alertname"],
                detector=condition.detector,
                labels=condition.labels,
                status=RESOLVED,
                starts_at=now,
            )
            session.add(row)
        if row.status != FIRING:
            row.status, row.starts_at, row.ends_at = FIRING, now, None
            report.fired.append(_describe(condition.labels))
        row.annotations = condition.annotations
        row.last_active_at, row.clear_since = now, None
    for fp, row in known.items():
        if fp in active or row.status != FIRING:
            continue
        row.clear_since = row.clear_since or now
        if now - row.clear_since >= resolve_after:
            row.status, row.ends_at = RESOLVED, now
            report.resolved.append(_describe(row.labels))


def _describe(labels: dict[str, Any]) -> str:
    return f"{labels.get('alertname')}{{segment={labels.get('segment', '')}}}"


def timing_of(config: AlertsConfig) -> Timing:
    return Timing(
        group_wait=window_length(config.group_wait),
        group_interval=window_length(config.group_interval),
        repeat_interval=window_length(config.repeat_interval),
        send_resolved=config.send_resolved,
    )


def active_silences(session: Session, now: datetime) -> list[ActiveSilence]:
    """The silences in force at `now`; one whose matchers are refused today (stored before a rule
    tightened) is left out, logged, so it can be re-created."""
    query = select(Silence).where(Silence.starts_at <= now, Silence.ends_at > now).order_by(Silence.id)
    active = []
    for row in session.scalars(query):
        try:
            active.append(ActiveSilence(row.id, tuple(parse_all(row.matchers))))
        except MatcherError as error:
            log.error("silence %d is ignored: %s", row.id, error)
    return active


@dataclass(frozen=True)
class Silencing:
    """The active silences and what they mute, worked out before the planning transaction opens."""

    silences: list[ActiveSilence]
    verdicts: dict[str, str | None]  # fingerprint -> the silence muting it, None when none does

    def reasons(self, alerts: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
        """Fingerprint -> silence, for `alerts`; one not judged beforehand (a concurrent evaluation
        raised it) is matched now."""
        unjudged = {fp: labels for fp, labels in alerts.items() if fp not in self.verdicts}
        judged = {fp: reason for fp, reason in self.verdicts.items() if reason and fp in alerts}
        return judged | silenced(unjudged, self.silences)


def silencing(engine: Engine, conditions: Sequence[Condition], now: datetime) -> Silencing:
    """Matches the active silences against every alert planning can see (those firing now, those whose
    receivers were told about, and `conditions`) after a read that holds no transaction open."""
    with Session(engine) as session:
        silences = active_silences(session, now)
        told = {fp for row in session.scalars(select(NotificationLogEntry)) if row.open for fp in row.firing}
        query = select(AlertRecord).where(or_(AlertRecord.status == FIRING, AlertRecord.fingerprint.in_(list(told))))
        labels = {row.fingerprint: dict(row.labels) for row in session.scalars(query)}
    labels |= {condition.fingerprint: condition.labels for condition in conditions}
    reasons = silenced(labels, silences)
    return Silencing(silences, {fp: reasons.get(fp) for fp in labels})


def inhibit_rules_of(config: AlertsConfig) -> list[InhibitRule]:
    return [
        InhibitRule(tuple(parse_all(rule.source_matchers)), tuple(parse_all(rule.target_matchers)), tuple(rule.equal))
        for rule in config.inhibit_rules
    ]


@dataclass
class Group:
    receiver: str
    key: str
    labels: dict[str, str]
    alerts: list[AlertRecord] = field(default_factory=list)


def plan(session: Session, config: AlertsConfig, now: datetime, report: LifecycleReport, silences: Silencing) -> None:
    """Decides, for every alert group, whether its receiver is notified now, and queues it."""
    entries = {(row.receiver, row.group_key): row for row in session.scalars(select(NotificationLogEntry))}
    told = {fp for row in entries.values() if row.open for fp in row.firing}
    query = select(AlertRecord).where(or_(AlertRecord.status == FIRING, AlertRecord.fingerprint.in_(list(told))))
    records = list(session.scalars(query))
    labels = {row.fingerprint: row.labels for row in records}
    mutes = inhibited(
        labels,
        [row.fingerprint for row in records if row.status == FIRING],
        inhibit_rules_of(config),
        silences.reasons(labels),
    )
    groups = group_alerts([row for row in records if row.fingerprint not in mutes], config)
    for key, entry in entries.items():
        if entry.open and key not in groups:
            groups[key] = Group(entry.receiver, entry.group_key, {})
    timing = timing_of(config)
    for group in groups.values():
        known = entries.get((group.receiver, group.key))
        state = group_state(group.alerts)
        decision = decide(state, _log_entry(known), now, timing)
        if decision.notify and decision.kind:
            known = record_notification(session, group, known, state, decision.kind, now)
            report.queued.append(f"{group.receiver} {decision.kind} {group.key}")
        if decision.closes and known is not None:
            known.open = False


def group_alerts(records: Iterable[AlertRecord], config: AlertsConfig) -> dict[tuple[str, str], Group]:
    routes = [(parse_all(r.matchers), r.receiver) for r in config.routes]
    groups: dict[tuple[str, str], Group] = {}
    for row in records:
        receiver = route(row.labels, routes, config.default_receiver)
        key, labels = group_key(receiver, row.labels, config.group_by)
        groups.setdefault((receiver, key), Group(receiver, key, labels)).alerts.append(row)
    return groups


def group_state(records: Sequence[AlertRecord]) -> GroupState:
    firing = [row for row in records if row.status == FIRING]
    return GroupState(
        firing=frozenset(row.fingerprint for row in firing),
        resolved=frozenset(row.fingerprint for row in records if row.status == RESOLVED),
        first_firing_at=min((row.starts_at for row in firing), default=None),
    )


def _log_entry(row: NotificationLogEntry | None) -> LogEntry | None:
    if row is None:
        return None
    return LogEntry(row.incident, row.open, frozenset(row.firing), frozenset(row.resolved), row.notified_at)


def record_notification(
    session: Session,
    group: Group,
    entry: NotificationLogEntry | None,
    state: GroupState,
    kind: str,
    now: datetime,
) -> NotificationLogEntry:
    """Queues the notification and updates the log in the caller's transaction."""
    if entry is None:
        entry = NotificationLogEntry(receiver=group.receiver, group_key=group.key, incident=0, open=False)
        session.add(entry)
    if not entry.open:
        entry.incident += 1
    told = set(entry.firing) if entry.open else set()
    shown = [row for row in group.alerts if row.status == FIRING or row.fingerprint in told]
    session.add(
        OutboxMessage(
            receiver=group.receiver,
            group_key=group.key,
            incident=entry.incident,
            kind=kind,
            payload={"group_labels": group.labels, "alerts": [as_alert(row).to_dict() for row in shown]},
            created_at=now,
            attempts=0,
        )
    )
    entry.open = True
    entry.firing = sorted(state.firing)
    entry.resolved = sorted(state.resolved)
    entry.notified_at = now
    return entry


def as_alert(row: AlertRecord) -> Alert:
    status: Status = "firing" if row.status == FIRING else "resolved"
    return Alert(dict(row.labels), dict(row.annotations), status, row.starts_at, row.ends_at)


def queue_event(
    config: AlertsConfig,
    engine: Engine,
    labels: dict[str, str],
    annotations: dict[str, Any],
    now: datetime | None = None,
) -> int:
    """Queues a one-off notification (a retrain decision, a deploy, a rollback): routed by its labels
    like an alert, a group of its own, no lifecycle. Returns the outbox id."""
    now = now or utcnow()
    routes = [(parse_all(r.matchers), r.receiver) for r in config.routes]
    receiver = route(labels, routes, config.default_receiver)
    key, group_labels = group_key(receiver, labels, config.group_by)
    event = Alert(labels, {"report_url": config.report_url, **annotations}, "firing", now)
    with Session(engine) as session, session.begin():
        row = OutboxMessage(
            receiver=receiver,
            group_key=f"{key}:event:{now.isoformat()}:{uuid.uuid4().hex[:8]}",
            incident=1,
            kind="event",
            payload={"group_labels": group_labels, "alerts": [event.to_dict()]},
            created_at=now,
            attempts=0,
        )
        session.add(row)
        session.flush()
        return row.id
