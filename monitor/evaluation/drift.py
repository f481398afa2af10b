"""Drift detectors over replayed traffic; each returns findings that carry their own evidence.

    from monitor.evaluation.drift import threshold_findings, change_findings, input_drift_finding
    threshold_findings(stats, DriftConfig(threshold=0.65, threshold_overrides={"lang=zh": 0.55}))
    change_findings({"lang=zh": [(occurred_at, per_sample_alpha), ...]}, baselines={"lang=zh": 0.78})
    finding, report = input_drift_finding(reference_frame, current_frame, report_dir=Path("reports"), now=now)

Three detectors, three questions:

- threshold ("critical"): is a segment's alpha confidently below the alert threshold? Both the point
  estimate and the upper end of its confidence interval must be below it, with enough samples.
- change ("warning"): has per-sample alpha dropped from its baseline? A one-sided Page-Hinkley test
  on the stream of per-sample alphas, in time order.
- input_drift ("warning"): does current traffic look different from reference traffic (language mix,
  lengths, share of code or CJK text)? evidently's data-drift tests, one per feature column.
"""

from __future__ import annotations

import logging
import numbers
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from monitor.base.config import DriftConfig
from monitor.base.stats import SegmentStats
from monitor.evaluation.false_alarms import Hypothesis, below_p_value, controlled
from monitor.evaluation.finding import CRITICAL, WARNING, Finding
from monitor.intake.language import ProseLanguages, detect_language, text_features

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

THRESHOLD, CHANGE = "threshold", "change"  # detectors

INPUT_DRIFT_REPORT = "input-drift"  # report files: <report_dir>/input-drift-<UTC stamp>.html
REPORT_STAMP = "%Y%m%dT%H%M%SZ"  # the UTC moment in a report file name


# ---- threshold ------------------------------------------------------------------------------------


def _threshold_finding(stats: SegmentStats, threshold: float, source: str) -> Finding:
    assert stats.alpha is not None and stats.alpha_interval is not None
    interval = stats.alpha_interval
    summary = (
        f"alpha {stats.alpha:.3f} (CI {stats.confidence:.0%} {interval.low:.3f}-{interval.high:.3f}) "
        f"below {threshold:.2f} for {stats.segment} over {stats.window}, {stats.samples} samples"
    )
    evidence = {
        "alpha": stats.alpha,
        "interval": [interval.low, interval.high],
        "confidence": stats.confidence,
        "samples": stats.samples,
        "tokens": stats.tokens,
        "threshold": threshold,
        "threshold_source": source,
        "tau": stats.tau,
        "draft_acceptance_rate": stats.draft_acceptance_rate,
        "estimated_speedup": stats.estimated_speedup,
        "start": stats.start.isoformat(),
        "end": stats.end.isoformat(),
    }
    return Finding(THRESHOLD, stats.segment, stats.window, CRITICAL, summary, evidence)


def threshold_tests(stats: Sequence[SegmentStats], drift: DriftConfig | None = None) -> list[Hypothesis]:
    """One test per group and window with drift.min_samples samples and an interval: H0 alpha >= its
    threshold (`drift.threshold_for`). The detector's rule fires when alpha and the interval's upper bound
    are both below the threshold; a group without an interval (one sample) is not tested."""
    drift = drift or DriftConfig()
    tests = []
    for item in stats:
        if item.alpha is None or item.alpha_interval is None or item.samples < drift.min_samples:
            continue
        limit, source = drift.threshold_for(item.segment)
        fires = item.alpha < limit and item.alpha_interval.high < limit
        p_value = below_p_value(item.alpha, limit, item.alpha_standard_error, item.samples)
        finding = _threshold_finding(item, limit, source) if fires else None
        tests.append(Hypothesis(THRESHOLD, item.segment, item.window, p_value, finding))
    return tests


def threshold_findings(stats: Sequence[SegmentStats], drift: DriftConfig | None = None) -> list[Finding]:
    """Groups whose alpha is confidently below their threshold, with false discoveries controlled across
    `stats` at drift.false_discovery_rate (default settings when `drift` is None)."""
    drift = drift or DriftConfig()
    return controlled(threshold_tests(stats, drift), drift.false_discovery_rate)


# ---- change ---------------------------------------------------------------------------------------


@dataclass
class PageHinkley:
    """One-sided Page-Hinkley test for a drop in the mean of a stream (here: per-sample alpha).

    With reference mean mu (the baseline, or the running mean of the stream when no baseline is
    given) the cumulative sum m_t = sum_{i<=t} (mu - x_i - delta) grows while values sit more than
    delta below mu and shrinks otherwise. The statistic m_t - min_{s<=t} m_s (with m_0 = 0) is how
    far the sum has climbed since its lowest point; the test fires when it exceeds `threshold` after
    at least `min_samples` values. `delta` is the drop tolerated as noise; the index of that lowest
    point estimates where the drop began. Rises only lower m_t, so they never fire.

    With a fixed baseline this is the one-sided CUSUM. The whole state is plain numbers:
    `to_dict` / `from_dict` let a daemon persist it between runs.
    """

    delta: float = 0.05
    threshold: float = 5.0
    min_samples: int = 30
    baseline: float | None = None
    count: int = 0
    running_mean: float = 0.0
    cumulative: float = 0.0
    minimum: float = 0.0
    minimum_at: int = 0  # samples seen when the cumulative sum was lowest
    sum_since_minimum: float = 0.0

    def __post_init__(self) -> None:
        if self.delta < 0 or self.threshold <= 0 or self.min_samples < 1:
            raise ValueError("Page-Hinkley needs delta >= 0, threshold > 0 and min_samples >= 1")

    @property
    def statistic(self) -> float:
        return self.cumulative - self.minimum

    @property
    def mean_since_minimum(self) -> float | None:
        """Mean of the values after the estimated start of the drop."""
        since = self.count - self.minimum_at
        return self.sum_since_minimum / since if since else None

    def update(self, value: float) -> bool:
        """Adds one value; True when a drop is detected."""
        value = float(value)
        self.count += 1
        self.running_mean += (value - self.running_mean) / self.count
        reference = self.baseline if self.baseline is not None else self.running_mean
        self.cumulative += reference - value - self.delta
        self.sum_since_minimum += value
        if self.cumulative < self.minimum:
            self.minimum = self.cumulative
            self.minimum_at = self.count
            self.sum_since_minimum = 0.0
        return self.count >= self.min_samples and self.statistic > self.threshold

    def restarted(self) -> PageHinkley:
        """A fresh detector with the same settings and baseline, for after a drop was handled."""
        return PageHinkley(self.delta, self.threshold, self.min_samples, self.baseline)

    def to_dict(self) -> dict[str, Any]:
        return {
            "delta": self.delta,
            "threshold": self.threshold,
            "min_samples": self.min_samples,
            "baseline": self.baseline,
            "count": self.count,
            "running_mean": self.running_mean,
            "cumulative": self.cumulative,
            "minimum": self.minimum,
            "minimum_at": self.minimum_at,
            "sum_since_minimum": self.sum_since_minimum,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PageHinkley:
        baseline = data.get("baseline")
        return cls(
            delta=float(data["delta"]),
            threshold=float(data["threshold"]),
            min_samples=int(data["min_samples"]),
            baseline=None if baseline is None else float(baseline),
            count=int(data["count"]),
            running_mean=float(data["running_mean"]),
            cumulative=float(data["cumulative"]),
            minimum=float(data["minimum"]),
            minimum_at=int(data["minimum_at"]),
            sum_since_minimum=float(data["sum_since_minimum"]),
        )


@dataclass(frozen=True)
class AlphaSeries:
    """One group's per-sample alphas in time order, the alpha it is expected to hold (None: its own running
    mean, classic Page-Hinkley) and the p-value of its recent alpha lying below that (None: not tested)."""

    times: np.ndarray  # seconds since the epoch, UTC
    values: np.ndarray
    baseline: float | None = None
    p_value: float | None = None

    @classmethod
    def of(cls, points: Sequence[tuple[datetime, float]], baseline: float | None = None) -> AlphaSeries:
        times = np.array([at.timestamp() for at, _ in points], dtype=np.float64)
        return cls(times, np.array([value for _, value in points], dtype=np.float64), baseline)

    def at(self, index: int) -> str:
        return datetime.fromtimestamp(float(self.times[index]), tz=UTC).isoformat()


@dataclass(frozen=True)
class Drop:
    """Where Page-Hinkley first fired on a series, as `PageHinkley` would report it at that value."""

    fired_index: int
    change_index: int  # the value after the cumulative sum's lowest point: where the drop began
    statistic: float
    reference: float  # the baseline, or the running mean when there is none
    recent_mean: float | None
    recent_samples: int


def first_drop(
    values: np.ndarray, baseline: float | None, *, delta: float, threshold: float, min_samples: int
) -> Drop | None:
    """`PageHinkley.update` over `values` until it fires, in array operations: the cumulative sum
    m_t = sum (mu_t - x_i - delta), its running minimum (with m_0 = 0), the statistic m_t - min, and the
    first t >= min_samples - 1 where it exceeds `threshold`. mu_t is the baseline or the running mean."""
    count = values.shape[0]
    if count < min_samples:
        return None
    positions = np.arange(1, count + 1)
    reference = np.cumsum(values) / positions if baseline is None else np.full(count, float(baseline))
    cumulative = np.cumsum(reference - values - delta)
    lowest = np.minimum.accumulate(np.concatenate(([0.0], cumulative)))  # lowest[j]: min of m_0 .. m_j
    statistic = cumulative - lowest[1:]
    fired = np.flatnonzero((positions >= min_samples) & (statistic > threshold))
    if fired.size == 0:
        return None
    index = int(fired[0])
    new_lows = np.flatnonzero(cumulative[: index + 1] < lowest[: index + 1]) + 1  # counts that set a new low
    minimum_at = int(new_lows[-1]) if new_lows.size else 0
    since = values[minimum_at : index + 1]
    return Drop(
        fired_index=index,
        change_index=min(minimum_at, index),
        statistic=float(statistic[index]),
        reference=float(reference[index]),
        recent_mean=float(since.mean()) if since.size else None,
        recent_samples=index + 1 - minimum_at,
    )


def _change_finding(
    segment: str, window: str, series: AlphaSeries, drop: Drop, threshold: float, delta: float
) -> Finding:
    baseline_kind = "given" if series.baseline is not None else "running mean"
    recent = "n/a" if drop.recent_mean is None else f"{drop.recent_mean:.3f}"
    summary = (
        f"alpha dropped for {segment}: mean {recent} since sample {drop.change_index} "
        f"vs baseline {drop.reference:.3f} ({baseline_kind}), Page-Hinkley {drop.statistic:.2f} > "
        f"{threshold:.2f} at sample {drop.fired_index}"
    )
    evidence = {
        "baseline": drop.reference,
        "baseline_kind": baseline_kind,
        "recent_mean": drop.recent_mean,
        "recent_samples": drop.recent_samples,
        "statistic": drop.statistic,
        "threshold": threshold,
        "delta": delta,
        "fired_index": drop.fired_index,
        "fired_at": series.at(drop.fired_index),
        "change_index": drop.change_index,
        "change_at": series.at(drop.change_index),
        "samples": int(series.values.shape[0]),
    }
    return Finding(CHANGE, segment, window, WARNING, summary, evidence)


def change_tests(
    series_by_group: Iterable[tuple[str, AlphaSeries]],
    *,
    delta: float = 0.05,
    threshold: float = 5.0,
    min_samples: int = 30,
    window: str = "series",
) -> list[Hypothesis]:
    """One test per (group, series) with at least `min_samples` values: its p-value (the series') and, when
    Page-Hinkley fires on the series (scanned from its start), the finding describing the first detection
    (index and time, the estimated start of the drop, the mean since then). `window` labels the span."""
    tests = []
    for group, series in series_by_group:
        if series.values.shape[0] < min_samples:
            continue
        drop = first_drop(series.values, series.baseline, delta=delta, threshold=threshold, min_samples=min_samples)
        finding = _change_finding(group, window, series, drop, threshold, delta) if drop else None
        tests.append(Hypothesis(CHANGE, group, window, series.p_value, finding))
    return tests


def change_findings(
    series_by_segment: Mapping[str, Sequence[tuple[datetime, float]]],
    baselines: Mapping[str, float],
    *,
    delta: float = 0.05,
    threshold: float = 5.0,
    min_samples: int = 30,
    window: str = "series",
) -> list[Finding]:
    """A finding for each segment whose per-sample alpha series (time-ordered) shows a drop.

    The baseline is the alpha the segment is expected to hold; the caller picks it: the live draft
    head's alpha on that segment measured at deploy time (detects decay since deploy), or the segment's
    own alpha over the previous week (detects a recent change). A segment without a baseline is tested
    against its own running mean (classic Page-Hinkley). Untested series (no p-values): every detection
    is a finding; `evaluate` adds the p-values and controls false discoveries.
    """
    series = {segment: AlphaSeries.of(points, baselines.get(segment)) for segment, points in series_by_segment.items()}
    tests = change_tests(series.items(), delta=delta, threshold=threshold, min_samples=min_samples, window=window)
    return [test.finding for test in tests if test.finding is not None]


# ---- input drift ----------------------------------------------------------------------------------

CATEGORICAL_FEATURES = ("language", "segment")
NUMERICAL_FEATURES = ("prompt_chars", "completion_chars", "cjk_share", "code_line_share", "ascii_share")
OPTIONAL_FEATURES = ("segment",)  # a column only when the rows carry it (a training corpus has no segments)


def _feature_row(row: Mapping[str, Any], languages: ProseLanguages | None) -> dict[str, Any]:
    prompt = str(row.get("prompt") or "")
    completion = str(row.get("completion") or "")
    features = text_features(f"{prompt}\n{completion}")
    return {
        "language": row.get("language") or detect_language(prompt, languages),
        "segment": row.get("segment") or "",
        "prompt_chars": float(len(prompt)),
        "completion_chars": float(len(completion)),
        "cjk_share": features["cjk_share"],
        "code_line_share": features["code_line_share"],
        "ascii_share": features["ascii_share"],
    }


def input_features(rows: Iterable[Mapping[str, Any]], languages: ProseLanguages | None = None) -> pd.DataFrame:
    """Feature table for input drift: one row per exchange.

    Each row is a mapping with "prompt" and "completion" texts and optionally "language" (detected from
    the prompt when missing, with `languages`, the default configuration's when None) and "segment". The
    text shares (cjk, code lines, ascii) are measured over prompt and completion together: the draft is
    judged on the completion, given the prompt. The "segment" column is there only when some row carries
    a segment.
    """
    import pandas as pd  # only input drift needs it: evaluation without it stays small

    rows = list(rows)
    columns = [
        column
        for column in (*CATEGORICAL_FEATURES, *NUMERICAL_FEATURES)
        if column not in OPTIONAL_FEATURES or any(row.get(column) for row in rows)
    ]
    frame = pd.DataFrame([_feature_row(row, languages) for row in rows], columns=columns)
    for column in CATEGORICAL_FEATURES:
        if column in frame.columns:
            frame[column] = frame[column].astype(str)
    return frame


@dataclass(frozen=True)
class ColumnDrift:
    """evidently's verdict on one column: the test status decides, the score is context only."""

    status: str  # "FAIL" = drifted, "SUCCESS" = not drifted; others (e.g. "ERROR") count as not drifted
    method: str  # e.g. "K-S p_value" (lower = drift) or "Wasserstein distance (normed)" (higher = drift)
    score: float | None


@dataclass(frozen=True)
class DriftReport:
    path: Path | None
    drifted_columns: list[str]
    share: float
    columns: dict[str, ColumnDrift]
    reference_rows: int
    current_rows: int
    reason: str | None = None  # why no comparison was made
    uncompared: list[str] = field(default_factory=list)  # features only one side carries

    @property
    def statuses(self) -> dict[str, str]:
        return {name: column.status for name, column in self.columns.items()}


@contextmanager
def _quiet_evidently() -> Iterator[None]:
    """evidently's deprecation noise, scipy's divide-by-zero when a category is new in current data (the
    chi-square is then infinite and the p-value 0, the right answer) and numpy's invalid-value warnings
    on constant columns (e.g. cjk_share all 0 in English traffic) while evidently draws its plots."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message="(divide by zero|invalid value) encountered", category=RuntimeWarning)
        yield


def _dataset(frame: pd.DataFrame) -> Any:
    from evidently import DataDefinition, Dataset

    categorical = [column for column in frame.columns if column in CATEGORICAL_FEATURES]
    numerical = [column for column in frame.columns if column not in CATEGORICAL_FEATURES]
    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical)
    return Dataset.from_pandas(frame, data_definition=definition)


def _column_verdicts(snapshot_dict: Mapping[str, Any]) -> dict[str, ColumnDrift]:
    """Per-column drift test statuses, with the metric's method and score."""
    scores = {metric["id"]: metric["value"] for metric in snapshot_dict["metrics"]}
    verdicts = {}
    for test in snapshot_dict["tests"]:
        params = test["metric_config"]["params"]
        if "column" not in params:  # the preset's overall share-of-drifted-columns test
            continue
        status = getattr(test["status"], "value", test["status"])
        score = scores.get(test["metric_config"]["metric_id"])
        number = float(score) if isinstance(score, numbers.Real) else None
        verdicts[params["column"]] = ColumnDrift(str(status), str(params.get("method", "")), number)
    return verdicts


def _run_evidently(reference: pd.DataFrame, current: pd.DataFrame, path: Path) -> dict[str, ColumnDrift]:
    with _quiet_evidently():
        from evidently import Report
        from evidently.presets import DataDriftPreset

        report = Report([DataDriftPreset()], include_tests=True)
        snapshot = report.run(_dataset(current), _dataset(reference))  # current first
        path.parent.mkdir(parents=True, exist_ok=True)
        snapshot.save_html(str(path))
        return _column_verdicts(snapshot.dict())


def _input_drift_summary(report: DriftReport, segment: str) -> str:
    drifted = ", ".join(report.drifted_columns)
    return (
        f"input drift for {segment}: {len(report.drifted_columns)} of {len(report.columns)} features drifted "
        f"({report.share:.0%}): {drifted}; {report.current_rows} current vs {report.reference_rows} reference rows"
    )


def _input_drift_evidence(report: DriftReport, drift_share: float) -> dict[str, Any]:
    return {
        "share": report.share,
        "drift_share": drift_share,
        "drifted_columns": list(report.drifted_columns),
        "columns": {
            name: {"status": c.status, "method": c.method, "score": c.score} for name, c in report.columns.items()
        },
        "reference_rows": report.reference_rows,
        "current_rows": report.current_rows,
        "uncompared_columns": list(report.uncompared),
        "report_path": str(report.path) if report.path else None,
    }


def input_drift_finding(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    drift_share: float = 0.5,
    report_dir: Path,
    now: datetime,
    min_rows: int = 30,
    segment: str = "*",
    window: str = "current",
) -> tuple[Finding | None, DriftReport]:
    """Compares current traffic features with reference ones using evidently's DataDriftPreset.

    A column has drifted when its drift test FAILs (the test picks K-S / chi-square p-values for small
    samples and Wasserstein / Jensen-Shannon distances for large ones, so raw scores are not compared
    here). Only the features both frames carry are compared (a training corpus has no segments);
    the others are listed in `uncompared`. The HTML report goes to
    report_dir/input-drift-<UTC timestamp>.html. A finding when the share of drifted columns >=
    drift_share; with fewer than `min_rows` rows on either side, no comparison, no finding, and the
    report says why.
    """
    if min(len(reference), len(current)) < min_rows:
        reason = f"too few rows: {len(reference)} reference, {len(current)} current, need {min_rows} each"
        logger.info("input drift skipped: %s", reason)
        return None, DriftReport(None, [], 0.0, {}, len(reference), len(current), reason)
    shared = [column for column in reference.columns if column in current.columns]
    uncompared = [column for column in (*reference.columns, *current.columns) if column not in shared]
    if uncompared:
        logger.info("input drift: features only one side carries, not compared: %s", ", ".join(uncompared))
    stamp = now.astimezone(UTC).strftime(REPORT_STAMP)
    path = report_dir / f"{INPUT_DRIFT_REPORT}-{stamp}.html"
    columns = _run_evidently(reference[shared], current[shared], path)
    drifted = [name for name, column in columns.items() if column.status == "FAIL"]
    share = len(drifted) / len(columns) if columns else 0.0
    report = DriftReport(path, drifted, share, columns, len(reference), len(current), uncompared=uncompared)
    logger.info("input drift: %d of %d columns drifted, report %s", len(drifted), len(columns), path)
    if not columns or share < drift_share:
        return None, report
    finding = Finding(
        "input_drift",
        segment,
        window,
        WARNING,
        _input_drift_summary(report, segment),
        _input_drift_evidence(report, drift_share),
    )
    return finding, report
