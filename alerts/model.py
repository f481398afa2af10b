"""What alerts/ deals in: alerts, the notifications made of them, and the notifier contract.

An alert is identified by its labels (its fingerprint is a hash of them); a notification is one
message to one receiver about one group of alerts; a notifier delivers it and hands back a
receipt (for Slack, the channel and message ts that later thread replies attach to).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

FIRING = "firing"
RESOLVED = "resolved"
Status = Literal["firing", "resolved"]


def fingerprint(labels: Mapping[str, str]) -> str:
    """An alert's identity: a stable hash of its labels (order does not matter)."""
    canonical = json.dumps(dict(sorted(labels.items())), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Alert:
    """One alert as a notification shows it."""

    labels: dict[str, str]  # alertname, segment, severity, ...
    annotations: dict[str, Any]  # summary, evidence (alpha, interval, samples, ...), runbook_url, report_url
    status: Status
    starts_at: datetime
    ends_at: datetime | None = None

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.labels)

    @property
    def name(self) -> str:
        return self.labels.get("alertname", "alert")

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "startsAt": self.starts_at.isoformat(),
            "endsAt": self.ends_at.isoformat() if self.ends_at else None,
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Alert:
        return cls(
            labels=dict(data["labels"]),
            annotations=dict(data["annotations"]),
            status=data["status"],
            starts_at=datetime.fromisoformat(data["startsAt"]),
            ends_at=datetime.fromisoformat(data["endsAt"]) if data.get("endsAt") else None,
        )


@dataclass(frozen=True)
class Notification:
    """One message to one receiver about one group of alerts.

    `id` is the outbox row's id: unique and stable across retries and restarts, so a receiver
    (or a notifier checking whether an earlier attempt got through) can recognise a repeat.
    `kind` is "firing" (new alerts), "repeat" (still firing, repeat_interval passed),
    "resolved" (every alert of the group resolved) or "test" (`specwatch alerts test`)."""

    id: int
    receiver: str
    group_key: str
    group_labels: dict[str, str]
    kind: str
    alerts: list[Alert]
    created_at: datetime
    incident: int = 0  # the group's incident number: a resolved group that fires again starts a new one

    @property
    def status(self) -> Status:
        return "firing" if any(alert.status == FIRING for alert in self.alerts) else "resolved"

    @property
    def firing(self) -> list[Alert]:
        return [alert for alert in self.alerts if alert.status == FIRING]

    @property
    def resolved(self) -> list[Alert]:
        return [alert for alert in self.alerts if alert.status == RESOLVED]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "receiver": self.receiver,
            "group_key": self.group_key,
            "group_labels": dict(self.group_labels),
            "kind": self.kind,
            "alerts": [alert.to_dict() for alert in self.alerts],
            "created_at": self.created_at.isoformat(),
            "incident": self.incident,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Notification:
        return cls(
            id=int(data["id"]),
            receiver=data["receiver"],
            group_key=data["group_key"],
            group_labels=dict(data["group_labels"]),
            kind=data["kind"],
            alerts=[Alert.from_dict(item) for item in data["alerts"]],
            created_at=datetime.fromisoformat(data["created_at"]),
            incident=int(data.get("incident", 0)),
        )


@dataclass(frozen=True)
class Receipt:
    """What a receiver handed back for a delivered notification (JSON-ready).
    Slack with a bot token: the channel id and message ts that thread replies and edits refer to."""

    channel: str | None = None
    ts: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"channel": self.channel, "ts": self.ts, "detail": dict(self.detail)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Receipt | None:
        if not data:
            return None
        return cls(channel=data.get("channel"), ts=data.get("ts"), detail=dict(data.get("detail") or {}))


class DeliveryError(Exception):
    """A notification did not get through; the outbox keeps it and tries again.

    retry_after: seconds the receiver asked us to wait (HTTP 429 Retry-After), else None (backoff).
    maybe_delivered: the receiver may have accepted it anyway (a timeout after the request went out);
    the next attempt first asks the notifier whether it did."""

    def __init__(self, message: str, *, retry_after: float | None = None, maybe_delivered: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.maybe_delivered = maybe_delivered


class Notifier(Protocol):
    """Delivers notifications to one receiver. Implementations raise DeliveryError on any failure
    (never another exception for a network or HTTP problem) and never log secrets or raw samples."""

    name: str

    def send(self, notification: Notification, parent: Receipt | None) -> Receipt:
        """Delivers `notification`. `parent` is the receipt of the first delivered notification of
        the same group incident (None for that first one): Slack threads follow-ups under it."""
        ...

    def find_delivered(self, notification: Notification, parent: Receipt | None, since: datetime) -> Receipt | None:
        """After a crash between send and mark: the receipt of `notification` if the receiver already
        has it (looked up since `since`), else None. Notifiers that cannot tell return None, and the
        notification is sent again (at-least-once)."""
        ...
