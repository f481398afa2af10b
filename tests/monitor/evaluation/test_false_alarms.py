"""False-alarm control: Benjamini-Hochberg against statsmodels, the tests' p-values, and the simulation
the scale target names: 2,000 stable segments for 7 days page (almost) never, one true drop is found."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from statsmodels.stats.multitest import multipletests

from monitor.base.columns import ResultColumns
from monitor.base.config import Config
from monitor.base.groups import contains
from monitor.base.stats import segment_stats
from monitor.evaluation.drift import PageHinkley, first_drop, threshold_findings, threshold_tests
from monitor.evaluation.evaluate import acceptance_findings
from monitor.evaluation.false_alarms import Hypothesis, adjusted_p_values, below_p_value, controlled, drop_p_value
from monitor.evaluation.finding import Finding

START = datetime(2026, 11, 1, tzinfo=UTC)


def test_adjusted_p_values_are_statsmodels_benjamini_hochberg() -> None:
    rng = np.random.default_rng(0)
    for size in (1, 2, 17, 500):
        p_values = np.concatenate([rng.uniform(size=size), rng.uniform(0, 1e-4, size=size // 5)])
        _, expected, _, _ = multipletests(p_values, alpha=0.05, method="fdr_bh")
        assert adjusted_p_values(list(p_values)) == pytest.approx(list(expected), rel=1e-12, abs=1e-15)
    assert adjusted_p_values([]) == []


def test_controlled_keeps_rejected_findings_with_their_evidence_and_passes_untested_ones() -> None:
    def finding(segment: str) -> Finding:
        return Finding("threshold", segment, "1h", "critical", f"{segment} low", {"alpha": 0.5})

    tests = [
        Hypothesis("threshold", "lang=zh", "1h", 1e-6, finding("lang=zh")),
        Hypothesis("threshold", "lang=ko", "1h", 0.04, finding("lang=ko")),  # pointwise yes, not among 100
        *(Hypothesis("threshold", f"t={i}", "1h", 0.5, None) for i in range(98)),
        Hypothesis("input_drift", "*", "24h", None, finding("*")),
    ]
    kept = controlled(tests, 0.05)
    assert [f.segment for f in kept] == ["lang=zh", "*"]
    assert kept[0].evidence["tests"] == 100 and kept[0].evidence["q_value"] == pytest.approx(1e-4)
    assert kept[0].evidence["alpha"] == 0.5 and kept[1].evidence == {"alpha": 0.5}


def test_p_values_of_the_one_sided_tests() -> None:
    assert below_p_value(0.60, 0.65, 0.01, 200) < 1e-5
    assert below_p_value(0.70, 0.65, 0.01, 200) > 0.99
    assert below_p_value(0.64, 0.65, 0.01, 3) == pytest.approx(0.2113, abs=1e-3)  # t with 2 df: heavier tails
    assert below_p_value(0.6, 0.65, None, 200) is None and below_p_value(0.6, 0.65, 0.01, 1) is None
    assert below_p_value(0.6, 0.65, 0.0, 50) == 0.0 and below_p_value(0.7, 0.65, 0.0, 50) == 1.0
    assert drop_p_value(0.80, 0.01, 0.60, 0.01, 0.05) < 1e-20
    assert drop_p_value(0.80, 0.01, 0.78, 0.01, 0.05) > 0.98


def test_first_drop_is_the_page_hinkley_loop() -> None:
    """The array form fires where PageHinkley.update (the definition, one value at a time) fires, with the
    same statistic, start of the drop and mean since."""
    rng = np.random.default_rng(2)
    for trial in range(60):
        values = np.clip(
            np.concatenate([rng.normal(0.8, 0.15, 300), rng.normal(rng.uniform(0.4, 0.85), 0.15, 300)]), 0, 1
        )
        baseline = None if trial % 3 == 0 else float(rng.uniform(0.7, 0.9))
        detector = PageHinkley(delta=0.05, threshold=5.0, min_samples=30, baseline=baseline)
        fired = next((i for i, value in enumerate(values) if detector.update(value)), None)
        drop = first_drop(values, baseline, delta=0.05, threshold=5.0, min_samples=30)
        if fired is None:
            assert drop is None
            continue
        assert drop is not None and drop.fired_index == fired
        assert drop.statistic == pytest.approx(detector.statistic, abs=1e-9)
        assert drop.change_index == min(detector.minimum_at, fired)
        assert drop.recent_mean == pytest.approx(detector.mean_since_minimum)


# ---- the simulation ------------------------------------------------------------------------------------

SEGMENTS = 2000
PER_DAY = 40  # samples per segment per day: every segment is tested in the 24h window
DROPPED = "tenant=t0007/lang=zh"
DROPPED_PER_DAY = 260
DROP_AT = START + timedelta(days=5)


def simulated_columns(rng: np.random.Generator, days: int, stable: tuple[float, float] = (14, 6)) -> ResultColumns:
    """Per-sample counts with clustered acceptance: a sample's own acceptance p ~ Beta(`stable`) (mean 0.70)
    times 10-60 proposed tokens, binomial A; one segment falls to p ~ Beta(11, 9) (mean 0.55) at DROP_AT."""
    names = [f"tenant=t{i // 4:04d}/lang={('en', 'zh', 'ja', 'ko')[i % 4]}" for i in range(SEGMENTS)]
    dropped = names.index(DROPPED)
    segment = np.concatenate(
        [np.repeat(np.arange(SEGMENTS), PER_DAY * days), np.full((DROPPED_PER_DAY - PER_DAY) * days, dropped)]
    )
    count = segment.shape[0]
    occurred = START.timestamp() + rng.uniform(0, days * 86400.0, count)
    late = (segment == dropped) & (occurred >= DROP_AT.timestamp())
    acceptance = np.where(late, rng.beta(11, 9, count), rng.beta(*stable, count))
    proposed = rng.integers(10, 61, count).astype(np.float64)
    accepted = rng.binomial(proposed.astype(np.int64), acceptance).astype(np.float64)
    rejected = proposed - accepted
    order = np.argsort(occurred, kind="stable")
    zeros = np.zeros(count)
    columns = ResultColumns(
        segments=tuple(names),
        segment=segment,
        sample_id=np.arange(count),
        occurred=occurred,
        accepted=accepted,
        rejected=rejected,
        drafted=proposed * 1.5,
        steps=rejected + 1,
        eos_ended=zeros,
        tokens=(accepted + rejected + 1).astype(np.int64),
        window_k=np.full(count, 4),
        per_position=np.zeros((count, 0)),
        histogram=np.zeros((count, 0)),
        from_ids=zeros.astype(bool),
        retokenized_differs=zeros.astype(bool),
        rejected_estimated=zeros.astype(bool),
    )
    return columns.take(order)


@pytest.mark.slow
def test_two_thousand_stable_segments_for_a_week_page_on_under_one_percent_and_a_drop_is_found() -> None:
    """Daily evaluations for 7 days over 2,000 segments at alpha 0.70 (plus their roll-ups): fewer than 1%
    of the segments ever page; one segment falling to 0.55 with >= 200 samples a day is found by the second
    evaluation after the drop at the latest."""
    rng = np.random.default_rng(17)
    columns = simulated_columns(rng, days=9)
    config = Config.model_validate({"stats": {"windows": ["24h"], "resamples": 200}, "drift": {"change_window": "1d"}})
    paged: set[str] = set()
    found_at = None
    tested = 0
    for day in range(1, 8):
        now = START + timedelta(days=2 + day)
        lookback = columns.window(now - timedelta(days=2), now)
        stats = segment_stats(lookback, {"24h": timedelta(days=1)}, now, window_k=4, cost_ratio=None, resamples=200)
        tests, findings = acceptance_findings(config, stats, lookback, now)
        tested = max(tested, len(tests))
        for finding in findings:
            if now > DROP_AT and contains(finding.segment, DROPPED):
                if finding.segment in (DROPPED, "tenant=t0007"):
                    found_at = found_at or now
            else:
                paged.add(finding.segment)  # a group without the dropped segment, or before the drop
    assert tested > 2 * SEGMENTS  # every segment and roll-up tested, by both detectors
    assert len(paged) < 0.01 * SEGMENTS, sorted(paged)
    assert found_at is not None and found_at <= DROP_AT + timedelta(days=2)


def test_segments_at_the_threshold_page_pointwise_but_not_under_control() -> None:
    """2,000 segments whose true alpha is the threshold itself (0.65): each one's 95% rule alone pages a
    few percent of them; Benjamini-Hochberg at 5% pages (almost) none."""
    rng = np.random.default_rng(23)
    columns = simulated_columns(rng, days=1, stable=(13, 7))  # mean 0.65
    now = START + timedelta(days=1)
    stats = segment_stats(columns, {"24h": timedelta(days=1)}, now, window_k=4, cost_ratio=None, resamples=200)
    segments = [item for item in stats if item.kind == "segment" and item.segment != DROPPED]
    pointwise = [test for test in threshold_tests(segments) if test.finding is not None]
    assert len(pointwise) >= 0.01 * SEGMENTS
    assert len(threshold_findings(segments)) <= 2
