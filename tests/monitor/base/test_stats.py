"""Per-segment window statistics: hand-computed metrics, window edges, and bootstrap interval behaviour."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from decoder.metrics import AcceptCounts
from monitor.base.stats import (
    GroupBootstrap,
    SampleResult,
    SegmentStats,
    bootstrap_intervals,
    estimated_speedup,
    expanded_levels,
    paired_alpha_difference,
    paired_proposals,
    ratio_standard_error,
    segment_stats,
)

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
HOUR = {"1h": timedelta(hours=1)}


def counts_of(steps: Sequence[tuple[int, int]]) -> AcceptCounts:
    """Counts of (drafted, accepted) verify steps."""
    counts = AcceptCounts()
    for drafted, accepted in steps:
        counts.add_step(drafted, accepted)
    return counts


def result(
    sample_id: int, segment: str, counts: AcceptCounts, *, ago: timedelta = timedelta(minutes=5), tokens: int = 10
) -> SampleResult:
    return SampleResult(sample_id, segment, NOW - ago, counts, tokens, "draft-v1")


def simulated_counts(rng: np.random.Generator, acceptance: float, window_k: int = 4) -> AcceptCounts:
    """One sample of 5-60 verify steps; each drafted token is accepted with probability `acceptance`
    until the first rejection in its step (i.i.d. tokens, so the true alpha is `acceptance`)."""
    steps = int(rng.integers(5, 61))
    accepted = np.minimum(rng.geometric(1.0 - acceptance, size=steps) - 1, window_k)
    return AcceptCounts(
        accepted=float(accepted.sum()),
        rejected=float((accepted < window_k).sum()),
        drafted=float(steps * window_k),
        steps=float(steps),
    )


def simulated_results(
    rng: np.random.Generator, acceptances: Sequence[float], segment: str = "lang=en"
) -> list[SampleResult]:
    return [result(i, segment, simulated_counts(rng, p)) for i, p in enumerate(acceptances)]


def only(stats: list[SegmentStats], segment: str, window: str = "1h") -> SegmentStats:
    [item] = [s for s in stats if s.segment == segment and s.window == window]
    return item


# ---- point estimates ------------------------------------------------------------------------------


def test_hand_computed_metrics_per_segment_and_overall() -> None:
    english = counts_of([(4, 4), (4, 1)])  # A=5, R=1, D=8, S=2
    chinese = counts_of([(4, 0), (2, 2)])  # A=2, R=1, D=6, S=2
    results = [result(1, "lang=en", english, tokens=7), result(2, "lang=zh", chinese, tokens=5)]

    stats = segment_stats(results, HOUR, NOW, window_k=4, cost_ratio=0.05)

    assert [s.segment for s in stats] == ["*", "lang=en", "lang=zh"]
    overall = only(stats, "*")
    assert overall.samples == 2 and overall.tokens == 12
    assert overall.alpha == pytest.approx(7 / 9)
    assert overall.tau == pytest.approx(1 + 7 / 4)
    assert overall.draft_acceptance_rate == pytest.approx(7 / 14)
    assert overall.per_position_rates == pytest.approx([3 / 4, 2 / 4, 1 / 4, 1 / 4])
    assert overall.estimated_speedup == pytest.approx(2.75 / (1 + 4 * 0.05))
    assert overall.start == NOW - timedelta(hours=1) and overall.end == NOW
    assert only(stats, "lang=en").alpha == pytest.approx(5 / 6)
    assert only(stats, "lang=en").tau == pytest.approx(3.5)
    assert only(stats, "lang=zh").alpha == pytest.approx(2 / 3)
    assert only(stats, "lang=zh").tau == pytest.approx(2.0)


def test_speedup_is_unknown_without_cost_ratio() -> None:
    stats = segment_stats([result(1, "lang=en", counts_of([(4, 2)]))], HOUR, NOW, window_k=4, cost_ratio=None)
    assert all(s.estimated_speedup is None for s in stats)
    assert estimated_speedup(3.0, 4, 0.25) == pytest.approx(1.5)


def test_windows_include_and_exclude_by_time() -> None:
    counts = counts_of([(4, 3)])
    results = [
        result(1, "lang=en", counts, ago=timedelta(0)),  # exactly now: inside
        result(2, "lang=en", counts, ago=timedelta(minutes=30)),
        result(3, "lang=en", counts, ago=timedelta(hours=1)),  # exactly at the start: outside (now - 1h, now]
        result(4, "lang=zh", counts, ago=timedelta(hours=2)),
        result(5, "lang=zh", counts, ago=timedelta(days=2)),  # outside both windows
        result(6, "lang=en", counts, ago=-timedelta(minutes=1)),  # in the future: outside
    ]
    windows = {"1h": timedelta(hours=1), "1d": timedelta(days=1)}

    stats = segment_stats(results, windows, NOW, window_k=4, cost_ratio=None)

    assert [(s.window, s.segment, s.samples) for s in stats] == [
        ("1h", "*", 2),
        ("1h", "lang=en", 2),
        ("1d", "*", 4),
        ("1d", "lang=en", 3),
        ("1d", "lang=zh", 1),
    ]
    assert (
        segment_stats(results, {"1m": timedelta(minutes=1)}, NOW - timedelta(days=10), window_k=4, cost_ratio=None)
        == []
    )


def test_to_dict_is_json_ready() -> None:
    rng = np.random.default_rng(1)
    stats = segment_stats(simulated_results(rng, [0.7] * 5), HOUR, NOW, window_k=4, cost_ratio=0.1)
    data = json.loads(json.dumps(only(stats, "lang=en").to_dict()))
    assert data["samples"] == 5
    assert data["alpha_interval"]["low"] <= data["alpha"] <= data["alpha_interval"]["high"]
    assert data["start"] == (NOW - timedelta(hours=1)).isoformat()


def test_naive_now_is_rejected() -> None:
    with pytest.raises(ValueError, match="timezone"):
        segment_stats([], HOUR, datetime(2026, 1, 1), window_k=4, cost_ratio=None)


# ---- intervals ------------------------------------------------------------------------------------


def test_single_sample_has_no_interval() -> None:
    stats = segment_stats([result(1, "lang=en", counts_of([(4, 2), (4, 4)]))], HOUR, NOW, window_k=4, cost_ratio=None)
    assert only(stats, "lang=en").alpha == pytest.approx(6 / 7)
    assert only(stats, "lang=en").alpha_interval is None
    assert only(stats, "lang=en").tau_interval is None


def test_three_samples_give_an_interval_as_wide_as_the_samples_disagree() -> None:
    low = counts_of([(4, 0)] * 3 + [(4, 2)] * 3)  # alpha 6/12 = 0.5
    middle = counts_of([(4, 2)] * 4 + [(4, 4)] * 2)  # alpha 16/20 = 0.8
    high = counts_of([(4, 4)] * 5 + [(4, 3)])  # alpha 23/24
    results = [result(i, "lang=ko", c) for i, c in enumerate([low, middle, high])]

    alpha = only(segment_stats(results, HOUR, NOW, window_k=4, cost_ratio=None), "lang=ko")

    assert alpha.alpha_interval is not None
    assert alpha.alpha_interval.low == pytest.approx(0.5, abs=1e-3)
    assert alpha.alpha_interval.high == pytest.approx(23 / 24, abs=1e-3)
    assert alpha.alpha_interval.high - alpha.alpha_interval.low > 0.4


def test_same_seed_same_interval() -> None:
    results = simulated_results(np.random.default_rng(2), [0.7] * 40)
    first = segment_stats(results, HOUR, NOW, window_k=4, cost_ratio=None, seed=5)
    again = segment_stats(results, HOUR, NOW, window_k=4, cost_ratio=None, seed=5)
    other = segment_stats(results, HOUR, NOW, window_k=4, cost_ratio=None, seed=6)
    assert first == again
    assert only(first, "lang=en").alpha_interval != only(other, "lang=en").alpha_interval


def test_interval_narrows_with_more_samples() -> None:
    rng = np.random.default_rng(3)
    widths = {}
    for samples in (50, 800):
        stats = only(
            segment_stats(simulated_results(rng, [0.7] * samples), HOUR, NOW, window_k=4, cost_ratio=None), "*"
        )
        assert stats.alpha_interval is not None and stats.tau_interval is not None
        assert stats.tau_interval.low <= stats.tau <= stats.tau_interval.high  # type: ignore[operator]
        widths[samples] = stats.alpha_interval.high - stats.alpha_interval.low
    assert widths[800] < widths[50] / 2.5  # sqrt(16) = 4 in theory


def population_alpha(acceptances: Sequence[float], window_k: int = 4) -> float:
    """E[A] / E[A + R] per step for an equal mix of per-token acceptances (step counts independent of p)."""
    accepted = [sum(p**j for j in range(1, window_k + 1)) for p in acceptances]
    rejected = [1 - p**window_k for p in acceptances]
    return sum(accepted) / (sum(accepted) + sum(rejected))


@pytest.mark.parametrize("acceptances", [(0.7,), (0.5, 0.9)], ids=["iid-0.7", "mixture-0.5-0.9"])
def test_interval_covers_true_alpha_about_95_percent(acceptances: tuple[float, ...]) -> None:
    """200 samples per run, 300 runs. The mixture (half the samples at 0.5, half at 0.9) makes tokens
    within a sample correlated; a token-level interval would cover far less than 95% there."""
    truth = population_alpha(acceptances)
    rng = np.random.default_rng(4)
    covered = 0
    runs = 300
    for run in range(runs):
        per_sample = rng.choice(acceptances, size=200).tolist()
        stats = segment_stats(simulated_results(rng, per_sample), HOUR, NOW, window_k=4, cost_ratio=None, seed=run)
        interval = only(stats, "*").alpha_interval
        assert interval is not None
        covered += interval.low <= truth <= interval.high
    assert 0.90 <= covered / runs <= 0.985


def test_tau_and_its_interval_count_emitted_tokens_per_verify_step() -> None:
    """A step ended by an accepted EOS emits its a drafted tokens and no target token."""
    counts = counts_of([(4, 4), (4, 1)])
    counts.add_step(2, 2, eos_ended=True)  # A=7, S=3, E=1: 7 + 3 - 1 = 9 tokens after the prefill
    results = [result(i, "lang=en", counts) for i in range(3)]

    stats = only(segment_stats(results, HOUR, NOW, window_k=4, cost_ratio=None), "lang=en")

    assert stats.tau == pytest.approx(9 / 3)
    assert stats.tau_interval is not None
    assert stats.tau_interval.low == pytest.approx(3.0) and stats.tau_interval.high == pytest.approx(3.0)


# ---- groups and bounded bootstrap -------------------------------------------------------------------


def test_roll_ups_pool_the_segments_they_name() -> None:
    """Each group's counts are the plain sum of its members' counts (AcceptCounts.total), computed here
    from the results alone."""
    rng = np.random.default_rng(21)
    segments = ["tenant=a/lang=zh", "tenant=b/lang=zh", "tenant=a/lang=en", "tenant=b/lang=en"]
    results = [
        result(i, segments[i % 4], simulated_counts(rng, 0.5 + 0.1 * (i % 4)), ago=timedelta(minutes=i % 50))
        for i in range(80)
    ]
    stats = segment_stats(results, HOUR, NOW, window_k=4, cost_ratio=None, resamples=200)

    expected_members = {
        "*": segments,
        "lang=zh": segments[:2],
        "lang=en": segments[2:],
        "tenant=a": [segments[0], segments[2]],
        "tenant=b": [segments[1], segments[3]],
        **{segment: [segment] for segment in segments},
    }
    assert {s.segment for s in stats} == set(expected_members)
    for name, members in expected_members.items():
        chosen = [r for r in results if r.segment in members]
        item = only(stats, name)
        assert item.samples == len(chosen)
        assert item.counts == AcceptCounts.total(r.counts for r in chosen)  # integer counts: exact sums
        assert item.kind == ("all" if name == "*" else "segment" if name in segments else "rollup")


def test_exact_group_bootstrap_reproduces_the_per_sample_bootstrap() -> None:
    """Up to EXACT_MAX samples the count-matrix bootstrap draws what bootstrap_intervals draws."""
    rng = np.random.default_rng(3)
    for size in (2, 7, 120, GroupBootstrap.EXACT_MAX):
        counts = [simulated_counts(rng, 0.65) for _ in range(size)]
        columns = np.array([(c.accepted, c.accepted + c.rejected, c.emitted, c.steps) for c in counts])
        grouped = GroupBootstrap(confidence=0.95, resamples=300, seed=4).intervals(columns)
        plain = bootstrap_intervals(counts, confidence=0.95, resamples=300, seed=4)
        for mine, theirs in zip(grouped, plain, strict=True):
            assert mine is not None and theirs is not None
            assert (mine.low, mine.high) == pytest.approx((theirs.low, theirs.high), abs=1e-12)


def test_paired_difference_resamples_each_sample_as_drawing_indices_does() -> None:
    """One GroupBootstrap for many sizes (its count matrices shared) gives, at every size, the interval of
    drawing sample indices with replacement and summing both measurements' A and A + R on each draw."""
    rng = np.random.default_rng(6)
    bootstrap = GroupBootstrap(confidence=0.9, resamples=300, seed=2)
    for size in (2, 7, 120, GroupBootstrap.EXACT_MAX, 7, GroupBootstrap.EXACT_MAX + 40):
        first = [simulated_counts(rng, 0.7) for _ in range(size)]
        second = [simulated_counts(rng, 0.6) for _ in range(size)]
        columns = np.array([(a.accepted, a.accepted + a.rejected, b.accepted, b.accepted + b.rejected)
                            for a, b in zip(first, second, strict=True)])  # fmt: skip
        picks = np.random.default_rng(2).integers(0, size, size=(300, size))
        sums = columns[picks].sum(axis=1)
        differences = sums[:, 2] / sums[:, 3] - sums[:, 0] / sums[:, 1]
        low, high = np.quantile(differences, expanded_levels(size, 0.9))
        found = bootstrap.alpha_difference(paired_proposals(first, second))
        assert found is not None and (found.low, found.high) == pytest.approx((low, high), abs=1e-12)
        again = paired_alpha_difference(first, second, confidence=0.9, resamples=300, seed=2)
        assert again == found
    assert bootstrap.alpha_difference(np.ones((1, 4))) is None


def test_large_groups_draw_sums_from_their_normal_limit_and_agree_with_the_bootstrap() -> None:
    """Just above EXACT_MAX, skewed per-sample counts: the normal-limit interval of alpha lies within 0.005
    of the exact cluster bootstrap (the figure the GroupBootstrap docstring quotes), tau's within 0.5%."""
    rng = np.random.default_rng(5)
    counts = [simulated_counts(rng, float(p)) for p in rng.beta(2.0, 1.0, size=GroupBootstrap.EXACT_MAX + 1)]
    columns = np.array([(c.accepted, c.accepted + c.rejected, c.emitted, c.steps) for c in counts])
    approximate = GroupBootstrap(confidence=0.95, resamples=4000, seed=1).intervals(columns)
    exact = bootstrap_intervals(counts, confidence=0.95, resamples=4000, seed=1)
    for mine, theirs, tolerance in zip(approximate, exact, (0.005, 0.005 * 3.0), strict=True):
        assert mine is not None and theirs is not None
        assert abs(mine.low - theirs.low) < tolerance and abs(mine.high - theirs.high) < tolerance


def test_ratio_standard_error_matches_the_spread_of_the_bootstrap() -> None:
    rng = np.random.default_rng(8)
    counts = [simulated_counts(rng, float(p)) for p in rng.uniform(0.4, 0.9, size=400)]
    accepted = np.array([c.accepted for c in counts])
    proposed = np.array([c.accepted + c.rejected for c in counts])
    picks = rng.integers(0, 400, size=(4000, 400))
    bootstrap_sd = float(np.std(accepted[picks].sum(axis=1) / proposed[picks].sum(axis=1)))
    error = ratio_standard_error(accepted, proposed)
    assert error is not None and error == pytest.approx(bootstrap_sd, rel=0.08)
    assert ratio_standard_error(accepted[:1], proposed[:1]) is None
    assert ratio_standard_error(np.zeros(3), np.zeros(3)) is None
