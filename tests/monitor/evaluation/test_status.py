"""segment_statuses and the status table: both sources side by side, state and trend on the primary one."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from monitor.base.config import DriftConfig
from monitor.base.stats import LIVE, SHADOW, SampleResult, SegmentStats, segment_stats
from monitor.evaluation.status import BREACH, ESTIMATE_MARK, OK, UNKNOWN, render_table, segment_statuses
from tests.monitor.stored_counts import HIGH, LOW, Steps, counts_of

STATUS_NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
STATUS_WINDOWS = {"1h": timedelta(hours=1), "24h": timedelta(hours=24)}


def results(
    segment: str, steps: Steps, hours_ago: float, count: int = 12, estimated: bool = False
) -> list[SampleResult]:
    moment = STATUS_NOW - timedelta(hours=hours_ago)
    return [
        SampleResult(index, segment, moment, counts_of(steps), 20, "draft-a", rejected_estimated=estimated)
        for index in range(count)
    ]


def both_sources(shadow: list[SampleResult], live: list[SampleResult]) -> list[SegmentStats]:
    stats = segment_stats(shadow, STATUS_WINDOWS, STATUS_NOW, window_k=4, cost_ratio=None, resamples=100)
    return stats + segment_stats(
        live, STATUS_WINDOWS, STATUS_NOW, window_k=4, cost_ratio=None, resamples=100, source=LIVE
    )


def test_state_and_trend_read_the_primary_source() -> None:
    shadow = results("lang=en", HIGH, 5) + results("lang=ja", HIGH, 5)
    live = results("lang=en", LOW, 5, estimated=True) + results("lang=en", HIGH, 0.5)  # recovered in the last hour
    stats = both_sources(shadow, live)
    drift = DriftConfig(min_samples=10)

    by_shadow = {s.segment: s for s in segment_statuses(stats, "24h", "1h", drift, SHADOW)}
    assert list(by_shadow) == ["*", "lang=en", "lang=ja"]
    assert by_shadow["lang=en"].state == OK and by_shadow["lang=en"].trend == "·", "no shadow in the last hour"
    assert by_shadow["lang=en"].live is not None and by_shadow["lang=en"].live.samples == 24

    by_live = {s.segment: s for s in segment_statuses(stats, "24h", "1h", drift, LIVE)}
    assert by_live["lang=en"].current is by_live["lang=en"].live and by_live["lang=en"].trend == "↑"
    assert by_live["lang=ja"].live is None and by_live["lang=ja"].state == UNKNOWN, "nothing live to judge"
    assert by_live["lang=ja"].to_dict()["live"] is None and by_live["lang=ja"].to_dict()["primary"] == LIVE

    only_low = both_sources(shadow, results("lang=en", LOW, 5, estimated=True))
    [_, en, _] = segment_statuses(only_low, "24h", "1h", drift, LIVE)
    assert en.state == BREACH
    table = render_table([en], colour=False).splitlines()
    assert f"{ESTIMATE_MARK}0.250" in table[1] and "0.917" in table[1]


def test_paired_comes_from_either_source() -> None:
    stats = [replace(item, paired=7) for item in both_sources(results("lang=en", HIGH, 5), [])]
    [everything, en] = segment_statuses(stats, "24h", "1h", DriftConfig(min_samples=10), SHADOW)
    assert (everything.paired, en.paired) == (7, 7) and en.to_dict()["paired"] == 7
    header = render_table([everything, en], colour=False).splitlines()[0]
    assert " shadow " in header and " live " not in header, "a source without statistics gets no columns"
