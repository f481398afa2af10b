"""Evaluation: replay results and the engines' own counts -> per-segment statistics -> findings.

shadow: results of the live draft version (scored mode); live: the engines' per-request reports
  -> read as numeric columns (monitor.base.columns), never as objects: memory ~ 100 bytes per result
  -> segment_stats of each over the configured windows, per group: all traffic, each segment, each
     roll-up (monitor.base.groups), with bootstrap intervals over samples, side by side
  -> threshold findings (alpha confidently below 0.65), change findings (Page-Hinkley drop from the
     group's baseline) on the primary source: shadow while replay runs, else live (GPU-free mode), with
     false discoveries controlled across every group and window tested (Benjamini-Hochberg)
  -> divergence findings on the samples with both (live - shadow alpha beyond a tolerance)
  -> input drift (evidently, recent samples vs the reference)
  + health findings (replay stalled, intake errors)
  -> stored in `findings` and handed to `deliver_findings`, the one door to alerting (alerts/).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from alerts.lifecycle import raise_findings
from monitor.base.columns import ResultColumns
from monitor.base.config import Config, DriftConfig, window_length
from monitor.base.db import Sample, utcnow
from monitor.base.groups import Grouping
from monitor.base.results import (
    LiveShadowPairs,
    last_head_change,
    load_live_columns,
    load_result_columns,
    measured_cost_ratio,
    pairs_of,
)
from monitor.base.stats import LIVE, SHADOW, SegmentStats, group_rows, ratio_standard_error, segment_stats
from monitor.evaluation.divergence import DETECTOR as DIVERGENCE
from monitor.evaluation.divergence import divergence_findings, divergence_windows
from monitor.evaluation.drift import (
    CHANGE,
    INPUT_DRIFT_REPORT,
    REPORT_STAMP,
    THRESHOLD,
    AlphaSeries,
    change_tests,
    input_drift_finding,
    input_features,
    threshold_tests,
)
from monitor.evaluation.false_alarms import Hypothesis, controlled, drop_p_value
from monitor.evaluation.finding import Finding
from monitor.evaluation.findings_store import store_findings
from monitor.evaluation.health import HEALTH_DETECTORS, health_findings
from monitor.intake.language import prose_languages

log = logging.getLogger(__name__)

REPORTS_DIR = "reports"


@dataclass(frozen=True)
class Evaluation:
    at: datetime
    draft_version: str
    stats: list[SegmentStats]
    """shadow and live statistics side by side (`SegmentStats.source`)"""
    findings: list[Finding]
    cost_ratio: float | None
    primary: str = SHADOW
    """the source threshold and change findings read: SHADOW while replay runs, else LIVE"""

    def stats_of(self, source: str) -> list[SegmentStats]:
        return [item for item in self.stats if item.source == source]


def recent_rows(
    engine: Engine, since: datetime, until: datetime | None = None, limit: int | None = None
) -> list[dict[str, Any]]:
    """Samples after `since` (and up to `until`) as input-drift rows, the newest `limit` of them."""
    query = select(Sample.messages, Sample.completion, Sample.language, Sample.segment).where(
        Sample.occurred_at > since
    )
    if until is not None:
        query = query.where(Sample.occurred_at <= until)
    if limit is not None:
        query = query.order_by(Sample.occurred_at.desc()).limit(limit)
    with Session(engine) as session:
        return [
            {"prompt": _prompt(messages), "completion": completion, "language": language, "segment": segment}
            for messages, completion, language, segment in session.execute(query)
        ]


def input_drift_reports(data_dir: Path) -> list[Path]:
    """evidently's input-drift reports under <data_dir>/reports, newest first."""
    directory = data_dir / REPORTS_DIR
    return sorted(directory.glob(f"{INPUT_DRIFT_REPORT}-*.html"), reverse=True) if directory.is_dir() else []


def report_time(path: Path) -> datetime | None:
    stamp = path.stem.removeprefix(f"{INPUT_DRIFT_REPORT}-")
    try:
        return datetime.strptime(stamp, REPORT_STAMP).replace(tzinfo=UTC)
    except ValueError:
        return None


def input_drift_due(config: Config, now: datetime) -> bool:
    """The last input-drift report is older than drift.input_interval (or from a clock that went back)."""
    reports = input_drift_reports(config.storage.data_dir)
    last = report_time(reports[0]) if reports else None
    return last is None or not (now - window_length(config.drift.input_interval) < last <= now)


def prune_input_drift_reports(config: Config) -> None:
    for old in input_drift_reports(config.storage.data_dir)[config.drift.keep_input_reports :]:
        old.unlink(missing_ok=True)


def reference_rows(path: Path) -> list[dict[str, Any]]:
    """The live head's training corpus as JSONL rows with prompt/completion (or messages), language, segment."""
    rows = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                item = json.loads(line)
                if "prompt" not in item and "messages" in item:
                    item["prompt"] = _prompt(item["messages"])
                rows.append(item)
    return rows


def _prompt(messages: list[dict[str, str]]) -> str:
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def detect_input_drift(config: Config, engine: Engine, now: datetime) -> tuple[list[Finding], bool]:
    """Input-drift findings, and whether the check ran (it needs enough rows on both sides)."""
    drift = config.drift
    if not input_drift_due(config, now):
        return [], False
    since = now - window_length(drift.input_window)
    current = recent_rows(engine, since, now, limit=drift.input_max_rows)
    if drift.reference_corpus is not None:
        reference = reference_rows(drift.reference_corpus)[: drift.input_max_rows]
    else:
        reference = recent_rows(engine, since - window_length(drift.change_window), since, limit=drift.input_max_rows)
    languages = prose_languages(config.intake.languages, config.intake.language_min_confidence)
    finding, report = input_drift_finding(
        input_features(reference, languages),
        input_features(current, languages),
        drift_share=drift.input_drift_share,
        report_dir=config.storage.data_dir / REPORTS_DIR,
        now=now,
        min_rows=drift.input_min_rows,
        window=drift.input_window,
    )
    if report.reason:
        log.info("input drift not checked: %s", report.reason)
    else:
        prune_input_drift_reports(config)
    return ([finding] if finding else []), not report.reason


def evaluate(config: Config, engine: Engine, draft_version: str, now: datetime | None = None) -> Evaluation:
    """Statistics and findings now. `draft_version` names the registry's live head: the one replay measures
    (shadow) and the one findings are filed under. Threshold and change findings read `measure`'s primary
    source, over every group (all traffic, segments, roll-ups), with false discoveries controlled across
    all of them (`monitor.evaluation.false_alarms`)."""
    now = now or utcnow()
    drift = config.drift
    measured = measure(config, engine, draft_version, now)
    stats, primary = measured.stats, measured.primary
    columns = measured.shadow if primary == SHADOW else measured.live
    tests, findings = acceptance_findings(config, [item for item in stats if item.source == primary], columns, now)
    change = last_head_change(engine)
    findings += divergence_findings(
        measured.pairs,
        divergence_windows(
            measured.windows,
            change.at if change and change.version == draft_version else None,
            window_length(config.retrain.watch.window),
            now,
        ),
        now,
        tolerance=drift.divergence_tolerance,
        min_pairs=drift.divergence_min_pairs,
        confidence=config.stats.confidence,
        resamples=config.stats.resamples,
    )
    input_drift, input_checked = detect_input_drift(config, engine, now)
    findings += input_drift
    findings += health_findings(config, engine, draft_version, now)
    evaluation = Evaluation(now, draft_version, stats, findings, measured.cost_ratio, primary)
    evaluated = {THRESHOLD, CHANGE, DIVERGENCE, *HEALTH_DETECTORS, *(["input_drift"] if input_checked else [])}
    store_findings(engine, now, draft_version, findings, evaluated)
    deliver_findings(config, engine, evaluation.findings, evaluated, now)
    log.info(
        "evaluated %d shadow and %d live samples in %d statistics: %d tests, %d findings",
        len(measured.shadow),
        len(measured.live),
        len(stats),
        len(tests),
        len(findings),
    )
    return evaluation


def acceptance_findings(
    config: Config, stats: Sequence[SegmentStats], columns: ResultColumns, now: datetime
) -> tuple[list[Hypothesis], list[Finding]]:
    """Every threshold and change test over one source's statistics and results (all groups, all windows),
    and the findings among them that survive false-discovery control at drift.false_discovery_rate."""
    drift = config.drift
    tests = threshold_tests(stats, drift)
    tests += group_change_tests(config, columns, now - window_length(drift.change_window))
    return tests, controlled(tests, drift.false_discovery_rate)


@dataclass(frozen=True)
class Measured:
    """What the detectors read: both sources' results over the lookback (as columns), their pairs, and
    the statistics."""

    windows: dict[str, timedelta]
    shadow: ResultColumns
    live: ResultColumns
    pairs: LiveShadowPairs
    stats: list[SegmentStats]
    cost_ratio: float | None
    primary: str


def measure(config: Config, engine: Engine, draft_version: str, now: datetime) -> Measured:
    """Shadow (the replay of `draft_version`) and live (the engines' counts) statistics side by side over
    the configured windows, per group; `primary` is the source alerts read: SHADOW while replay runs or has
    results in the lookback, else LIVE (GPU-free mode: `Config.replays` false and nothing replayed). Reads
    numeric columns only: memory grows by ~100 bytes per stored result."""
    windows = {name: window_length(name) for name in config.stats.windows}
    lookback = max([*windows.values(), window_length(config.drift.change_window) * 2])
    replayed = config.replay.enabled
    detail = now - max(windows.values())  # older results only feed change detection's baselines: A and R
    shadow = load_result_columns(engine, draft_version, now - lookback, detail) if replayed else ResultColumns.empty()
    live = load_live_columns(engine, now - lookback, detail_since=detail)
    pairs = pairs_of(shadow, live, now - max(windows.values()))
    cost_ratio = config.stats.cost_ratio
    if cost_ratio is None and replayed:
        cost_ratio = measured_cost_ratio(engine, draft_version, config.replay.window)
    stats = side_by_side(config, shadow, live, pairs, windows, now, cost_ratio)
    primary = SHADOW if len(shadow) or config.replays else LIVE
    return Measured(windows, shadow, live, pairs, stats, cost_ratio, primary)


def side_by_side(
    config: Config,
    shadow: ResultColumns,
    live: ResultColumns,
    pairs: LiveShadowPairs,
    windows: dict[str, timedelta],
    now: datetime,
    cost_ratio: float | None,
) -> list[SegmentStats]:
    """Shadow then live statistics per (group, window), each carrying how many of its samples have both."""
    settings, k = config.stats, config.replay.window
    stats = [
        item
        for source, columns in ((SHADOW, shadow), (LIVE, live))
        for item in segment_stats(
            columns,
            windows,
            now,
            window_k=k,
            cost_ratio=cost_ratio if source == SHADOW else None,
            confidence=settings.confidence,
            resamples=settings.resamples,
            source=source,
            rollups=settings.rollups,
        )
    ]
    paired = paired_counts(pairs, windows, now, settings.rollups)
    return [replace(item, paired=paired.get((item.segment, item.window), 0)) for item in stats]


def paired_counts(
    pairs: LiveShadowPairs, windows: dict[str, timedelta], now: datetime, rollups: Sequence[Sequence[str]] = ()
) -> dict[tuple[str, str], int]:
    """(group, window) -> samples with both live and shadow counts."""
    grouping = Grouping.of(pairs.live.segments, rollups)
    counts: dict[tuple[str, str], int] = {}
    for window, length in windows.items():
        for group, rows in group_rows(pairs.live.window(now - length, now), grouping):
            counts[(grouping.names[group], window)] = int(rows.shape[0])
    return counts


def group_change_tests(config: Config, columns: ResultColumns, recent_since: datetime) -> list[Hypothesis]:
    """Page-Hinkley over each group's per-sample alphas since `recent_since`, against the group's baseline:
    its alpha before then (the previous week by default) when it has drift.min_samples results there, else
    its first min_samples results (the head's alpha when it started serving the group). The p-value tests
    the recent span's alpha against the baseline minus drift.change_delta (both standard errors)."""
    drift = config.drift
    grouping = Grouping.of(columns.segments, config.stats.rollups)
    proposed = columns.accepted + columns.rejected
    drafted = proposed > 0
    per_sample = np.divide(columns.accepted, proposed, out=np.zeros(len(columns)), where=drafted)
    recent_start = recent_since.timestamp()
    series = (  # built group by group as the tests read them: one group's series held at a time
        (grouping.names[group], found)
        for group, rows in group_rows(columns, grouping)
        if (found := _alpha_series(columns, rows, per_sample, drafted, recent_start, drift)) is not None
    )
    return change_tests(
        series,
        delta=drift.change_delta,
        threshold=drift.change_threshold,
        min_samples=drift.min_samples,
        window=drift.change_window,
    )


def _alpha_series(
    columns: ResultColumns,
    rows: np.ndarray,
    per_sample: np.ndarray,
    drafted: np.ndarray,
    recent_start: float,
    drift: DriftConfig,
) -> AlphaSeries | None:
    """A group's per-sample alphas after `recent_start` with its baseline and drop p-value, or None when it
    has fewer than drift.min_samples results on either side."""
    times = columns.occurred[rows]
    earlier = rows[times <= recent_start]
    reference = earlier if earlier.shape[0] >= drift.min_samples else rows[: drift.min_samples]
    recent = rows[(times > recent_start) & drafted[rows]]
    baseline = columns.counts(reference).alpha
    if reference.shape[0] < drift.min_samples or baseline is None or recent.shape[0] < drift.min_samples:
        return None
    return AlphaSeries(
        columns.occurred[recent],
        per_sample[recent],
        baseline,
        _drop_p_value(columns, reference, recent, drift.change_delta),
    )


def _drop_p_value(columns: ResultColumns, reference: np.ndarray, recent: np.ndarray, delta: float) -> float | None:
    ratios = []
    for rows in (reference, recent):
        accepted, proposed = columns.accepted[rows], columns.accepted[rows] + columns.rejected[rows]
        error = ratio_standard_error(accepted, proposed)
        if error is None:
            return None
        ratios.append((float(accepted.sum()) / float(proposed.sum()), error))
    (baseline, baseline_error), (recent_alpha, recent_error) = ratios
    return drop_p_value(baseline, baseline_error, recent_alpha, recent_error, delta)


def deliver_findings(
    config: Config, engine: Engine, findings: Sequence[Finding], evaluated: Collection[str], now: datetime
) -> None:
    """The one door from detection to alerting: what the detectors in `evaluated` found now. Alerts
    fire, resolve and queue notifications in alerts/; the outbox is sent by `dispatch_alerts`."""
    for finding in findings:
        log.info("finding [%s] %s: %s", finding.severity, finding.detector, finding.summary)
    raise_findings(config.alerts, engine, findings, evaluated, now)
