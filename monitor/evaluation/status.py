"""What `specwatch status` shows: per segment, alpha with its interval, tau, samples, the share of
samples replayed from the engine's own token ids (ids), trend, state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from monitor.base.config import DriftConfig
from monitor.base.stats import SegmentStats

OK, WARNING, BREACH, UNKNOWN = "ok", "warning", "breach", "too few samples"
COLOURS = {OK: "\x1b[32m", WARNING: "\x1b[33m", BREACH: "\x1b[31m", UNKNOWN: "\x1b[2m"}
RESET = "\x1b[0m"
TREND_TOLERANCE = 0.02


@dataclass(frozen=True)
class SegmentStatus:
    stats: SegmentStats
    threshold: float
    state: str
    trend: str

    def to_dict(self) -> dict[str, Any]:
        return {**self.stats.to_dict(), "threshold": self.threshold, "state": self.state, "trend": self.trend}


def state_of(stats: SegmentStats, drift: DriftConfig) -> tuple[str, float]:
    """breach: alpha confidently below the threshold with enough samples (what fires the alert);
    warning: alpha below the threshold plus the margin; ok otherwise."""
    threshold, _ = drift.threshold_for(stats.segment)
    if stats.alpha is None or stats.samples < drift.min_samples:
        return UNKNOWN, threshold
    interval = stats.alpha_interval
    if stats.alpha < threshold and interval is not None and interval.high < threshold:
        return BREACH, threshold
    if stats.alpha < threshold + drift.warning_margin:
        return WARNING, threshold
    return OK, threshold


def trend_of(short: SegmentStats | None, long: SegmentStats) -> str:
    """Short window against long window: up, down or flat."""
    if short is None or short.alpha is None or long.alpha is None:
        return "·"
    change = short.alpha - long.alpha
    if change > TREND_TOLERANCE:
        return "↑"
    if change < -TREND_TOLERANCE:
        return "↓"
    return "→"


def segment_statuses(
    stats: list[SegmentStats], window: str, trend_window: str, drift: DriftConfig
) -> list[SegmentStatus]:
    shorter = {s.segment: s for s in stats if s.window == trend_window}
    statuses = []
    for item in (s for s in stats if s.window == window):
        state, threshold = state_of(item, drift)
        statuses.append(SegmentStatus(item, threshold, state, trend_of(shorter.get(item.segment), item)))
    return statuses


def _number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{round(100 * value)}%"


def render_table(statuses: list[SegmentStatus], colour: bool) -> str:
    header = f"{'segment':60} {'alpha':>6} {'interval':>15} {'tau':>5} {'samples':>7} {'ids':>4} {'trend':>5}  state"
    lines = [header]
    for status in statuses:
        stats = status.stats
        interval = stats.alpha_interval
        shown = f"[{interval.low:.3f}, {interval.high:.3f}]" if interval else "-"
        state = status.state
        if colour:
            state = f"{COLOURS[status.state]}{state}{RESET}"
        lines.append(
            f"{stats.segment[-60:]:60} {_number(stats.alpha):>6} {shown:>15} {_number(stats.tau, 2):>5} "
            f"{stats.samples:>7} {_share(stats.from_ids_share):>4} {status.trend:>5}  {state}"
        )
    return "\n".join(lines)
