"""What `specwatch status` shows: per segment, shadow (specwatch's replay) and live (the serving engine's own
report) side by side: alpha with its interval, tau, A/D, samples, the share of shadow samples replayed from
the engine's own token ids (ids), samples with both (paired); trend and state on the primary source."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from monitor.base.config import DriftConfig
from monitor.base.stats import ALL_SEGMENTS, LIVE, SHADOW, BySource, SegmentStats

OK, WARNING, BREACH, UNKNOWN = "ok", "warning", "breach", "too few samples"
COLOURS = {OK: "\x1b[32m", WARNING: "\x1b[33m", BREACH: "\x1b[31m", UNKNOWN: "\x1b[2m"}
RESET = "\x1b[0m"
TREND_TOLERANCE = 0.02
ESTIMATE_MARK = "~"
GPU_FREE_NOTE = (
    "acceptance is the serving engine's own (GPU-free mode: no replay); "
    "retraining needs models.target, models.draft and a device"
)
ESTIMATE_NOTE = (
    f"{ESTIMATE_MARK} live alpha with R estimated from the engine's histogram (S - hist[k]): it reads low "
    "when drafts were shortened"
)


@dataclass(frozen=True)
class SegmentStatus(BySource):
    """One segment ("*" for all traffic) over one window: both sources, and the state of the primary one."""

    segment: str
    shadow: SegmentStats | None
    live: SegmentStats | None
    primary: str
    threshold: float
    state: str
    trend: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "segment": self.segment,
            "shadow": self.shadow.to_dict() if self.shadow else None,
            "live": self.live.to_dict() if self.live else None,
            "primary": self.primary,
            "state": self.state,
            "trend": self.trend,
            "threshold": self.threshold,
            "paired": self.paired,
        }


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


def trend_of(short: SegmentStats | None, long: SegmentStats | None) -> str:
    """Short window against long window: up, down or flat."""
    if short is None or long is None or short.alpha is None or long.alpha is None:
        return "·"
    change = short.alpha - long.alpha
    if change > TREND_TOLERANCE:
        return "↑"
    if change < -TREND_TOLERANCE:
        return "↓"
    return "→"


def _of(stats: list[SegmentStats], window: str, source: str) -> dict[str, SegmentStats]:
    return {item.segment: item for item in stats if item.window == window and item.source == source}


def segment_statuses(
    stats: list[SegmentStats], window: str, trend_window: str, drift: DriftConfig, primary: str = SHADOW
) -> list[SegmentStatus]:
    """One status per segment with either source's statistics in `window`, "*" first; state and trend
    read `primary`."""
    shadow, live = _of(stats, window, SHADOW), _of(stats, window, LIVE)
    shorter = _of(stats, trend_window, primary)
    statuses = []
    for segment in sorted(shadow.keys() | live.keys(), key=lambda name: (name != ALL_SEGMENTS, name)):
        current = (shadow if primary == SHADOW else live).get(segment)
        state, threshold = state_of(current, drift) if current else (UNKNOWN, drift.threshold_for(segment)[0])
        trend = trend_of(shorter.get(segment), current)
        statuses.append(
            SegmentStatus(segment, shadow.get(segment), live.get(segment), primary, threshold, state, trend)
        )
    return statuses


def source_line(primary: str, replays: bool, draft_version: str) -> str:
    """Which source the states and alerts read, said plainly."""
    if primary == LIVE:
        return f"states and alerts read live counts: {GPU_FREE_NOTE}"
    line = f"states and alerts read shadow counts: specwatch's replay of draft {draft_version}"
    return line if replays else f"{line} (stored earlier: replay is off now)"


def _number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{round(100 * value)}%"


def _alpha(stats: SegmentStats | None) -> str:
    if stats is None:
        return "-"
    mark = ESTIMATE_MARK if stats.alpha_estimated else ""
    return mark + _number(stats.alpha)


def _interval(stats: SegmentStats | None) -> str:
    interval = stats.alpha_interval if stats else None
    return f"[{interval.low:.3f}, {interval.high:.3f}]" if interval else "-"


def _columns(stats: SegmentStats | None) -> str:
    """alpha, interval, tau, A/D and samples of one source."""
    return (
        f"{_alpha(stats):>7} {_interval(stats):>15} {_number(stats.tau if stats else None, 2):>5} "
        f"{_number(stats.draft_acceptance_rate if stats else None):>5} {stats.samples if stats else 0:>7}"
    )


def _source_cells(status: SegmentStatus, source: str) -> str:
    """One source's columns; the shadow's end with the share of samples replayed from the logged ids."""
    if source == LIVE:
        return _columns(status.live)
    return f"{_columns(status.shadow)} {_share(status.shadow.from_ids_share if status.shadow else None):>4}"


def _source_head(source: str) -> str:
    head = f"{source:>7} {'interval':>15} {'tau':>5} {'A/D':>5} {'samples':>7}"
    return head if source == LIVE else f"{head} {'ids':>4}"


def render_table(statuses: list[SegmentStatus], colour: bool) -> str:
    """Per segment the columns of each source that has statistics (shadow, then live), then paired, trend, state."""
    sources = [
        source
        for source in (SHADOW, LIVE)
        if any(status.shadow if source == SHADOW else status.live for status in statuses)
    ]
    header = f"{'segment':40} " + "  ".join(_source_head(s) for s in sources) + f" {'paired':>6} {'trend':>5}  state"
    lines = [header]
    for status in statuses:
        state = status.state
        if colour:
            state = f"{COLOURS[status.state]}{state}{RESET}"
        cells = "  ".join(_source_cells(status, source) for source in sources)
        lines.append(f"{status.segment[-40:]:40} {cells} {status.paired:>6} {status.trend:>5}  {state}")
    return "\n".join(lines)


def table_notes(statuses: list[SegmentStatus], without_alpha: int, window: str) -> list[str]:
    """What the table cannot say in its cells: estimated live alphas, engine reports in no alpha."""
    notes = []
    if any(status.live and status.live.rejected_estimated for status in statuses):
        notes.append(ESTIMATE_NOTE)
    if without_alpha:
        notes.append(f"{without_alpha} engine reports in the last {window} lacked R (no histogram or k): in no alpha")
    return notes
