"""Per-segment acceptance statistics over sliding windows, with cluster-bootstrap confidence intervals.

    from monitor.base.stats import segment_stats
    stats = segment_stats(results, {"1h": timedelta(hours=1), "1d": timedelta(days=1)}, now,
                          window_k=4, cost_ratio=0.05)
    [s.to_dict() for s in stats]

The metrics themselves (alpha, tau, draft acceptance rate, per-position rates) are defined once, in
`decoder.metrics.AcceptCounts`; this module only sums counts over the samples of a window and asks how
sure those numbers are.

Confidence intervals. The tokens of one replayed sample are correlated (one prompt, one topic, one
style), so resampling tokens would pretend to far more evidence than there is. The unit of resampling is
the sample: a cluster bootstrap draws samples with replacement and recomputes the ratio estimators
alpha = sum A / sum (A + R) and tau = sum (A + S - E) / sum S (emitted tokens per verify step; E counts
steps ended by an accepted EOS, which emit no target token) on each resample. Intervals are percentile
intervals, expanded for small samples as in Hesterberg (2015, "What teachers should know about the
bootstrap"): the percentile levels are chosen so that they match a Student-t interval with n - 1
degrees of freedom and the sqrt(n / (n - 1)) variance correction. For 200 samples this is the plain
percentile interval (levels 2.4% / 97.6% instead of 2.5% / 97.5%); for 3 samples it spans the whole
bootstrap distribution, i.e. from the lowest to the highest ratio the three samples can give. A segment
with a single sample gets no interval (None): one sample says nothing about the spread between samples,
and a degenerate point interval would read as certainty.

Estimated speedup. One verify step costs k draft forwards plus one target forward; measured in target
forwards that is 1 + k * c, with c = draft forward cost / target forward cost. The step emits tau tokens
on average (tau counts emitted tokens, so a step ended by an accepted EOS adds a, not a + 1), against one
token per target forward without speculation, so

    estimated_speedup = tau / (1 + k * c)

(Leviathan et al. 2023, eq. for the walltime improvement). It is None when c is not known.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from statistics import NormalDist
from typing import Any

import numpy as np
from scipy.special import stdtrit

from decoder.counts import AcceptCounts
from monitor.base.columns import ResultColumns
from monitor.base.groups import ALL_SEGMENTS, SEGMENT, Grouping

logger = logging.getLogger(__name__)

SHADOW, LIVE = "shadow", "live"
"""where counts come from: specwatch's replay of the registry's live head, or the serving engine's own report"""
_BOOTSTRAP_CHUNK = 2_000_000  # resampled indices held in memory at once


@dataclass(frozen=True)
class SampleResult:
    """One replayed sample, as the replay loop stored it."""

    sample_id: int
    segment: str
    occurred_at: datetime  # tz-aware UTC: when the traffic happened
    counts: AcceptCounts
    completion_tokens: int
    draft_version: str
    token_source: str | None = None
    """decoder.exchange.TokenSource; None for results stored before it was recorded"""
    retokenized_equal: bool | None = None
    """with logged ids: whether re-tokenizing the text gives the same ids"""
    rejected_estimated: bool = False
    """R is an estimate (an engine's histogram: S - hist[k]), not a count of steps"""

    @property
    def from_ids(self) -> bool:
        """Replayed from the completion's logged token ids, not re-tokenized text."""
        return self.token_source in ("ids", "completion_ids")


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return {"low": self.low, "high": self.high}


@dataclass(frozen=True)
class SegmentStats:
    """Acceptance of one segment ("*" for all traffic) over one window ending at `end`."""

    segment: str
    window: str
    start: datetime
    end: datetime
    samples: int
    tokens: int
    counts: AcceptCounts
    alpha: float | None
    alpha_interval: Interval | None
    tau: float | None
    tau_interval: Interval | None
    draft_acceptance_rate: float | None
    per_position_rates: list[float] = field(default_factory=list)
    estimated_speedup: float | None = None
    confidence: float = 0.95
    from_ids: int = 0
    """samples replayed from the engine's logged token ids"""
    retokenized_differs: int = 0
    """of those, samples whose text re-tokenizes to other ids: what a log without ids would have mismeasured"""
    source: str = SHADOW
    """SHADOW (specwatch's replay) or LIVE (the serving engine's own per-request report)"""
    rejected_estimated: int = 0
    """samples whose R is an estimate (S - hist[k]), so alpha is too: it reads low when drafts were shortened"""
    paired: int = 0
    """samples of the group and window that have both live and shadow counts"""
    kind: str = SEGMENT
    """monitor.base.groups: "all" ("*"), "segment" (a full segment) or "rollup" (a label or label set)"""
    alpha_standard_error: float | None = None
    """linearized standard error of alpha over samples: the scale of the false-alarm-controlled tests"""

    @property
    def alpha_estimated(self) -> bool:
        """alpha rests on an estimated R for some of its samples (an engine's histogram), so it reads low."""
        return self.source == LIVE and self.rejected_estimated > 0

    @property
    def from_ids_share(self) -> float | None:
        return self.from_ids / self.samples if self.samples else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "segment": self.segment,
            "window": self.window,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "samples": self.samples,
            "tokens": self.tokens,
            "counts": self.counts.to_dict(),
            "alpha": self.alpha,
            "alpha_interval": self.alpha_interval.to_dict() if self.alpha_interval else None,
            "tau": self.tau,
            "tau_interval": self.tau_interval.to_dict() if self.tau_interval else None,
            "draft_acceptance_rate": self.draft_acceptance_rate,
            "per_position_rates": list(self.per_position_rates),
            "estimated_speedup": self.estimated_speedup,
            "confidence": self.confidence,
            "from_ids": self.from_ids,
            "from_ids_share": self.from_ids_share,
            "retokenized_differs": self.retokenized_differs,
            "source": self.source,
            "rejected_estimated": self.rejected_estimated,
            "paired": self.paired,
            "kind": self.kind,
            "alpha_standard_error": self.alpha_standard_error,
        }


class BySource:
    """A group's statistics over one window from both sources, and the one alerts read (`primary`); mixed
    into the dataclasses that show them (status rows, report panels), which declare the three fields."""

    shadow: SegmentStats | None
    live: SegmentStats | None
    primary: str

    @property
    def current(self) -> SegmentStats | None:
        """The primary source's statistics: what the state and the alerts read."""
        return self.shadow if self.primary == SHADOW else self.live

    @property
    def paired(self) -> int:
        """Samples with both live and shadow counts (both sources carry the same number)."""
        present = self.shadow or self.live
        return present.paired if present else 0


def estimated_speedup(tau: float | None, window_k: int, cost_ratio: float | None) -> float | None:
    """tau / (1 + k * c): tokens per target forward over the cost of one verify step in target forwards."""
    if tau is None or cost_ratio is None:
        return None
    return tau / (1.0 + window_k * cost_ratio)


@functools.lru_cache(maxsize=4096)
def expanded_levels(samples: int, confidence: float) -> tuple[float, float]:
    """Percentile levels of Hesterberg's expanded percentile interval for n = `samples`."""
    tail = (1.0 - confidence) / 2.0
    t_quantile = float(stdtrit(samples - 1, 1.0 - tail))
    expanded_tail = NormalDist().cdf(-np.sqrt(samples / (samples - 1)) * t_quantile)
    return expanded_tail, 1.0 - expanded_tail


def resampled_sums(columns: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Column sums of `resamples` cluster-bootstrap resamples of the rows: shape (resamples, columns)."""
    rows = columns.shape[0]
    chunk = max(1, _BOOTSTRAP_CHUNK // rows)
    sums = np.empty((resamples, columns.shape[1]))
    for start in range(0, resamples, chunk):
        stop = min(start + chunk, resamples)
        picks = rng.integers(0, rows, size=(stop - start, rows))
        for column in range(columns.shape[1]):  # one contiguous column at a time: ~10x faster than 3-D gathers
            sums[start:stop, column] = columns[:, column][picks].sum(axis=1)
    return sums


def percentile_interval(values: np.ndarray, levels: tuple[float, float]) -> Interval | None:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None
    low, high = np.quantile(finite, levels)
    return Interval(float(low), float(high))


def bootstrap_intervals(
    counts: Sequence[AcceptCounts], *, confidence: float, resamples: int, seed: int
) -> tuple[Interval | None, Interval | None]:
    """Cluster-bootstrap percentile intervals (expanded for small n) of alpha and tau; None below 2 samples."""
    if len(counts) < 2:
        return None, None
    columns = np.array(
        [(c.accepted, c.accepted + c.rejected, c.emitted, c.steps) for c in counts], dtype=np.float64, order="F"
    )
    sums = resampled_sums(columns, resamples, np.random.default_rng(seed))
    accepted, alpha_denominator, emitted, steps = sums.T
    with np.errstate(divide="ignore", invalid="ignore"):
        alphas = accepted / alpha_denominator
        taus = emitted / steps
    levels = expanded_levels(len(counts), confidence)
    return percentile_interval(alphas, levels), percentile_interval(taus, levels)


def paired_alpha_difference(
    first: Sequence[AcceptCounts] | ResultColumns,
    second: Sequence[AcceptCounts] | ResultColumns,
    *,
    confidence: float,
    resamples: int,
    seed: int,
) -> Interval | None:
    """Paired cluster-bootstrap interval of alpha(second) - alpha(first), the two holding the same samples
    in the same order (lists of counts, or row-aligned columns): each resample draws samples with
    replacement and recomputes both ratio estimators on the same draw. None below 2 samples."""
    bootstrap = GroupBootstrap(confidence=confidence, resamples=resamples, seed=seed)
    return bootstrap.alpha_difference(paired_proposals(first, second))


def paired_proposals(
    first: Sequence[AcceptCounts] | ResultColumns, second: Sequence[AcceptCounts] | ResultColumns
) -> np.ndarray:
    """(A, A + R) of `first`, then of `second`, per sample: the columns `GroupBootstrap.alpha_difference` reads."""
    if len(first) != len(second):
        raise ValueError(f"paired samples must match: {len(first)} first, {len(second)} second")
    columns = np.empty((len(first), 4), dtype=np.float64, order="F")
    columns[:, 0], columns[:, 1] = _proposals(first)
    columns[:, 2], columns[:, 3] = _proposals(second)
    return columns


def _proposals(counts: Sequence[AcceptCounts] | ResultColumns) -> tuple[np.ndarray, np.ndarray]:
    """A and A + R of each sample."""
    if isinstance(counts, ResultColumns):
        return counts.accepted, counts.accepted + counts.rejected
    accepted = np.array([c.accepted for c in counts], dtype=np.float64)
    rejected = np.array([c.rejected for c in counts], dtype=np.float64)
    return accepted, accepted + rejected


def beyond_tolerance(interval: Interval, tolerance: float) -> bool:
    """The whole interval of a difference lies more than `tolerance` away from zero, on either side."""
    return interval.low > tolerance or interval.high < -tolerance


class GroupBootstrap:
    """Cluster-bootstrap intervals of alpha and tau for many groups at once, from per-sample columns.

    A group of n <= EXACT_MAX samples is resampled exactly as `bootstrap_intervals` does (the same draws
    for the same n and seed, held as a resamples x n matrix of how often each sample was drawn, so the
    resampled sums are one matrix product). Above EXACT_MAX the resampled column sums are drawn from their
    large-sample distribution, a normal with mean n * mean and covariance n * (plug-in covariance): what
    the sums of n independent draws converge to (central limit theorem), at the cost of `resamples`
    four-dimensional normal draws instead of resamples x n index draws. The ratio (alpha, tau) is still
    computed on every draw, so its skew is kept; at n = EXACT_MAX the two agree to a few thousandths of
    alpha (tests/monitor/base/test_stats.py measures it). The work per group is bounded by EXACT_MAX x
    resamples, whatever the traffic.

    The paired difference of two alphas (`alpha_difference`) is always resampled exactly: with the
    shared count matrices up to EXACT_MAX samples, by drawing indices above."""

    EXACT_MAX = 256
    DRAWS_BYTES = 32 << 20  # count matrices kept for reuse (groups of one size share theirs), at most

    def __init__(self, *, confidence: float, resamples: int, seed: int) -> None:
        self.confidence, self.resamples, self.seed = confidence, resamples, seed
        self._draws: dict[int, np.ndarray] = {}
        self._draws_bytes = 0

    def intervals(self, columns: np.ndarray) -> tuple[Interval | None, Interval | None]:
        """Intervals of alpha and tau for the rows of `columns` = (A, A + R, emitted, S) per sample."""
        samples = columns.shape[0]
        if samples < 2:
            return None, None
        sums = self._exact(columns) if samples <= self.EXACT_MAX else self._normal(columns)
        with np.errstate(divide="ignore", invalid="ignore"):
            alphas = sums[:, 0] / sums[:, 1]
            taus = sums[:, 2] / sums[:, 3]
        levels = expanded_levels(samples, self.confidence)
        if np.isfinite(alphas).all() and np.isfinite(taus).all():  # both at once
            (alpha_low, tau_low), (alpha_high, tau_high) = _quantiles(np.stack((alphas, taus), axis=1), levels)
            return Interval(alpha_low, alpha_high), Interval(tau_low, tau_high)
        return percentile_interval(alphas, levels), percentile_interval(taus, levels)

    def alpha_difference(self, columns: np.ndarray) -> Interval | None:
        """Interval of alpha(second) - alpha(first) for the rows of `columns` = (A, A + R) of the first
        measurement, then of the second, per sample (`paired_proposals`); None below 2 samples."""
        samples = columns.shape[0]
        if samples < 2:
            return None
        if samples <= self.EXACT_MAX:
            sums = self._exact(columns)
        else:
            sums = resampled_sums(columns, self.resamples, np.random.default_rng(self.seed))
        with np.errstate(divide="ignore", invalid="ignore"):
            differences = sums[:, 2] / sums[:, 3] - sums[:, 0] / sums[:, 1]
        return percentile_interval(differences, expanded_levels(samples, self.confidence))

    def _exact(self, columns: np.ndarray) -> np.ndarray:
        return self._draw_counts(columns.shape[0]) @ columns

    def _draw_counts(self, samples: int) -> np.ndarray:
        """How often each of `samples` rows is drawn in each resample (the draws `resampled_sums` makes in
        one call), in the smallest unsigned type that holds them."""
        draws = self._draws.get(samples)
        if draws is None:
            picks = np.random.default_rng(self.seed).integers(0, samples, size=(self.resamples, samples))
            offsets = (np.arange(self.resamples) * samples)[:, None]
            flat = np.bincount((picks + offsets).ravel(), minlength=self.resamples * samples)
            draws = flat.reshape(self.resamples, samples).astype(np.min_scalar_type(int(flat.max())))
            if self._draws_bytes + draws.nbytes <= self.DRAWS_BYTES:
                self._draws[samples] = draws
                self._draws_bytes += draws.nbytes
        return draws

    def _normal(self, columns: np.ndarray) -> np.ndarray:
        samples = columns.shape[0]
        mean = columns.mean(axis=0)
        covariance = np.cov(columns, rowvar=False, bias=True) * samples
        values, vectors = np.linalg.eigh(covariance)
        root = vectors * np.sqrt(np.clip(values, 0.0, None))
        normal = np.random.default_rng(self.seed).standard_normal((self.resamples, columns.shape[1]))
        return samples * mean + normal @ root.T


def _quantiles(values: np.ndarray, levels: tuple[float, float]) -> list[tuple[float, ...]]:
    """np.quantile(values, levels, axis=0) with its default (linear) method, for a few columns: one sort
    instead of numpy's general machinery (which costs more than the bootstrap itself for small groups)."""
    ordered = np.sort(values, axis=0)
    found = []
    for level in levels:
        position = (ordered.shape[0] - 1) * level
        below = int(np.floor(position))
        above = min(below + 1, ordered.shape[0] - 1)
        fraction = position - below
        found.append(tuple(float(x) for x in ordered[below] + (ordered[above] - ordered[below]) * fraction))
    return found


def ratio_standard_error(numerator: np.ndarray, denominator: np.ndarray) -> float | None:
    """Standard error of sum(numerator) / sum(denominator) over samples (linearized, with n / (n - 1)): the
    scale of the one-sided tests whose p-values the false-alarm control ranks. None below 2 samples or
    without a denominator."""
    samples, total = numerator.shape[0], float(denominator.sum())
    if samples < 2 or total <= 0.0:
        return None
    ratio = float(numerator.sum()) / total
    residuals = numerator - ratio * denominator
    return float(np.sqrt(samples / (samples - 1) * float(residuals @ residuals))) / total


@dataclass(frozen=True)
class _Window:
    name: str
    start: datetime
    end: datetime


def _group_stats(
    name: str,
    kind: str,
    window: _Window,
    columns: ResultColumns,
    rows: np.ndarray,
    bootstrap: GroupBootstrap,
    *,
    window_k: int,
    cost_ratio: float | None,
    source: str,
) -> SegmentStats:
    total = columns.counts(rows)
    accepted, steps = columns.accepted[rows], columns.steps[rows]
    proposed = accepted + columns.rejected[rows]
    per_sample = np.column_stack((accepted, proposed, accepted + steps - columns.eos_ended[rows], steps))
    alpha_interval, tau_interval = bootstrap.intervals(per_sample)
    return SegmentStats(
        segment=name,
        window=window.name,
        start=window.start,
        end=window.end,
        samples=int(rows.shape[0]),
        tokens=int(columns.tokens[rows].sum()),
        counts=total,
        alpha=total.alpha,
        alpha_interval=alpha_interval,
        tau=total.tau,
        tau_interval=tau_interval,
        draft_acceptance_rate=total.draft_acceptance_rate,
        per_position_rates=total.per_position_rates,
        estimated_speedup=estimated_speedup(total.tau, window_k, cost_ratio),
        confidence=bootstrap.confidence,
        from_ids=int(columns.from_ids[rows].sum()),
        retokenized_differs=int(columns.retokenized_differs[rows].sum()),
        source=source,
        rejected_estimated=int(columns.rejected_estimated[rows].sum()),
        kind=kind,
        alpha_standard_error=ratio_standard_error(accepted, proposed),
    )


def group_rows(columns: ResultColumns, grouping: Grouping) -> Iterator[tuple[int, np.ndarray]]:
    """(group index, its rows in time order) for every group with a sample in `columns`, one level of the
    grouping after the other and by group index within a level; a level's rows are built as it is reached,
    so one level's index array is held at a time."""
    if len(columns) == 0:
        return
    per_segment = np.bincount(columns.segment, minlength=len(grouping.segments))
    compact = np.int16 if len(grouping.names) < np.iinfo(np.int16).max else np.int32  # radix-sorted, stable
    for level in grouping.levels:
        order = np.argsort(level.of_segment.astype(compact)[columns.segment], kind="stable")
        sizes = np.bincount(level.of_segment + 1, weights=per_segment, minlength=len(grouping.names) + 1)
        stops = np.cumsum(sizes.astype(np.int64))  # rows of no group (-1) sort first
        for group in np.flatnonzero(sizes[1:]).tolist():
            yield group, order[stops[group] : stops[group + 1]]


def _check_arguments(now: datetime, confidence: float, resamples: int) -> None:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (UTC)")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence {confidence} must lie in (0, 1)")
    if resamples < 1:
        raise ValueError(f"resamples {resamples} must be at least 1")


def segment_stats(
    results: Iterable[SampleResult] | ResultColumns,
    windows: Mapping[str, timedelta],
    now: datetime,
    *,
    window_k: int,
    cost_ratio: float | None,
    confidence: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
    source: str = SHADOW,
    rollups: Sequence[Sequence[str]] = (),
) -> list[SegmentStats]:
    """One SegmentStats per (group, window) with a sample in (now - window, now]: all traffic ("*"), each
    segment and each roll-up (`monitor.base.groups`: every single label, and the label sets of `rollups`).

    Ordered by window (in `windows` order), then "*" first and the groups sorted by name. Every group is
    bootstrapped with the same seed, so a group's interval does not depend on which others were present.
    """
    _check_arguments(now, confidence, resamples)
    columns = results if isinstance(results, ResultColumns) else ResultColumns.from_results(results)
    grouping = Grouping.of(columns.segments, rollups)
    bootstrap = GroupBootstrap(confidence=confidence, resamples=resamples, seed=seed)
    stats: list[SegmentStats] = []
    for name, length in windows.items():
        window = _Window(name, now - length, now)
        inside = columns.window(window.start, now)
        found = [
            _group_stats(
                grouping.names[group],
                grouping.kinds[group],
                window,
                inside,
                rows,
                bootstrap,
                window_k=window_k,
                cost_ratio=cost_ratio,
                source=source,
            )
            for group, rows in group_rows(inside, grouping)
        ]
        stats += sorted(found, key=lambda item: (item.segment != ALL_SEGMENTS, item.segment))
        logger.debug("window %s: %d samples in %d groups", name, len(inside), len(found))
    return stats
