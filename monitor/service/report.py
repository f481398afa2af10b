"""The HTML report: one self-contained page an operator can open, mail or archive.

    specwatch report [--out FILE]     # default <data_dir>/reports/specwatch-report-<UTC stamp>.html

Per segment (the busiest N, plus "*" for all traffic): hourly alpha of every draft version's scored
results and of the serving engine's own reports against the alert threshold, with a marker where each
draft version went live (its first replay), the primary source's per-position acceptance p_1..p_k, and
the current alpha (with interval), tau, A/D and samples of the live draft's replay (shadow) and of the
engine's own counts (live) side by side, with the samples that have both (paired); for all traffic, live
against shadow p_i. Then the detectors' latest findings (live/shadow divergence among them) and links to
evidently's input-drift reports. In GPU-free mode (no replay) the numbers are the engine's own. No
scripts, stylesheets or fonts are fetched: the charts are inline SVG drawn here.
"""

from __future__ import annotations

import html
import logging
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine

from monitor.base.config import Config, window_length
from monitor.base.db import StoredFinding, utcnow
from monitor.base.results import Deploy, deploys, live_without_alpha, load_live, load_scored
from monitor.base.stats import ALL_SEGMENTS, LIVE, SHADOW, BySource, SampleResult, SegmentStats
from monitor.evaluation.drift import REPORT_STAMP
from monitor.evaluation.evaluate import REPORTS_DIR, input_drift_reports, measure
from monitor.evaluation.findings_store import latest_findings
from monitor.evaluation.status import BREACH, ESTIMATE_MARK, GPU_FREE_NOTE, OK, UNKNOWN, WARNING, state_of

log = logging.getLogger(__name__)

BUCKET = timedelta(hours=1)
DRIFT_REPORTS_SHOWN = 12  # newest input-drift reports linked from the page
LIVE_COLOUR = "#1d4ed8"
ENGINE_COLOUR = "#059669"  # the serving engine's own counts (the LIVE source)
SOURCE_NAMES = {SHADOW: "shadow (replay)", LIVE: "engine's own (live)"}
EARLIER_COLOURS = ("#d97706", "#7c3aed", "#0f766e", "#be185d", "#6b7280")
STATE_COLOURS = {OK: "#15803d", WARNING: "#b45309", BREACH: "#b91c1c", UNKNOWN: "#6b7280"}


# ---- data -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HourlyAlpha:
    hour: datetime
    alpha: float
    samples: int


@dataclass(frozen=True)
class SegmentPanel(BySource):
    segment: str
    samples: int
    series: dict[str, list[HourlyAlpha]]  # draft version (LIVE: the engine's own counts) -> hourly alpha
    shadow: SegmentStats | None  # the live draft's replay over the report window
    live: SegmentStats | None  # the serving engine's own counts over the report window
    primary: str  # the source the state reads
    positions: list[float]  # p_1..p_k of the primary source over the window, zeros up to the replay window k
    state: str
    threshold: float
    findings: list[StoredFinding]


@dataclass(frozen=True)
class ReportData:
    generated_at: datetime
    live_draft: str | None
    window: str
    days: float
    start: datetime
    end: datetime
    panels: list[SegmentPanel]
    deploys: list[Deploy]
    findings: list[StoredFinding]
    drift_reports: list[Path]
    primary: str = SHADOW
    """the source states and alerts read: LIVE in GPU-free mode"""
    live_without_alpha: int = 0
    """engine reports in the window whose R is unknown, so they are in no live alpha"""

    @property
    def empty(self) -> bool:
        return not self.panels

    @property
    def sources(self) -> list[str]:
        """The sources with statistics in some panel, shadow first."""
        return [s for s in (SHADOW, LIVE) if any((p.shadow if s == SHADOW else p.live) for p in self.panels)]


def hourly_alpha(results: Iterable[SampleResult], segment: str) -> dict[str, list[HourlyAlpha]]:
    """Per draft version, alpha = sum A / sum (A + R) of each UTC hour's results of `segment` ("*" = all)."""
    sums: dict[tuple[str, datetime], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    for result in results:
        if segment not in (ALL_SEGMENTS, result.segment):
            continue
        hour = result.occurred_at.replace(minute=0, second=0, microsecond=0)
        bucket = sums[(result.draft_version, hour)]
        bucket[0] += result.counts.accepted
        bucket[1] += result.counts.accepted + result.counts.rejected
        bucket[2] += 1
    series: dict[str, list[HourlyAlpha]] = defaultdict(list)
    for (version, hour), (accepted, judged, samples) in sorted(sums.items(), key=lambda item: item[0][1]):
        if judged > 0:
            series[version].append(HourlyAlpha(hour, accepted / judged, int(samples)))
    return dict(series)


def busiest_segments(results: Iterable[SampleResult], top: int) -> list[tuple[str, int]]:
    """All traffic ("*") first, then the `top` segments with the most distinct samples."""
    samples: dict[str, set[int]] = defaultdict(set)
    for result in results:
        samples[result.segment].add(result.sample_id)
        samples[ALL_SEGMENTS].add(result.sample_id)
    ranked = sorted((s for s in samples if s != ALL_SEGMENTS), key=lambda s: (-len(samples[s]), s))[:top]
    return [(segment, len(samples[segment])) for segment in [ALL_SEGMENTS, *ranked] if segment in samples]


def window_stats(
    config: Config, engine: Engine, live: str | None, window: str, now: datetime
) -> tuple[dict[str, SegmentStats], dict[str, SegmentStats], str]:
    """Shadow and live statistics per segment over `window` (evaluation's `measure`, on that window alone),
    and the primary source."""
    one_window = config.model_copy(update={"stats": config.stats.model_copy(update={"windows": [window]})})
    measured = measure(one_window, engine, live or LIVE, now)  # no live draft: no version has results named LIVE
    by_source: dict[str, dict[str, SegmentStats]] = {SHADOW: {}, LIVE: {}}
    for item in measured.stats:
        by_source[item.source][item.segment] = item
    return by_source[SHADOW], by_source[LIVE], measured.primary


def build_report(
    config: Config,
    engine: Engine,
    *,
    live_draft: str | None = None,
    top: int = 6,
    days: float = 14.0,
    window: str | None = None,
    now: datetime | None = None,
) -> ReportData:
    """Everything the page shows. `live_draft` defaults to the version that went live last."""
    now = now or utcnow()
    window = window or max(config.stats.windows, key=window_length)
    since = now - timedelta(days=days)
    scored, engine_counts = load_scored(engine, since), load_live(engine, since)
    versions = deploys(engine)
    live = live_draft or (versions[-1].draft_version if versions else None)
    findings = latest_findings(engine, limit=20)
    reports = input_drift_reports(config.storage.data_dir)[:DRIFT_REPORTS_SHOWN]
    if not engine_counts and (not scored or live is None):
        return ReportData(now, live, window, days, now, now, [], versions, findings, reports)
    shadow, measured_live, primary = window_stats(config, engine, live, window, now)
    charted = [*scored, *engine_counts]
    panels = [
        segment_panel(
            config,
            segment,
            samples,
            hourly_alpha(charted, segment),
            shadow=shadow.get(segment),
            live=measured_live.get(segment),
            primary=primary,
            findings=findings,
        )
        for segment, samples in busiest_segments(charted, top)
    ]
    start, end = time_range(charted, versions)
    without_alpha = live_without_alpha(engine, now - window_length(window))
    return ReportData(now, live, window, days, start, end, panels, versions, findings, reports, primary, without_alpha)


def segment_panel(
    config: Config,
    segment: str,
    samples: int,
    series: dict[str, list[HourlyAlpha]],
    *,
    shadow: SegmentStats | None,
    live: SegmentStats | None,
    primary: str,
    findings: Sequence[StoredFinding],
) -> SegmentPanel:
    """The segment's shadow and live statistics over the window; state and p_i from the primary source."""
    stats = shadow if primary == SHADOW else live
    if stats is not None:
        state, threshold = state_of(stats, config.drift)
    else:
        state = UNKNOWN
        threshold, _ = config.drift.threshold_for(segment)
    own = [finding for finding in findings if finding.segment == segment][:5]
    positions = list(stats.per_position_rates) if stats and stats.counts.steps else []
    if positions:
        positions += [0.0] * (config.replay.window - len(positions))
    return SegmentPanel(segment, samples, series, shadow, live, primary, positions, state, threshold, own)


def time_range(results: Sequence[SampleResult], versions: Sequence[Deploy]) -> tuple[datetime, datetime]:
    """From the oldest result's hour to the newest result or deploy; at least two hours wide."""
    start = min(r.occurred_at for r in results).replace(minute=0, second=0, microsecond=0)
    end = max([r.occurred_at for r in results] + [d.at for d in versions if d.at >= start])
    end = max(end, start + 2 * BUCKET)
    return start, end


# ---- SVG --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """Plot area of a chart: time on x, a value in [0, 1] on y."""

    width: float
    height: float
    left: float
    right: float
    top: float
    bottom: float
    start: datetime
    end: datetime

    def x(self, moment: datetime) -> float:
        span = (self.end - self.start).total_seconds()
        return self.left + (moment - self.start).total_seconds() / span * (self.width - self.left - self.right)

    def y(self, value: float) -> float:
        return self.top + (1.0 - value) * (self.height - self.top - self.bottom)


TICK_STEPS = [timedelta(hours=hours) for hours in (1, 3, 6, 12, 24, 48, 168, 336, 720)]


def time_ticks(start: datetime, end: datetime, most: int = 8) -> list[datetime]:
    """Round UTC times between start and end, at most `most` of them."""
    step = next((s for s in TICK_STEPS if (end - start) / s <= most), TICK_STEPS[-1])
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    tick = epoch + step * math.ceil((start - epoch) / step)
    ticks = []
    while tick <= end:
        ticks.append(tick)
        tick += step
    return ticks


def tick_label(moment: datetime) -> str:
    return moment.strftime("%b %d") if moment.hour == 0 else moment.strftime("%H:%M")


def _text(x: float, y: float, content: str, css: str, anchor: str = "middle") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" class="{css}" text-anchor="{anchor}">{html.escape(content)}</text>'


def _axes(frame: Frame) -> list[str]:
    parts = []
    for value in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = frame.y(value)
        parts.append(
            f'<line x1="{frame.left}" x2="{frame.width - frame.right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
        )
        parts.append(_text(frame.left - 6, y + 4, f"{value:.2f}", "tick", "end"))
    for tick in time_ticks(frame.start, frame.end):
        x = frame.x(tick)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{frame.top}" y2="{frame.y(0):.1f}" class="grid"/>')
        parts.append(_text(x, frame.height - frame.bottom + 16, tick_label(tick), "tick"))
    return parts


def _threshold_line(frame: Frame, threshold: float) -> list[str]:
    y = frame.y(threshold)
    right = frame.width - frame.right
    return [
        f'<line x1="{frame.left}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}" class="threshold" '
        f'data-threshold="{threshold}"/>',
        _text(right - 4, y - 5, f"threshold {threshold:.2f}", "threshold-label", "end"),
    ]


def _deploy_markers(frame: Frame, versions: Sequence[Deploy], live: str | None) -> list[str]:
    parts = []
    shown = [d for d in versions if frame.start <= d.at <= frame.end]
    for index, deploy in enumerate(shown):
        x = frame.x(deploy.at)
        label = deploy.draft_version[:8] + (" (live)" if deploy.draft_version == live else "")
        anchor = "end" if x > frame.width * 0.8 else "start"
        offset = -4 if anchor == "end" else 4
        parts.append(
            f'<g class="deploy-marker" data-version="{html.escape(deploy.draft_version)}">'
            f"<title>draft {html.escape(deploy.draft_version)} live from {deploy.at:%Y-%m-%d %H:%M} UTC</title>"
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{frame.top - 14}" y2="{frame.y(0):.1f}" class="deploy"/>'
            + _text(x + offset, frame.top - 16 + 11 * (index % 2), "▼ " + label, "deploy-label", anchor)
            + "</g>"
        )
    return parts


def _series(frame: Frame, version: str, points: Sequence[HourlyAlpha], colour: str) -> str:
    """A line through consecutive hours (broken at gaps over six hours) and a dot per hour."""
    runs: list[list[HourlyAlpha]] = []
    for point in points:
        if runs and point.hour - runs[-1][-1].hour <= 6 * BUCKET:
            runs[-1].append(point)
        else:
            runs.append([point])
    lines = [
        '<polyline points="'
        + " ".join(f"{frame.x(p.hour + BUCKET / 2):.1f},{frame.y(p.alpha):.1f}" for p in run)
        + f'" stroke="{colour}" class="series"/>'
        for run in runs
        if len(run) > 1
    ]
    dots = [
        f'<circle cx="{frame.x(p.hour + BUCKET / 2):.1f}" cy="{frame.y(p.alpha):.1f}" '
        f'r="{min(4.5, 1.6 + math.sqrt(p.samples) * 0.6):.1f}" fill="{colour}">'
        f"<title>{p.hour:%Y-%m-%d %H:00} UTC, {html.escape(series_name(version))}: alpha {p.alpha:.3f}, "
        f"{p.samples} samples</title></circle>"
        for p in points
    ]
    return f'<g class="version" data-version="{html.escape(version)}">' + "".join(lines + dots) + "</g>"


def series_name(version: str, live_draft: str | None = None) -> str:
    """A charted series: a draft version's replays, or (LIVE) the serving engine's own counts."""
    if version == LIVE:
        return "engine's own (live)"
    return f"draft {version[:8]}" + (" (live)" if version == live_draft else "")


def version_colours(data: ReportData) -> dict[str, str]:
    earlier = [d.draft_version for d in data.deploys if d.draft_version != data.live_draft]
    colours = {version: EARLIER_COLOURS[i % len(EARLIER_COLOURS)] for i, version in enumerate(reversed(earlier))}
    if data.live_draft:
        colours[data.live_draft] = LIVE_COLOUR
    colours[LIVE] = ENGINE_COLOUR
    return colours


def alpha_chart(data: ReportData, panel: SegmentPanel, colours: dict[str, str]) -> str:
    frame = Frame(760, 260, 46, 14, 34, 26, data.start, data.end)
    parts = [*_axes(frame), *_threshold_line(frame, panel.threshold)]
    parts += _deploy_markers(frame, data.deploys, data.live_draft)
    ordered = sorted(panel.series, key=lambda version: version in (data.live_draft, LIVE))  # live drawn on top
    parts += [_series(frame, version, panel.series[version], colours.get(version, "#6b7280")) for version in ordered]
    label = f"hourly alpha of {panel.segment}"
    return (
        f'<svg class="alpha-chart" viewBox="0 0 {frame.width} {frame.height}" role="img" '
        f'aria-label="{html.escape(label)}" xmlns="http://www.w3.org/2000/svg">' + "".join(parts) + "</svg>"
    )


def position_chart(rates: Sequence[float]) -> str:
    """Bars p_1..p_k: the share of verify steps whose i-th drafted token was accepted."""
    width, height, left, bottom, top = 250, 260, 34, 26, 34
    plot_height = height - top - bottom
    slot = (width - left - 8) / max(len(rates), 1)
    parts = [
        _text(left - 6, top + 4, "1.00", "tick", "end"),
        _text(left - 6, height - bottom + 4, "0.00", "tick", "end"),
    ]
    parts.append(f'<line x1="{left}" x2="{width - 8}" y1="{height - bottom}" y2="{height - bottom}" class="axis"/>')
    for index, rate in enumerate(rates):
        bar_height = max(rate, 0.0) * plot_height
        x = left + index * slot + slot * 0.18
        y = height - bottom - bar_height
        parts.append(
            f'<rect class="position-bar" x="{x:.1f}" y="{y:.1f}" width="{slot * 0.64:.1f}" '
            f'height="{bar_height:.1f}" rx="2"><title>p_{index + 1} = {rate:.3f}</title></rect>'
        )
        parts.append(_text(x + slot * 0.32, y - 4, f"{rate:.2f}", "bar-value"))
        parts.append(_text(x + slot * 0.32, height - bottom + 16, f"p{index + 1}", "tick"))
    return (
        f'<svg class="position-chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="per-position acceptance" xmlns="http://www.w3.org/2000/svg">' + "".join(parts) + "</svg>"
    )


# ---- HTML -------------------------------------------------------------------------------------------

CSS = """
:root { color-scheme: light; }
body { margin: 0; background: #f5f6f8; color: #1f2937; font-size: 15px; line-height: 1.45;
  font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, "Noto Sans",
  "Noto Sans CJK SC", "PingFang SC", "Microsoft YaHei", sans-serif; }
main { max-width: 1140px; margin: 0 auto; padding: 28px 24px 48px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 0 0 10px; }
h3 { font-size: 13px; margin: 0 0 4px; color: #4b5563; font-weight: 600; }
a { color: #1d4ed8; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 13px; }
.meta { color: #4b5563; margin: 0; }
.card { background: #fff; border: 1px solid #e3e6ea; border-radius: 10px; padding: 18px 20px; margin: 18px 0; }
.card > header { display: flex; align-items: center; gap: 12px; margin-bottom: 6px; }
.card > header h2 { margin: 0; overflow-wrap: anywhere; }
table { border-collapse: collapse; width: 100%; font-size: 14px; }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid #eef0f3; vertical-align: top; }
th { color: #6b7280; font-weight: 600; font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.badge { display: inline-block; padding: 1px 10px; border-radius: 999px; color: #fff; font-size: 12px;
  font-weight: 600; white-space: nowrap; }
.numbers { display: flex; flex-wrap: wrap; gap: 10px 32px; margin: 8px 0 14px; }
.numbers .label { display: block; font-size: 12px; color: #6b7280; text-transform: uppercase; letter-spacing: .04em; }
.numbers .value { display: block; font-size: 22px; font-weight: 650; font-variant-numeric: tabular-nums; }
.numbers .sub { display: block; font-size: 12px; color: #4b5563; font-variant-numeric: tabular-nums; }
.charts { display: grid; grid-template-columns: minmax(0, 3fr) minmax(0, 1fr); gap: 18px; align-items: start; }
svg { width: 100%; height: auto; display: block; overflow: visible; }
svg text { font-family: inherit; }
.grid { stroke: #e8eaee; stroke-width: 1; }
.axis { stroke: #9ca3af; stroke-width: 1; }
.tick { font-size: 11px; fill: #6b7280; }
.threshold { stroke: #dc2626; stroke-width: 1.6; stroke-dasharray: 7 4; }
.threshold-label { font-size: 11px; fill: #dc2626; font-weight: 600; }
.deploy { stroke: #334155; stroke-width: 1.2; stroke-dasharray: 2 3; }
.deploy-label { font-size: 11px; fill: #334155; font-weight: 600; }
.threshold-label, .deploy-label { paint-order: stroke; stroke: #fff; stroke-width: 3px; stroke-linejoin: round; }
.series { fill: none; stroke-width: 1.8; stroke-linejoin: round; stroke-linecap: round; }
.version:not(.live) { opacity: .75; }
.position-bar { fill: #1d4ed8; }
.bar-value { font-size: 11px; fill: #1f2937; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 18px; font-size: 13px; color: #374151; margin-top: 6px; }
.swatch { display: inline-block; width: 18px; height: 0; border-top: 3px solid; vertical-align: middle;
  margin-right: 6px; }
.swatch.dashed { border-top-style: dashed; }
.swatch.dotted { border-top-style: dotted; }
.positions { width: auto; margin-top: 10px; }
.note { color: #4b5563; margin: 4px 0 0; }
.findings { margin: 10px 0 0; padding-left: 18px; font-size: 14px; }
.empty { color: #4b5563; }
footer { color: #6b7280; font-size: 13px; }
"""

SEVERITY_COLOURS = {"critical": "#b91c1c", "warning": "#b45309"}


def _e(value: object) -> str:
    return html.escape(str(value))


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _badge(text: str, colour: str) -> str:
    return f'<span class="badge" style="background:{colour}">{_e(text)}</span>'


def _href(path: Path, base: Path) -> str:
    from urllib.parse import quote

    return quote(Path(os.path.relpath(path, base)).as_posix())


def _head(*names: str) -> str:
    """A table's header row; a name starting with # is a right-aligned number column."""
    cells = (f'<th class="num">{_e(n[1:])}</th>' if n.startswith("#") else f"<th>{_e(n)}</th>" for n in names)
    return "<tr>" + "".join(cells) + "</tr>"


def _title(segment: str) -> str:
    return "all traffic (*)" if segment == ALL_SEGMENTS else segment


def _anchor(index: int) -> str:
    return f"segment-{index}"


def _number(label: str, value: str, sub: str = "") -> str:
    sub_html = f'<span class="sub">{_e(sub)}</span>' if sub else ""
    return f'<div><span class="label">{_e(label)}</span><span class="value">{_e(value)}</span>{sub_html}</div>'


def _alpha(stats: SegmentStats | None) -> str:
    """alpha, marked as an estimate when the engine's R was estimated from its histogram."""
    if stats is None:
        return "–"
    mark = ESTIMATE_MARK if stats.alpha_estimated else ""
    return mark + _fmt(stats.alpha)


def _interval(stats: SegmentStats | None) -> str:
    interval = stats.alpha_interval if stats else None
    return f"{interval.low:.3f}–{interval.high:.3f}" if interval else "–"


def _other_source(panel: SegmentPanel) -> str:
    """The source the state does not read, beside the primary one's numbers."""
    other = panel.live if panel.primary == SHADOW else panel.shadow
    if other is None:
        return ""
    return _number(f"{SOURCE_NAMES[other.source]} alpha", _alpha(other), f"{other.paired:,} paired samples")


def _numbers(panel: SegmentPanel, window: str) -> str:
    stats = panel.current
    if stats is None:
        other = _other_source(panel)
        missing = f'<p class="empty">No {_e(SOURCE_NAMES[panel.primary])} counts in the last {_e(window)}.</p>'
        return missing + (f'<div class="numbers">{other}</div>' if other else "")
    alpha_ci = stats.alpha_interval
    tau_ci = stats.tau_interval
    level = f"{stats.confidence:.0%} CI"
    items = [
        _number(
            f"alpha ({window}), {SOURCE_NAMES[stats.source]}",
            _alpha(stats),
            f"{level} {_fmt(alpha_ci.low)}–{_fmt(alpha_ci.high)}" if alpha_ci else "no interval",
        ),
        _number("tau", _fmt(stats.tau, 2), f"{level} {_fmt(tau_ci.low, 2)}–{_fmt(tau_ci.high, 2)}" if tau_ci else ""),
        _number("samples", f"{stats.samples:,}", f"{stats.tokens:,} tokens"),
        _number("draft acceptance A/D", _fmt(stats.draft_acceptance_rate)),
        _number("threshold", f"{panel.threshold:.2f}"),
    ]
    if stats.estimated_speedup is not None:
        items.append(_number("est. speedup", f"{stats.estimated_speedup:.2f}×"))
    items.append(_other_source(panel))
    return '<div class="numbers">' + "".join(items) + "</div>"


def _position_comparison(panel: SegmentPanel) -> str:
    """Live against shadow p_i for all traffic, when both sources have verify steps."""
    shadow, live = panel.shadow, panel.live
    if panel.segment != ALL_SEGMENTS or not (shadow and live and shadow.counts.steps and live.counts.steps):
        return ""
    shadow_rates, live_rates = shadow.per_position_rates, live.per_position_rates
    rows = "".join(
        f'<tr><td class="num">p{index + 1}</td><td class="num">{_fmt(shadow_rate)}</td>'
        f'<td class="num">{_fmt(live_rate)}</td><td class="num">{_fmt(gap)}</td></tr>'
        for index, (shadow_rate, live_rate, gap) in enumerate(_position_pairs(shadow_rates, live_rates))
    )
    head = _head("#position", "#shadow", "#live", "#live − shadow")
    return f'<h3>per-position acceptance, live against shadow</h3><table class="positions">{head}{rows}</table>'


def _position_pairs(shadow: Sequence[float], live: Sequence[float]) -> list[tuple[float, float, float]]:
    """(shadow p_i, live p_i, live - shadow) up to the longer list; a position one side never drafted is 0."""
    length = max(len(shadow), len(live))
    padded = [list(rates) + [0.0] * (length - len(rates)) for rates in (shadow, live)]
    return [(one, two, two - one) for one, two in zip(*padded, strict=True)]


def _legend(panel: SegmentPanel, data: ReportData, colours: dict[str, str]) -> str:
    items = []
    for version in sorted(panel.series, key=lambda v: (v != LIVE, v != data.live_draft)):
        label = series_name(version, data.live_draft)
        colour = colours.get(version, "#6b7280")
        items.append(f'<span><span class="swatch" style="border-color:{colour}"></span>{_e(label)}</span>')
    items.append('<span><span class="swatch dashed" style="border-color:#dc2626"></span>alert threshold</span>')
    items.append('<span><span class="swatch dotted" style="border-color:#334155"></span>draft went live</span>')
    return '<div class="legend">' + "".join(items) + "</div>"


def _panel_findings(panel: SegmentPanel) -> str:
    if not panel.findings:
        return ""
    rows = "".join(
        f"<li>{_badge(f.severity, SEVERITY_COLOURS.get(f.severity, '#6b7280'))} <b>{_e(f.detector)}</b> "
        f"({f.created_at:%Y-%m-%d %H:%M}): {_e(f.summary)}</li>"
        for f in panel.findings
    )
    return f'<ul class="findings">{rows}</ul>'


def _panel(index: int, panel: SegmentPanel, data: ReportData, colours: dict[str, str]) -> str:
    title = _title(panel.segment)
    engine_series = " and the engine's own counts" if LIVE in panel.series else ""
    positions = position_chart(panel.positions) if panel.positions else '<p class="empty">no verify steps</p>'
    return (
        f'<section class="card segment" id="{_anchor(index)}" data-segment="{_e(panel.segment)}">'
        f"<header><h2>{_e(title)}</h2>{_badge(panel.state, STATE_COLOURS.get(panel.state, '#6b7280'))}</header>"
        + _numbers(panel, data.window)
        + f'<div class="charts"><div><h3>alpha per hour (UTC), every draft version{engine_series}</h3>'
        + alpha_chart(data, panel, colours)
        + _legend(panel, data, colours)
        + f"</div><div><h3>per-position acceptance p<sub>i</sub>, {_e(SOURCE_NAMES[panel.primary])}, "
        + f"{_e(data.window)}</h3>"
        + positions
        + "</div></div>"
        + _position_comparison(panel)
        + _panel_findings(panel)
        + "</section>"
    )


def _source_cells(stats: SegmentStats | None) -> str:
    """alpha, interval, tau, A/D and samples of one source."""
    values = [
        _alpha(stats),
        _interval(stats),
        _fmt(stats.tau if stats else None, 2),
        _fmt(stats.draft_acceptance_rate if stats else None),
        f"{stats.samples if stats else 0:,}",
    ]
    return "".join(f'<td class="num">{value}</td>' for value in values)


def _summary(data: ReportData) -> str:
    sources = data.sources
    rows = []
    for index, panel in enumerate(data.panels):
        cells = "".join(_source_cells(panel.shadow if source == SHADOW else panel.live) for source in sources)
        rows.append(
            f'<tr><td><a href="#{_anchor(index)}">{_e(_title(panel.segment))}</a></td>{cells}'
            f'<td class="num">{panel.paired:,}</td>'
            f"<td>{_badge(panel.state, STATE_COLOURS.get(panel.state, '#6b7280'))}</td></tr>"
        )
    columns = [f"#{name}" for source in sources for name in (f"{source} alpha", "interval", "tau", "A/D", "samples")]
    head = _head("segment", *columns, "#paired", "state")
    title = f"Acceptance over the last {_e(data.window)}: " + ", ".join(_e(SOURCE_NAMES[s]) for s in sources)
    return f'<section class="card"><h2>{title}</h2><table class="summary">{head}{"".join(rows)}</table></section>'


def _finding_link(finding: StoredFinding, base: Path) -> str:
    path = (finding.evidence or {}).get("report_path")
    return f'<a href="{_href(Path(path), base)}">report</a>' if path else ""


def _resolved(finding: StoredFinding) -> str:
    return "open" if finding.resolved_at is None else f"{finding.resolved_at:%Y-%m-%d %H:%M}"


def _findings(data: ReportData, base: Path) -> str:
    if not data.findings:
        return '<section class="card"><h2>Latest findings</h2><p class="empty">No findings.</p></section>'
    rows = "".join(
        f'<tr><td class="num">{f.created_at:%Y-%m-%d %H:%M}</td><td class="num">{f.last_seen_at:%Y-%m-%d %H:%M}</td>'
        f'<td class="num">{f.times_seen:,}</td><td class="num">{_resolved(f)}</td>'
        f"<td>{_badge(f.severity, SEVERITY_COLOURS.get(f.severity, '#6b7280'))}</td><td>{_e(f.detector)}</td>"
        f'<td>{_e(f.segment)}</td><td>{_e(f.window)}</td><td class="mono">{_e(f.draft_version[:8])}</td>'
        f'<td class="finding-summary">{_e(f.summary)}</td><td>{_finding_link(f, base)}</td></tr>'
        for f in data.findings
    )
    head = _head(
        "#first seen (UTC)",
        "#last seen",
        "#times seen",
        "#resolved",
        "severity",
        "detector",
        "segment",
        "window",
        "draft",
        "summary",
        "",
    )
    return f'<section class="card"><h2>Latest findings</h2><table>{head}{rows}</table></section>'


def _drift_reports(data: ReportData, base: Path) -> str:
    if not data.drift_reports:
        items = '<p class="empty">No input-drift reports yet (they appear when input drift is checked).</p>'
    else:
        links = "".join(
            f'<li><a class="drift-report" href="{_href(path, base)}">{_e(path.name)}</a></li>'
            for path in data.drift_reports
        )
        items = f"<ul>{links}</ul>"
    return f'<section class="card"><h2>Input-drift reports (evidently)</h2>{items}</section>'


def _versions(data: ReportData) -> str:
    rows = "".join(
        f'<tr><td class="mono">{_e(d.draft_version)}</td><td class="num">{d.at:%Y-%m-%d %H:%M}</td>'
        f'<td class="num">{d.results:,}</td><td>{"live" if d.draft_version == data.live_draft else ""}</td></tr>'
        for d in data.deploys
    )
    head = _head("draft version", "#live from (UTC)", "#scored results", "")
    return f'<section class="card"><h2>Draft versions</h2><table>{head}{rows}</table></section>'


FOOTER = (
    "<footer><p><b>alpha</b> = A / (A + R): the chance a drafted token is accepted given the earlier ones in its "
    "verify step were; the alert threshold applies to it. <b>tau</b> = (A + S − E) / S: tokens emitted per "
    "verify step (E: steps ended by an accepted EOS). "
    "<b>draft acceptance A/D</b> is vLLM's accepted / drafted tokens. <b>p<sub>i</sub></b>: the share of verify "
    "steps whose i-th drafted token was accepted. Intervals: cluster bootstrap over samples. A draft version "
    "went live when it was first replayed. <b>shadow</b>: specwatch's replay of the live draft on the logged "
    "completions; <b>live</b>: the serving engine's own per-request counts; <b>paired</b>: samples with both. "
    f"{ESTIMATE_MARK} marks a live alpha whose R was estimated from the engine's histogram (S − hist[k]): it "
    "reads low when drafts were shortened.</p></footer>"
)


def _header(data: ReportData) -> str:
    live = f'live draft <span class="mono">{_e(data.live_draft)}</span>' if data.live_draft else "no live draft yet"
    return (
        f'<header><h1>specwatch report</h1><p class="meta">generated {data.generated_at:%Y-%m-%d %H:%M} UTC · '
        f"{live} · traffic {data.start:%Y-%m-%d %H:%M} – {data.end:%Y-%m-%d %H:%M} UTC</p>"
        + _source_notes(data)
        + "</header>"
    )


def _source_notes(data: ReportData) -> str:
    """Which source the states read, in GPU-free mode plainly; engine reports in no alpha."""
    notes = []
    if data.primary == LIVE:
        notes.append(f'<p class="note gpu-free">{_e(GPU_FREE_NOTE[0].upper() + GPU_FREE_NOTE[1:])}.</p>')
    if data.live_without_alpha:
        notes.append(
            f'<p class="note">{data.live_without_alpha:,} engine reports in the last {_e(data.window)} lacked R '
            "(no histogram or window k): they are in no live alpha.</p>"
        )
    return "".join(notes)


def _nothing_to_chart(data: ReportData) -> str:
    if data.deploys:
        return (
            f'<section class="card"><h2>No replayed traffic in the last {data.days:g} days</h2><p class="empty">'
            "Results exist only for older traffic: widen the span with <code>--days</code>.</p></section>"
        )
    return (
        '<section class="card"><h2>Nothing replayed yet</h2><p class="empty">There are no scored replay results '
        "in the database yet. Ingest traffic (<code>specwatch ingest</code>) and replay it (<code>specwatch "
        "replay --once</code>), then run <code>specwatch report</code> again.</p></section>"
    )


def render_html(data: ReportData, base: Path) -> str:
    """The page; links to other files are relative to `base`, the directory the page is written to."""
    if data.empty:
        body = _header(data) + _nothing_to_chart(data) + _findings(data, base) + _drift_reports(data, base)
    else:
        colours = version_colours(data)
        panels = "".join(_panel(index, panel, data, colours) for index, panel in enumerate(data.panels))
        body = (
            _header(data)
            + _summary(data)
            + _findings(data, base)
            + _drift_reports(data, base)
            + panels
            + _versions(data)
            + FOOTER
        )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>specwatch report {data.generated_at:%Y-%m-%d %H:%M} UTC</title><style>{CSS}</style></head>"
        f"<body><main>{body}</main></body></html>\n"
    )


def default_report_path(config: Config, now: datetime) -> Path:
    stamp = now.astimezone(UTC).strftime(REPORT_STAMP)
    return config.storage.data_dir / REPORTS_DIR / f"specwatch-report-{stamp}.html"


def write_report(config: Config, data: ReportData, out: Path | None = None) -> Path:
    """Write the page to `out` (default: under <data_dir>/reports); returns the path."""
    path = out or default_report_path(config, data.generated_at)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(data, path.parent.resolve()), encoding="utf-8")
    log.info("report with %d segments written to %s", len(data.panels), path)
    return path
