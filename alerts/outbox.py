"""Delivers the outbox: every queued notification reaches its receiver, in order, exactly once
where the receiver lets us check, at least once where it does not.

    report = deliver_pending(engine, {"oncall": slack_notifier}, max_backoff=timedelta(minutes=5))

Per receiver, the oldest pending message goes first and nothing overtakes it: a dispatcher works a
receiver's queue only while it holds that receiver's lease (alerts.lease), so concurrent dispatchers
(the daemon, `specwatch alerts dispatch`, a second daemon during a restart) never send one message
twice; a receiver leased by another dispatcher is skipped (`busy`). Before a send, the attempt is
recorded (committed in one transaction with a renewal of the lease, so a dispatcher that lost its lease
sends nothing); after the receiver accepted it, the message is marked sent with the receipt. A crash
in between leaves the attempt on record, so the next run first asks the notifier whether the
receiver already has it (Slack: message metadata) and only sends if not.
HTTP 429 waits for Retry-After; other failures back off exponentially up to `max_backoff`.
A message is never dropped: a receiver that stays down keeps its messages pending.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from alerts.alertmanager import queue_resends
from alerts.lease import LEASE_TTL, ReceiverLease
from alerts.model import Alert, DeliveryError, Notification, Notifier, Receipt
from alerts.notifiers import build_notifier
from monitor.base.config import AlertsConfig, SecretUnavailable
from monitor.base.db import OutboxMessage, utcnow

log = logging.getLogger(__name__)

FIRST_RETRY = timedelta(seconds=5)
FIND_SLACK = timedelta(minutes=2)  # look back a little before the attempt when checking delivery


@dataclass
class DeliveryReport:
    sent: int = 0
    recovered: int = 0  # found already delivered after an interrupted attempt
    failed: int = 0
    waiting: dict[str, datetime] = field(default_factory=dict)  # receiver -> next attempt
    busy: list[str] = field(default_factory=list)  # receivers another dispatcher is working
    errors: list[str] = field(default_factory=list)


def notification_of(row: OutboxMessage) -> Notification:
    return Notification(
        id=row.id,
        receiver=row.receiver,
        group_key=row.group_key,
        group_labels=dict(row.payload.get("group_labels", {})),
        kind=row.kind,
        alerts=[Alert.from_dict(item) for item in row.payload.get("alerts", [])],
        created_at=row.created_at,
        incident=row.incident,
    )


def backoff(attempts: int, max_backoff: timedelta) -> timedelta:
    return min(max_backoff, FIRST_RETRY * 2 ** max(0, attempts - 1))


def deliver_pending(
    engine: Engine,
    notifiers: Mapping[str, Notifier],
    *,
    max_backoff: timedelta = timedelta(minutes=5),
    clock: Callable[[], datetime] = utcnow,
    lease_ttl: timedelta = LEASE_TTL,
) -> DeliveryReport:
    """Sends what is pending for each receiver, oldest first, until its queue is empty or a
    delivery fails. Messages for receivers without a notifier stay pending (logged); receivers
    another dispatcher holds are left to it."""
    report = DeliveryReport()
    for receiver in pending_receivers(engine):
        notifier = notifiers.get(receiver)
        if notifier is None:
            report.errors.append(f"no receiver named {receiver!r} is configured; its messages stay pending")
            log.error("%s", report.errors[-1])
            continue
        with ReceiverLease(engine, receiver, lease_ttl) as lease:
            if lease.held:
                _deliver_receiver(engine, lease, notifier, max_backoff, clock, report)
            else:
                report.busy.append(receiver)
                log.info("outbox %s: another dispatcher is sending its messages; left to it", receiver)
    return report


def pending_receivers(engine: Engine) -> list[str]:
    with Session(engine) as session:
        query = select(OutboxMessage.receiver).where(OutboxMessage.sent_at.is_(None)).distinct()
        return sorted(session.scalars(query))


def _deliver_receiver(
    engine: Engine,
    lease: ReceiverLease,
    notifier: Notifier,
    max_backoff: timedelta,
    clock: Callable[[], datetime],
    report: DeliveryReport,
) -> None:
    receiver = lease.receiver
    while True:
        with Session(engine, expire_on_commit=False) as session:
            row = session.scalars(
                select(OutboxMessage)
                .where(OutboxMessage.receiver == receiver, OutboxMessage.sent_at.is_(None))
                .order_by(OutboxMessage.id)
                .limit(1)
            ).first()
            if row is None:
                return
            now = clock()
            if row.next_attempt_at is not None and row.next_attempt_at > now:
                report.waiting[receiver] = row.next_attempt_at
                return
            if not lease.held:
                return
            if not _deliver_one(session, lease, row, notifier, now, max_backoff, clock, report):
                if lease.held:
                    report.waiting[receiver] = row.next_attempt_at or now
                return


def _deliver_one(
    session: Session,
    lease: ReceiverLease,
    row: OutboxMessage,
    notifier: Notifier,
    now: datetime,
    max_backoff: timedelta,
    clock: Callable[[], datetime],
    report: DeliveryReport,
) -> bool:
    notification = notification_of(row)
    parent = parent_receipt(session, row)
    interrupted = row.attempted_at is not None
    try:
        if interrupted:
            assert row.attempted_at is not None
            found = notifier.find_delivered(notification, parent, since=row.attempted_at - FIND_SLACK)
            if found is not None:
                _mark_sent(session, row, found, clock())
                report.recovered += 1
                log.info("notification %d was already delivered to %s before an interruption", row.id, row.receiver)
                return True
        row.attempted_at = now
        if not lease.renew(session):
            session.rollback()
            return False
        session.commit()
        interrupted = False
        receipt = notifier.send(notification, parent)
    except DeliveryError as error:
        # a failed check keeps the attempt on record: the next run checks again before sending
        _record_failure(session, row, error, now, max_backoff, keep_attempt=interrupted or error.maybe_delivered)
        report.failed += 1
        report.errors.append(f"{row.receiver}: notification {row.id}: {error}")
        return False
    _mark_sent(session, row, receipt, clock())
    report.sent += 1
    return True


def parent_receipt(session: Session, row: OutboxMessage) -> Receipt | None:
    """The receipt of the first delivered message of the same group incident, if any."""
    query = (
        select(OutboxMessage.receipt)
        .where(
            OutboxMessage.receiver == row.receiver,
            OutboxMessage.group_key == row.group_key,
            OutboxMessage.incident == row.incident,
            OutboxMessage.sent_at.is_not(None),
            OutboxMessage.id < row.id,
        )
        .order_by(OutboxMessage.id)
        .limit(1)
    )
    return Receipt.from_dict(session.scalars(query).first())


def _mark_sent(session: Session, row: OutboxMessage, receipt: Receipt, now: datetime) -> None:
    row.sent_at = now
    row.receipt = receipt.to_dict()
    row.last_error = None
    session.commit()


def _record_failure(
    session: Session,
    row: OutboxMessage,
    error: DeliveryError,
    now: datetime,
    max_backoff: timedelta,
    keep_attempt: bool,
) -> None:
    row.attempts += 1
    wait = timedelta(seconds=error.retry_after) if error.retry_after is not None else backoff(row.attempts, max_backoff)
    row.next_attempt_at = now + wait
    row.last_error = str(error)[:500]
    if not keep_attempt:
        row.attempted_at = None
    session.commit()
    seconds = wait.total_seconds()
    log.warning("delivery to %s failed (attempt %d), retry in %.0fs: %s", row.receiver, row.attempts, seconds, error)


def pending_count(engine: Engine) -> int:
    with Session(engine) as session:
        return session.scalar(select(func.count()).where(OutboxMessage.sent_at.is_(None))) or 0


def notifiers_for(config: AlertsConfig) -> dict[str, Notifier]:
    """A notifier per configured receiver; one whose secret cannot be read is left out (logged),
    so its messages stay pending until it is fixed."""
    notifiers: dict[str, Notifier] = {}
    for name, receiver in config.receivers.items():
        try:
            notifiers[name] = build_notifier(name, receiver)
        except (ValueError, SecretUnavailable) as error:
            log.error("receiver %s is not usable: %s", name, error)
    return notifiers


def dispatch(config: AlertsConfig, engine: Engine, *, clock: Callable[[], datetime] = utcnow) -> DeliveryReport:
    """Queues the Alertmanager resends that are due (alerts.alertmanager), then sends the outbox through
    the configured receivers."""
    queue_resends(config, engine, clock())
    return deliver_pending(
        engine, notifiers_for(config), max_backoff=timedelta(seconds=config.max_backoff_s), clock=clock
    )
