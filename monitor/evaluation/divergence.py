"""Live/shadow divergence: does the serving engine accept what a replay of the registry's live head predicts?

    findings = divergence_findings(pairs, windows, now, tolerance=0.05, min_pairs=30)

On the samples that carry both the engine's own per-request counts (live) and a shadow replay of the
live head on the same completion, the paired cluster-bootstrap interval of alpha(live) - alpha(shadow)
(`monitor.base.stats.GroupBootstrap.alpha_difference`) is computed per segment and for all traffic ("*"), for
each window. When the whole interval lies more than `tolerance` away from zero, the two measurements
disagree beyond noise and a `divergence` finding (alert ShadowLiveDivergence) names the group, the
positions where they differ most, the segments that diverge on their own, and an onset: the pair after
which the excess difference started to accumulate (the lowest point of the cumulative sum of
sign * d_i - tolerance over per-sample differences d_i, as in a Page-Hinkley test).

Neither side alone sees this: after a sleep/wake that did not reload the draft weights (vLLM #52479) the
engine rejects nearly every draft while the replay of the registry's head stays healthy.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from decoder.counts import AcceptCounts
from monitor.base.columns import ResultColumns
from monitor.base.results import LiveShadowPairs
from monitor.base.stats import ALL_SEGMENTS, GroupBootstrap, Interval, beyond_tolerance, paired_proposals
from monitor.evaluation.finding import CRITICAL, Finding

DETECTOR = "divergence"
CAUSES = (
    "the engine serves another head than the registry's live one (the deploy not reloaded yet, a reverted "
    "rollout, draft weights lost on sleep/wake)",
    "the engine samples differently from replay (temperature, top-p) or runs another window k",
    "a tokenizer or chat-template mismatch between the engine and replay",
)
POSITIONS_SHOWN = 3
SINCE_HEAD_CHANGE = "since-deploy"
"""the window of pairs since the live head last changed: the engine should serve the new head from then on"""


def divergence_windows(
    windows: Mapping[str, timedelta], head_changed_at: datetime | None, watched_for: timedelta, now: datetime
) -> dict[str, timedelta]:
    """The configured windows, plus SINCE_HEAD_CHANGE while the live head's last change is under watch (for
    `watched_for`, retrain.watch.window, and within the longest window): a window that mixes requests
    served before and after a deploy can hide an engine that never loaded it."""
    spans = dict(windows)
    if head_changed_at is not None and timedelta(0) < now - head_changed_at < min(watched_for, max(windows.values())):
        spans[SINCE_HEAD_CHANGE] = now - head_changed_at
    return spans


def divergence_findings(
    pairs: LiveShadowPairs,
    windows: Mapping[str, timedelta],
    now: datetime,
    *,
    tolerance: float,
    min_pairs: int,
    confidence: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
) -> list[Finding]:
    """One finding per (group, window) whose paired interval of live - shadow alpha excludes [-tolerance,
    tolerance], on at least `min_pairs` pairs."""
    findings: list[Finding] = []
    bootstrap = GroupBootstrap(confidence=confidence, resamples=resamples, seed=seed)
    for window, length in windows.items():
        inside = pairs.window(now - length, now)
        proposals = paired_proposals(inside.shadow, inside.live)
        groups = _groups(inside, min_pairs)
        diverging: dict[str, float] = {}
        found: dict[str, Finding] = {}
        for group in sorted(groups, key=lambda name: (name != ALL_SEGMENTS, name)):
            rows = groups[group]
            interval = bootstrap.alpha_difference(proposals[rows])
            if interval is None or not beyond_tolerance(interval, tolerance):
                continue  # the interval reaches into the tolerated band
            finding = _finding(group, window, inside.take(rows), interval, tolerance, confidence)
            found[group] = finding
            if group != ALL_SEGMENTS:
                diverging[group] = finding.evidence["difference"]
        if ALL_SEGMENTS in found:
            found[ALL_SEGMENTS].evidence["segments"] = dict(sorted(diverging.items()))
        findings.extend(found.values())
    return findings


def _groups(pairs: LiveShadowPairs, min_pairs: int) -> dict[str, slice | np.ndarray]:
    """The rows (in time order) of all pairs ("*") and of each segment's, for those with at least
    `min_pairs` pairs."""
    groups: dict[str, slice | np.ndarray] = {ALL_SEGMENTS: slice(None)} if len(pairs) >= min_pairs else {}
    segment = pairs.live.segment
    order = np.argsort(segment, kind="stable")
    present, starts, sizes = np.unique(segment[order], return_index=True, return_counts=True)
    for index, start, size in zip(present.tolist(), starts.tolist(), sizes.tolist(), strict=True):
        if size >= min_pairs:
            groups[pairs.live.segments[index]] = order[start : start + size]
    return groups


def _finding(
    group: str,
    window: str,
    pairs: LiveShadowPairs,
    interval: Interval,
    tolerance: float,
    confidence: float,
) -> Finding:
    live, shadow = pairs.live.counts(), pairs.shadow.counts()
    live_alpha, shadow_alpha = live.alpha or 0.0, shadow.alpha or 0.0
    difference = live_alpha - shadow_alpha
    onset = onset_of(pairs, sign=1.0 if difference > 0 else -1.0, tolerance=tolerance)
    summary = (
        f"the engine's alpha {live_alpha:.3f} vs shadow replay {shadow_alpha:.3f} on the same {len(pairs)} requests "
        f"of {group} over {window} (live - shadow {difference:+.3f}, CI {confidence:.0%} "
        f"{interval.low:+.3f}..{interval.high:+.3f}, tolerance {tolerance:.2f}), since {onset.isoformat()}"
    )
    engine_k = pairs.live.window_k
    evidence: dict[str, Any] = {
        "live_alpha": live_alpha,
        "shadow_alpha": shadow_alpha,
        "difference": difference,
        "interval": [interval.low, interval.high],
        "confidence": confidence,
        "tolerance": tolerance,
        "pairs": len(pairs),
        "since": onset.isoformat(),
        "live_tau": live.tau,
        "shadow_tau": shadow.tau,
        "live_draft_acceptance_rate": live.draft_acceptance_rate,
        "shadow_draft_acceptance_rate": shadow.draft_acceptance_rate,
        "positions": position_differences(live, shadow),
        "rejected_estimated": int(pairs.live.rejected_estimated.sum()),
        "windows_k": {
            "live": np.unique(engine_k[engine_k >= 0]).tolist(),
            "shadow": np.unique(pairs.shadow.window_k).tolist(),
        },
        "causes": list(CAUSES),
    }
    return Finding(DETECTOR, group, window, CRITICAL, summary, evidence)


def position_differences(live: AcceptCounts, shadow: AcceptCounts) -> list[dict[str, float | int]]:
    """The positions where live and shadow acceptance differ most: 1-based position, both rates, the gap."""
    live_rates, shadow_rates = live.per_position_rates, shadow.per_position_rates
    size = max(len(live_rates), len(shadow_rates))
    rows = []
    for index in range(size):
        live_rate = live_rates[index] if index < len(live_rates) else 0.0
        shadow_rate = shadow_rates[index] if index < len(shadow_rates) else 0.0
        rows.append({"position": index + 1, "live": live_rate, "shadow": shadow_rate, "gap": live_rate - shadow_rate})
    rows.sort(key=lambda row: -abs(row["gap"]))
    return rows[:POSITIONS_SHOWN]


def onset_of(pairs: LiveShadowPairs, *, sign: float, tolerance: float) -> datetime:
    """When the difference began: the pair after the lowest point of sum_i (sign * d_i - tolerance), with
    d_i the per-sample live - shadow alpha (pairs where either side drafted nothing are skipped; rows are
    in time order)."""
    live_alpha, live_drafted = _alphas(pairs.live)
    shadow_alpha, shadow_drafted = _alphas(pairs.shadow)
    steps = np.where(live_drafted & shadow_drafted, sign * (live_alpha - shadow_alpha) - tolerance, 0.0)
    cumulative = np.cumsum(steps)
    lowest = int(np.argmin(cumulative))  # the first row at the lowest point
    if cumulative[lowest] >= 0.0:
        return pairs.live.occurred_at(0)
    return pairs.live.occurred_at(min(lowest + 1, len(pairs) - 1))


def _alphas(columns: ResultColumns) -> tuple[np.ndarray, np.ndarray]:
    """Each sample's alpha, A / (A + R), and whether it drafted anything (alpha is 0 where it did not)."""
    proposed = columns.accepted + columns.rejected
    drafted = proposed > 0
    return np.divide(columns.accepted, proposed, out=np.zeros(len(columns)), where=drafted), drafted
