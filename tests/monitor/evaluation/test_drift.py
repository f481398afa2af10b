"""Drift detectors: threshold with intervals and overrides, Page-Hinkley drops, evidently input drift."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest

from decoder.metrics import AcceptCounts
from monitor.base.config import DriftConfig
from monitor.base.stats import Interval, SegmentStats, segment_stats
from monitor.evaluation.drift import (
    PageHinkley,
    change_findings,
    input_drift_finding,
    input_features,
    threshold_findings,
)
from monitor.intake.language import prose_languages
from monitor.service.demo_traffic import documents, exchange
from tests.monitor.base.test_stats import HOUR, NOW, simulated_results

# ---- threshold ------------------------------------------------------------------------------------


def window_stats(segment: str, alpha: float, low: float, high: float, samples: int = 100) -> SegmentStats:
    return SegmentStats(
        segment=segment,
        window="1h",
        start=NOW - timedelta(hours=1),
        end=NOW,
        samples=samples,
        tokens=samples * 50,
        counts=AcceptCounts(),
        alpha=alpha,
        alpha_interval=Interval(low, high),
        tau=2.0,
        tau_interval=Interval(1.9, 2.1),
        draft_acceptance_rate=alpha - 0.1,
    )


def test_threshold_fires_only_when_confidently_below() -> None:
    stats = [
        window_stats("lang=zh", 0.55, 0.52, 0.58),  # confidently below
        window_stats("lang=ja", 0.62, 0.58, 0.67),  # below, but the interval reaches 0.65
        window_stats("lang=en", 0.80, 0.78, 0.82),
        window_stats("lang=ko", 0.40, 0.35, 0.45, samples=29),  # too few samples
    ]
    [finding] = threshold_findings(stats)
    assert (finding.detector, finding.segment, finding.severity) == ("threshold", "lang=zh", "critical")
    assert finding.evidence["interval"] == [0.52, 0.58]
    assert finding.evidence["threshold"] == 0.65 and finding.evidence["samples"] == 100
    assert "0.550" in finding.summary and "0.65" in finding.summary
    json.dumps(finding.to_dict())


def test_override_thresholds_most_specific_wins() -> None:
    overrides = {"lang=zh": 0.5, "region=sg/lang=zh": 0.7, "region=sg": 0.6}
    drift = DriftConfig(threshold=0.65, threshold_overrides=overrides)
    assert drift.threshold_for("tenant=h:ab/region=sg/lang=zh") == (0.7, "region=sg/lang=zh")
    assert drift.threshold_for("region=cn/lang=zh") == (0.5, "lang=zh")
    assert drift.threshold_for("region=us/lang=en") == (0.65, "default")
    assert drift.threshold_for("region=sg/lang=zh-en") == (0.6, "region=sg")  # parts, not substrings
    tie = DriftConfig(threshold=0.65, threshold_overrides={"lang=ja": 0.6, "region=sg": 0.62})
    assert tie.threshold_for("region=sg/lang=ja") == (0.62, "region=sg")

    stats = [window_stats("region=cn/lang=zh", 0.6, 0.57, 0.63), window_stats("region=sg/lang=zh", 0.6, 0.57, 0.63)]
    [finding] = threshold_findings(stats, drift)
    assert finding.segment == "region=sg/lang=zh"
    assert finding.evidence["threshold_source"] == "region=sg/lang=zh"


def test_threshold_on_replayed_segments() -> None:
    """Real intervals: 200 samples at acceptance 0.5 fire, 0.8 do not, and 3 samples at 0.3 do not either."""
    rng = np.random.default_rng(7)
    results = (
        simulated_results(rng, [0.5] * 200, "lang=zh")
        + simulated_results(rng, [0.8] * 200, "lang=en")
        + simulated_results(rng, [0.3] * 3, "lang=ko")
    )
    stats = segment_stats(results, HOUR, NOW, window_k=4, cost_ratio=0.05)
    korean = next(s for s in stats if s.segment == "lang=ko")
    assert korean.alpha_interval is not None and korean.alpha_interval.high < 0.65  # three samples that agree

    assert [f.segment for f in threshold_findings(stats)] == ["lang=zh"]  # min_samples keeps lang=ko quiet


# ---- change ---------------------------------------------------------------------------------------


def noisy(rng: np.random.Generator, mean: float, count: int) -> list[float]:
    """Per-sample alphas: mean plus noise of sd 0.15 (short samples are noisy), clipped to [0, 1]."""
    return list(np.clip(rng.normal(mean, 0.15, size=count), 0.0, 1.0))


def timed(values: list[float]) -> list[tuple[datetime, float]]:
    return [(NOW + timedelta(minutes=i), value) for i, value in enumerate(values)]


@pytest.mark.parametrize("baseline", [0.8, None], ids=["baseline", "running-mean"])
def test_stable_stream_raises_nothing(baseline: float | None) -> None:
    rng = np.random.default_rng(11)
    detector = PageHinkley(baseline=baseline)
    assert not any(detector.update(value) for value in noisy(rng, 0.8, 5000))


@pytest.mark.parametrize("baseline", [0.8, None], ids=["baseline", "running-mean"])
def test_drop_fires_within_bounded_delay(baseline: float | None) -> None:
    rng = np.random.default_rng(12)
    series = timed(noisy(rng, 0.8, 1000) + noisy(rng, 0.45, 200))
    baselines = {"lang=zh": baseline} if baseline is not None else {}

    [finding] = change_findings({"lang=zh": series}, baselines)

    evidence = finding.evidence
    assert (finding.detector, finding.severity) == ("change", "warning")
    assert 1000 <= evidence["fired_index"] <= 1000 + 40
    assert abs(evidence["change_index"] - 1000) <= 10
    assert evidence["recent_mean"] < 0.65  # a few pre-drop values may fall inside the estimated span
    assert evidence["baseline"] == pytest.approx(0.8, abs=0.02)
    assert evidence["statistic"] > evidence["threshold"]
    assert evidence["fired_at"] == series[evidence["fired_index"]][0].isoformat()
    json.dumps(finding.to_dict())


def test_rise_does_not_fire() -> None:
    rng = np.random.default_rng(13)
    series = timed(noisy(rng, 0.8, 1000) + noisy(rng, 0.95, 1000))
    assert change_findings({"lang=en": series}, {"lang=en": 0.8}) == []
    assert change_findings({"lang=en": series}, {}) == []


def test_no_finding_before_min_samples() -> None:
    detector = PageHinkley(baseline=0.8, min_samples=30)
    fired = [detector.update(0.2) for _ in range(40)]
    assert fired.index(True) == 29  # the statistic passed the threshold at sample 9, but 30 are required


def test_state_round_trips_through_json() -> None:
    rng = np.random.default_rng(14)
    values = noisy(rng, 0.8, 300) + noisy(rng, 0.5, 100)
    uninterrupted = PageHinkley(baseline=0.8)
    persisted = PageHinkley(baseline=0.8)
    first = [uninterrupted.update(v) for v in values]
    second = [persisted.update(v) for v in values[:310]]
    persisted = PageHinkley.from_dict(json.loads(json.dumps(persisted.to_dict())))
    second += [persisted.update(v) for v in values[310:]]
    assert first == second and uninterrupted == persisted
    assert persisted.restarted().count == 0 and persisted.restarted().baseline == 0.8


# ---- input drift ----------------------------------------------------------------------------------


def traffic_rows(mix: dict[str, int], seed: int) -> list[dict[str, Any]]:
    """Real exchanges (chatterbot dialogs, standard-library code) in the given language mix."""
    rng = random.Random(seed)
    rows = []
    for language, count in mix.items():
        for _ in range(count):
            messages, completion = exchange(rng.choice(documents(language)))
            prompt = messages[-1]["content"]
            rows.append(
                {"prompt": prompt, "completion": completion, "language": language, "segment": f"lang={language}"}
            )
    return rows


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return input_features(traffic_rows({"en": 120, "code": 80}, seed=1))


def test_input_features_columns() -> None:
    frame = input_features(
        [{"prompt": "你好", "completion": "世界"}, {"prompt": "def f(x):\n    return x", "completion": "ok"}]
    )
    assert list(frame.columns) == [
        "language",
        "prompt_chars",
        "completion_chars",
        "cjk_share",
        "code_line_share",
        "ascii_share",
    ]  # no "segment": no row carries one
    assert list(frame["language"]) == ["zh", "code"]  # detected when the row has none
    assert frame.loc[0, "cjk_share"] == 1.0 and frame.loc[0, "ascii_share"] == 0.0
    assert frame.loc[0, "prompt_chars"] == 2.0 and frame.loc[1, "code_line_share"] > 0.5
    segmented = input_features([{"prompt": "hi", "completion": "ok", "segment": "lang=en"}, {"prompt": "x"}])
    assert list(segmented["segment"]) == ["lang=en", ""]


def test_chinese_traffic_drifts_from_english_and_code(reference: pd.DataFrame, tmp_path: Path) -> None:
    current = input_features(traffic_rows({"zh": 170, "en": 30}, seed=2))

    finding, report = input_drift_finding(reference, current, report_dir=tmp_path / "reports", now=NOW)

    assert finding is not None and finding.detector == "input_drift" and finding.severity == "warning"
    assert {"language", "cjk_share"} <= set(report.drifted_columns)
    assert report.share >= 0.5 and report.statuses["language"] == "FAIL"
    assert report.path == tmp_path / "reports" / "input-drift-20261128T120000Z.html"
    assert report.path.stat().st_size > 100_000
    assert finding.evidence["report_path"] == str(report.path)
    json.dumps(finding.to_dict())


def test_same_distribution_does_not_drift(reference: pd.DataFrame, tmp_path: Path) -> None:
    current = input_features(traffic_rows({"en": 120, "code": 80}, seed=3))

    singapore_evening = datetime(2026, 11, 29, 4, 0, tzinfo=ZoneInfo("Asia/Singapore"))

    finding, report = input_drift_finding(reference, current, report_dir=tmp_path, now=singapore_evening)

    assert finding is None
    assert report.share < 0.5 and "language" not in report.drifted_columns
    assert set(report.statuses) == set(reference.columns)
    assert report.path == tmp_path / "input-drift-20261128T200000Z.html"  # named in UTC
    assert report.path.exists()


def test_features_one_side_lacks_are_not_compared(reference: pd.DataFrame, tmp_path: Path) -> None:
    """A training corpus carries no segments, live samples do: the segment column cannot drift, it is
    left out and named; the other features still decide."""
    corpus = input_features(
        [{k: v for k, v in row.items() if k != "segment"} for row in traffic_rows({"en": 120, "code": 80}, seed=1)]
    )
    assert "segment" not in corpus.columns and "segment" in reference.columns

    same, report = input_drift_finding(corpus, reference, report_dir=tmp_path, now=NOW)
    assert same is None and report.share == 0.0
    assert set(report.statuses) == set(corpus.columns) and report.uncompared == ["segment"]

    shifted = input_features(traffic_rows({"zh": 170, "en": 30}, seed=2))
    finding, report = input_drift_finding(corpus, shifted, report_dir=tmp_path, now=NOW + timedelta(seconds=1))
    assert finding is not None and "segment" not in report.statuses
    assert finding.evidence["uncompared_columns"] == ["segment"]


def test_too_few_rows_gives_a_reason_and_no_report(reference: pd.DataFrame, tmp_path: Path) -> None:
    current = input_features(traffic_rows({"zh": 10}, seed=4))

    finding, report = input_drift_finding(reference, current, report_dir=tmp_path, now=NOW, min_rows=30)

    assert finding is None and report.path is None
    assert report.reason is not None and "10 current" in report.reason
    assert list(tmp_path.iterdir()) == []


def test_a_missing_language_is_detected_among_the_configured_languages() -> None:
    rows = [{"prompt": "Cho mình hỏi cách nấu phở bò ngon tại nhà với.", "completion": "Bạn cần xương bò và quế."}]
    assert input_features(rows)["language"].tolist() == ["vi"]
    assert input_features(rows, prose_languages([]))["language"].tolist() == ["other"]
    assert input_features([{**rows[0], "language": "th"}])["language"].tolist() == ["th"]
