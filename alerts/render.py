"""Slack rendering of a notification: Block Kit blocks, the fallback text, one log line per alert.

Only what an on-call engineer needs goes in: alert name, segment, status, the summary, the
headline evidence (alpha, its interval, samples, threshold, window) and links; never raw samples.

    from alerts.render import slack_blocks, fallback_text
    blocks, text = slack_blocks(notification), fallback_text(notification)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from alerts.model import FIRING, Alert, Notification

HEADER_LIMIT = 150  # Slack: header text
SECTION_LIMIT = 3000  # Slack: section text
FIELD_LIMIT = 2000  # Slack: each section field
CONTEXT_LIMIT = 2000  # Slack: each context element
MAX_ALERT_SECTIONS = 10

EMOJI = {"firing": ":rotating_light:", "resolved": ":white_check_mark:"}
LINKS = (("runbook_url", "Runbook"), ("report_url", "Report"))


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def escape(text: str) -> str:
    """Slack mrkdwn treats &, < and > as control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def group_name(notification: Notification) -> str:
    """The alertname the group is about, or a count when it mixes several."""
    if "alertname" in notification.group_labels:
        return notification.group_labels["alertname"]
    names = sorted({alert.name for alert in notification.alerts})
    return names[0] if len(names) == 1 else f"{len(notification.alerts)} alerts"


def title(notification: Notification) -> str:
    """e.g. ':rotating_light: FIRING: SpecAlphaLow (2 firing, 1 resolved)' or ':white_check_mark: RESOLVED: ...'."""
    status = notification.status
    text = f"{EMOJI[status]} {status.upper()}: {group_name(notification)}"
    if status == FIRING:
        counts = f"{len(notification.firing)} firing"
        if notification.resolved:
            counts += f", {len(notification.resolved)} resolved"
        text += f" ({counts})"
    if notification.kind == "test":
        text = f"[test] {text}"
    return truncate(text, HEADER_LIMIT)


def summary(alert: Alert) -> str:
    return " ".join(str(alert.annotations.get("summary") or "").split())


def log_line(alert: Alert) -> str:
    """One line for a log: alertname, segment, status and the summary."""
    segment = alert.labels.get("segment", "-")
    return f"{alert.name} segment={segment} status={alert.status}: {summary(alert)}"


def fallback_text(notification: Notification) -> str:
    """The `text` Slack shows in notifications and where blocks cannot render. Slack formats it as
    mrkdwn, so labels and summaries are escaped as in the blocks: `<!channel>` in a segment stays text."""
    lines = [escape(title(notification))]
    lines += [f"• {escape(log_line(alert))}" for alert in _ordered(notification.alerts)[:MAX_ALERT_SECTIONS]]
    hidden = len(notification.alerts) - MAX_ALERT_SECTIONS
    if hidden > 0:
        lines.append(f"…and {hidden} more")
    return truncate("\n".join(lines), SECTION_LIMIT)


def slack_blocks(notification: Notification) -> list[dict[str, Any]]:
    """Header, a section per alert (at most ten, then 'and N more'), then links and identifiers."""
    alerts = _ordered(notification.alerts)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title(notification), "emoji": True}}
    ]
    blocks += [alert_section(alert) for alert in alerts[:MAX_ALERT_SECTIONS]]
    hidden = len(alerts) - MAX_ALERT_SECTIONS
    if hidden > 0:
        blocks.append(_mrkdwn_section(f"…and {hidden} more alert{'s' if hidden > 1 else ''}"))
    blocks.append(_context(_context_texts(notification)))
    return blocks


def alert_section(alert: Alert) -> dict[str, Any]:
    segment = alert.labels.get("segment", "-")
    headline = f"{EMOJI[alert.status]} *{escape(alert.name)}* · `{escape(segment)}` · {alert.status}"
    section = _mrkdwn_section(f"{headline}\n{escape(summary(alert))}")
    fields = evidence_fields(alert)
    if fields:
        section["fields"] = [
            {"type": "mrkdwn", "text": truncate(f"*{name}*\n{escape(value)}", FIELD_LIMIT)} for name, value in fields
        ]
    return section


def evidence_fields(alert: Alert) -> list[tuple[str, str]]:
    """(name, value) pairs for the evidence worth a glance, in a fixed order; at most ten (Slack's limit)."""
    evidence = alert.annotations.get("evidence")
    evidence = evidence if isinstance(evidence, dict) else {}
    fields = [(name, render(evidence)) for name, render in _FIELD_RENDERERS]
    window = _window(alert, evidence)
    if window:
        fields.append(("window", window))
    return [(name, value) for name, value in fields if value][:10]


def links(alerts: Iterable[Alert]) -> list[tuple[str, str]]:
    """(label, url) for each distinct runbook and report link among the alerts."""
    found: list[tuple[str, str]] = []
    for alert in alerts:
        for key, label in LINKS:
            url = alert.annotations.get(key)
            if isinstance(url, str) and url.startswith(("http://", "https://")) and (label, url) not in found:
                found.append((label, url))
    return found


def _ordered(alerts: list[Alert]) -> list[Alert]:
    """Firing alerts first, each kind in the order given."""
    return sorted(alerts, key=lambda alert: alert.status != FIRING)


def _mrkdwn_section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": truncate(text, SECTION_LIMIT)}}


def _context(texts: list[str]) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": truncate(t, CONTEXT_LIMIT)} for t in texts]}


def _context_texts(notification: Notification) -> list[str]:
    texts = [f"<{url}|{label}>" for label, url in links(notification.alerts)][:9]  # context: at most 10 elements
    group = ", ".join(f"{key}={value}" for key, value in sorted(notification.group_labels.items())) or "-"
    texts.append(escape(f"specwatch · {group} · incident {notification.incident} · notification {notification.id}"))
    return texts


def _number(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return ""
    return str(value) if isinstance(value, int) else f"{value:.{digits}f}"


def _interval(evidence: dict[str, Any]) -> str:
    bounds = evidence.get("interval")
    if not (isinstance(bounds, list | tuple) and len(bounds) == 2):
        bounds = (evidence.get("alpha_low"), evidence.get("alpha_high"))
    low, high = (_number(bound) for bound in bounds)
    if not (low and high):
        return ""
    confidence = evidence.get("confidence")
    level = f" ({confidence:.0%})" if isinstance(confidence, float) else ""
    return f"{low}–{high}{level}"


def _share(evidence: dict[str, Any]) -> str:
    share = evidence.get("share")
    return f"{share:.0%}" if isinstance(share, float) else ""


def _window(alert: Alert, evidence: dict[str, Any]) -> str:
    windows = alert.annotations.get("windows")
    if isinstance(windows, list) and windows:
        return ", ".join(str(window) for window in windows)
    for window in (evidence.get("window"), alert.annotations.get("window"), alert.labels.get("window")):
        if window:
            return str(window)
    if evidence.get("start") and evidence.get("end"):
        return f"{evidence['start']} – {evidence['end']}"
    return ""


_FIELD_RENDERERS: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
    ("alpha", lambda evidence: _number(evidence.get("alpha"))),
    ("interval", _interval),
    ("samples", lambda evidence: _number(evidence.get("samples"))),
    ("threshold", lambda evidence: _number(evidence.get("threshold"), 2)),
    ("baseline", lambda evidence: _number(evidence.get("baseline"))),
    ("recent mean", lambda evidence: _number(evidence.get("recent_mean"))),
    ("features drifted", _share),
]
