"""The notification policy as pure functions: routing, grouping, muting, and whether to notify.

    decide(GroupState(firing={"a1"}, resolved=set(), first_firing_at=t0), entry=None, now=t0 + 31s, timing)
    -> Decision(notify=True, kind="firing", ...)

Whether to notify depends only on the group's alerts now and the notification log entry of what
its receiver was last told (Alertmanager's rules):
- a new group waits `group_wait` before its first notification, so alerts that fire together
  arrive together;
- a change (a new firing alert, or with `send_resolved` a resolved one) is notified once
  `group_interval` has passed since the last notification;
- a group still firing with no change is notified again after `repeat_interval`;
- once nothing the receiver was told about is still firing, the incident closes (with a
  resolved notification when `send_resolved`); the next firing starts a new incident.
Silenced and inhibited alerts are left out of the group's state: they are muted, not deleted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from alerts.matchers import Matcher, match_all


@dataclass(frozen=True)
class Timing:
    group_wait: timedelta
    group_interval: timedelta
    repeat_interval: timedelta
    send_resolved: bool = True


@dataclass(frozen=True)
class GroupState:
    """A group's unmuted alerts now, by fingerprint."""

    firing: frozenset[str]
    resolved: frozenset[str]
    first_firing_at: datetime | None  # earliest start among the firing alerts


@dataclass(frozen=True)
class LogEntry:
    """What the receiver was last told about the group."""

    incident: int
    open: bool  # False once the incident closed
    firing: frozenset[str]
    resolved: frozenset[str]
    notified_at: datetime


@dataclass(frozen=True)
class Decision:
    notify: bool
    kind: str | None  # "firing" | "repeat" | "resolved" when notify
    reason: str
    closes: bool = False  # the incident is over after this decision

    @classmethod
    def wait(cls, reason: str) -> Decision:
        return cls(False, None, reason)


def decide(state: GroupState, entry: LogEntry | None, now: datetime, timing: Timing) -> Decision:
    """Whether to notify the group's receiver now, and with what kind of notification."""
    told = entry if entry is not None and entry.open else None
    if told is None:
        return _first(state, now, timing)
    since = now - told.notified_at
    new_firing = state.firing - told.firing
    newly_resolved = state.resolved & told.firing
    if not state.firing:
        if timing.send_resolved and newly_resolved:
            if since < timing.group_interval:
                return Decision.wait("resolved; waiting for group_interval")
            return Decision(True, "resolved", "every alert the receiver was told about resolved", closes=True)
        return Decision(False, None, "nothing left firing", closes=True)
    if new_firing or (timing.send_resolved and newly_resolved):
        if since < timing.group_interval:
            return Decision.wait("changed; waiting for group_interval")
        return Decision(True, "firing", f"{len(new_firing)} new firing, {len(newly_resolved)} newly resolved")
    if since >= timing.repeat_interval:
        return Decision(True, "repeat", "still firing after repeat_interval")
    return Decision.wait("no change")


def _first(state: GroupState, now: datetime, timing: Timing) -> Decision:
    if not state.firing or state.first_firing_at is None:
        return Decision.wait("nothing firing")
    if now - state.first_firing_at < timing.group_wait:
        return Decision.wait("new group; waiting for group_wait")
    return Decision(True, "firing", "new group")


def route(labels: Mapping[str, str], routes: Sequence[tuple[Sequence[Matcher], str]], default: str) -> str:
    """The receiver of the first route whose matchers all match, else the default receiver."""
    for matchers, receiver in routes:
        if match_all(matchers, labels):
            return receiver
    return default


def group_key(receiver: str, labels: Mapping[str, str], group_by: Sequence[str]) -> tuple[str, dict[str, str]]:
    """The group an alert belongs to for one receiver, and the labels that define it."""
    group_labels = {name: labels.get(name, "") for name in group_by}
    rendered = ",".join(f'{name}="{value}"' for name, value in sorted(group_labels.items()))
    return f"{receiver}:{{{rendered}}}", group_labels


@dataclass(frozen=True)
class InhibitRule:
    source: tuple[Matcher, ...]
    target: tuple[Matcher, ...]
    equal: tuple[str, ...]


@dataclass(frozen=True)
class ActiveSilence:
    id: int
    matchers: tuple[Matcher, ...]


def muted(
    alerts: Mapping[str, Mapping[str, str]],
    firing: Iterable[str],
    silences: Sequence[ActiveSilence],
    inhibit_rules: Sequence[InhibitRule],
) -> dict[str, str]:
    """Fingerprint -> why it is muted, for alerts (fingerprint -> labels) that a silence matches or
    that a firing source alert inhibits (same values of the rule's `equal` labels)."""
    return inhibited(alerts, firing, inhibit_rules, silenced(alerts, silences))


def silenced(alerts: Mapping[str, Mapping[str, str]], silences: Sequence[ActiveSilence]) -> dict[str, str]:
    """Fingerprint -> which silence mutes it, for the alerts (fingerprint -> labels) a silence matches."""
    reasons: dict[str, str] = {}
    for fp, labels in alerts.items():
        for silence in silences:
            if match_all(silence.matchers, labels):
                reasons[fp] = f"silenced by silence {silence.id}"
                break
    return reasons


def inhibited(
    alerts: Mapping[str, Mapping[str, str]],
    firing: Iterable[str],
    inhibit_rules: Sequence[InhibitRule],
    silenced_reasons: Mapping[str, str],
) -> dict[str, str]:
    """`silenced_reasons` plus, for the other alerts, the firing source alert that inhibits each."""
    reasons = dict(silenced_reasons)
    sources = [(fp, alerts[fp]) for fp in firing if fp in alerts]
    for fp, labels in alerts.items():
        if fp in reasons:
            continue
        for rule in inhibit_rules:
            if not match_all(rule.target, labels):
                continue
            source = next((s for s, sl in sources if s != fp and _inhibits(rule, sl, labels)), None)
            if source is not None:
                reasons[fp] = f"inhibited by {alerts[source].get('alertname', source)}"
                break
    return reasons


def _inhibits(rule: InhibitRule, source: Mapping[str, str], target: Mapping[str, str]) -> bool:
    return match_all(rule.source, source) and all(source.get(name) == target.get(name) for name in rule.equal)
