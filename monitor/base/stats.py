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

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from statistics import NormalDist
from typing import Any

import numpy as np
from scipy.stats import t as student_t

from decoder.metrics import AcceptCounts

logger = logging.getLogger(__name__)

ALL_SEGMENTS = "*"
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


def expanded_levels(samples: int, confidence: float) -> tuple[float, float]:
    """Percentile levels of Hesterberg's expanded percentile interval for n = `samples`."""
    tail = (1.0 - confidence) / 2.0
    t_quantile = float(student_t.ppf(1.0 - tail, samples - 1))
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
    first: Sequence[AcceptCounts], second: Sequence[AcceptCounts], *, confidence: float, resamples: int, seed: int
) -> Interval | None:
    """Paired cluster-bootstrap interval of alpha(second) - alpha(first), the two lists holding the same
    samples in the same order: each resample draws samples with replacement and recomputes both ratio
    estimators on the same draw. None below 2 samples."""
    if len(first) < 2:
        return None
    columns = np.array(
        [
            (one.accepted, one.accepted + one.rejected, two.accepted, two.accepted + two.rejected)
            for one, two in zip(first, second, strict=True)
        ],
        dtype=np.float64,
        order="F",
    )
    sums = resampled_sums(columns, resamples, np.random.default_rng(seed))
    first_accepted, first_denominator, second_accepted, second_denominator = sums.T
    with np.errstate(divide="ignore", invalid="ignore"):
        differences = second_accepted / second_denominator - first_accepted / first_denominator
    return percentile_interval(differences, expanded_levels(len(first), confidence))


def beyond_tolerance(interval: Interval, tolerance: float) -> bool:
    """The whole interval of a difference lies more than `tolerance` away from zero, on either side."""
    return interval.low > tolerance or interval.high < -tolerance


def _stats_for(
    segment: str,
    window: str,
    start: datetime,
    end: datetime,
    results: Sequence[SampleResult],
    *,
    window_k: int,
    cost_ratio: float | None,
    confidence: float,
    resamples: int,
    seed: int,
    source: str,
) -> SegmentStats:
    counts = [result.counts for result in results]
    total = AcceptCounts.total(counts)
    alpha_interval, tau_interval = bootstrap_intervals(counts, confidence=confidence, resamples=resamples, seed=seed)
    return SegmentStats(
        segment=segment,
        window=window,
        start=start,
        end=end,
        samples=len(results),
        tokens=sum(result.completion_tokens for result in results),
        counts=total,
        alpha=total.alpha,
        alpha_interval=alpha_interval,
        tau=total.tau,
        tau_interval=tau_interval,
        draft_acceptance_rate=total.draft_acceptance_rate,
        per_position_rates=total.per_position_rates,
        estimated_speedup=estimated_speedup(total.tau, window_k, cost_ratio),
        confidence=confidence,
        from_ids=sum(result.from_ids for result in results),
        retokenized_differs=sum(result.retokenized_equal is False for result in results),
        source=source,
        rejected_estimated=sum(result.rejected_estimated for result in results),
    )


def _by_segment(results: Iterable[SampleResult]) -> dict[str, list[SampleResult]]:
    groups: dict[str, list[SampleResult]] = defaultdict(list)
    for result in results:
        groups[result.segment].append(result)
        groups[ALL_SEGMENTS].append(result)
    return groups


def _check_arguments(now: datetime, confidence: float, resamples: int) -> None:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (UTC)")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence {confidence} must lie in (0, 1)")
    if resamples < 1:
        raise ValueError(f"resamples {resamples} must be at least 1")


def segment_stats(
    results: Iterable[SampleResult],
    windows: Mapping[str, timedelta],
    now: datetime,
    *,
    window_k: int,
    cost_ratio: float | None,
    confidence: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
    source: str = SHADOW,
) -> list[SegmentStats]:
    """One SegmentStats per (segment, window) with a sample in (now - window, now], plus "*" for all traffic.

    Ordered by window (in `windows` order), then "*" first and the segments sorted. Every group is
    bootstrapped with its own generator seeded by `seed`, so a segment's interval does not depend on
    which other segments were present.
    """
    _check_arguments(now, confidence, resamples)
    results = list(results)
    stats: list[SegmentStats] = []
    for window, length in windows.items():
        start = now - length
        inside = [result for result in results if start < result.occurred_at <= now]
        groups = _by_segment(inside)
        for segment in sorted(groups, key=lambda name: (name != ALL_SEGMENTS, name)):
            stats.append(
                _stats_for(
                    segment,
                    window,
                    start,
                    now,
                    groups[segment],
                    window_k=window_k,
                    cost_ratio=cost_ratio,
                    confidence=confidence,
                    resamples=resamples,
                    seed=seed,
                    source=source,
                )
            )
        logger.debug("window %s: %d samples in %d segments", window, len(inside), max(len(groups) - 1, 0))
    return stats


def alpha_series(results: Iterable[SampleResult], segment: str) -> list[tuple[datetime, float]]:
    """(occurred_at, per-sample alpha) of one segment ("*" for all), in time order, for change detection.

    Samples that drafted nothing have no alpha and are skipped.
    """
    chosen = [r for r in results if segment in (ALL_SEGMENTS, r.segment) and r.counts.alpha is not None]
    chosen.sort(key=lambda r: (r.occurred_at, r.sample_id))
    return [(r.occurred_at, r.counts.alpha) for r in chosen if r.counts.alpha is not None]
