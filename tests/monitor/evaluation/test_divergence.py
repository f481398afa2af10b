"""Live/shadow divergence on real parts: the engine's counts come from specwatch's exact verify loop run for
the head the engine serves, the shadow from replaying the registry's live head on the logged completions.

The mismatch is the vLLM #52479 story in small: the engine serves another head than the one the registry
says is live. Traffic is the demo's (PII included, so redaction changes some prompts and their logged
token ids are withheld: replay then re-renders the redacted text, as in production)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from decoder import AcceptCounts, Draft, load_draft
from monitor.base.columns import ResultColumns
from monitor.base.config import Config, DriftConfig, ReplayConfig, Secret, StatsConfig
from monitor.base.db import AlertRecord, LiveResult, utcnow
from monitor.base.results import LiveShadowPairs, load_pairs
from monitor.base.stats import LIVE, SampleResult
from monitor.evaluation.divergence import divergence_findings, onset_of
from monitor.evaluation.evaluate import evaluate
from monitor.intake.pipeline import IntakePipeline, RawRecord
from monitor.replay.live_models import LiveModels, load_live_models
from monitor.replay.replayer import Replayer
from monitor.service.demo_traffic import traffic
from tests.monitor.engine_side import served_by_engine

WINDOW = 4
ANSWER_TOKENS = 32
MIX = {"en": 0.6, "code": 0.4}


@pytest.fixture(scope="module")
def divergence_models(reference_models: Path, one_torch_thread: None) -> LiveModels:
    """The registry's live head: the tiny eagle."""
    from monitor.base.config import ModelsConfig

    return load_live_models(
        ModelsConfig(target=reference_models / "target", draft=reference_models / "drafts" / "eagle", device="cpu")
    )


@pytest.fixture(scope="module")
def other_head(reference_models: Path, divergence_models: LiveModels) -> Draft:
    """What the engine serves when it did not pick up the live head: the MEDUSA heads."""
    return load_draft(reference_models / "drafts" / "medusa", divergence_models.target)


def divergence_config(config: Config) -> Config:
    return config.model_copy(
        update={
            "intake": config.intake.model_copy(update={"segment_keys": ["route"]}),
            "replay": ReplayConfig(window=WINDOW, samples_per_round=256, exact_fraction=0.0),
            "stats": StatsConfig(windows=["24h"], resamples=400),
            "drift": DriftConfig(min_samples=20, divergence_min_pairs=20, input_interval="1000d"),
        }
    )


DAY = timedelta(days=1)
MISMATCH_START = utcnow().replace(microsecond=0) - 2 * DAY
STEADY_START = MISMATCH_START - 7 * DAY


def engine_day(models: LiveModels, serving: Draft, *, start: datetime, count: int, seed: int) -> list[dict[str, Any]]:
    """One day of requests answered by an engine serving `serving`, as its gateway logged them (even seeds
    with vLLM's `detailed` per-step arrays, odd ones `summary`: R estimated from the histogram)."""
    records = traffic(
        count, MIX, seed=seed, start=start, spacing_s=DAY.total_seconds() / count, first_index=seed * 10_000
    )
    return served_by_engine(
        records, models.target, serving, window=WINDOW, max_new_tokens=ANSWER_TOKENS, detailed=seed % 2 == 0
    )


@pytest.fixture(scope="module")
def engine_logs(divergence_models: LiveModels, other_head: Draft) -> dict[str, list[list[dict[str, Any]]]]:
    """The gateway logs both tests take in, generated once for both database backends."""
    models = divergence_models
    return {
        "mismatch": [
            engine_day(models, other_head, start=MISMATCH_START, count=40, seed=1),
            engine_day(models, models.draft, start=MISMATCH_START + DAY, count=40, seed=2),
        ],
        "steady": [
            engine_day(models, models.draft, start=STEADY_START + day * DAY, count=24, seed=10 + day)
            for day in range(7)
        ],
    }


def take_in_and_replay(config: Config, engine: Engine, models: LiveModels, logged: list[dict[str, Any]]) -> None:
    raws = [RawRecord(position=f"line {i}", value=item) for i, item in enumerate(logged)]
    report = IntakePipeline(config, engine, Secret("salt")).ingest("gateway", raws)
    assert report.live >= report.stored > 0 and report.live_refused == 0, report.describe()
    Replayer(engine, models.target, models.draft, models.versions, config.replay).replay_all()


def divergence_alerts(engine: Engine) -> dict[str, str]:
    with Session(engine) as session:
        rows = session.scalars(select(AlertRecord).where(AlertRecord.alertname == "ShadowLiveDivergence"))
        return {row.labels["segment"]: row.status for row in rows}


@pytest.mark.slow
def test_an_engine_serving_another_head_fires_divergence_and_resolves_once_it_serves_the_live_one(
    config: Config, engine: Engine, divergence_models: LiveModels, engine_logs: dict[str, list[list[dict[str, Any]]]]
) -> None:
    config = divergence_config(config)
    models = divergence_models
    day_one = MISMATCH_START
    take_in_and_replay(config, engine, models, engine_logs["mismatch"][0])

    evaluation = evaluate(config, engine, models.versions.draft, now=day_one + timedelta(days=1))
    found = {f.segment: f for f in evaluation.findings if f.detector == "divergence"}
    assert "*" in found, [f.summary for f in evaluation.findings]
    everything = found["*"]
    assert everything.evidence["difference"] < -config.drift.divergence_tolerance
    assert everything.evidence["segments"], "the segments that diverge on their own are named"
    assert set(everything.evidence["segments"]) <= {"route=chat/lang=en", "route=code-assist/lang=code"}
    assert everything.evidence["positions"][0]["position"] >= 1
    assert datetime.fromisoformat(everything.evidence["since"]) >= day_one
    assert any("another head" in cause for cause in everything.evidence["causes"])
    shadow_stats = {s.segment: s for s in evaluation.stats_of("shadow")}
    live_stats = {s.segment: s for s in evaluation.stats_of("live")}
    assert live_stats["*"].paired == shadow_stats["*"].paired == everything.evidence["pairs"]
    assert live_stats["*"].alpha is not None and shadow_stats["*"].alpha is not None
    alerts = divergence_alerts(engine)
    assert alerts.get("*") == "firing" and any(segment != "*" for segment in alerts)

    # the engine reloads: from day two on it serves the registry's live head
    day_two = day_one + DAY
    take_in_and_replay(config, engine, models, engine_logs["mismatch"][1])
    settled = day_two + timedelta(days=1, minutes=1)
    assert not [
        f for f in evaluate(config, engine, models.versions.draft, now=settled).findings if f.detector == "divergence"
    ]
    evaluate(config, engine, models.versions.draft, now=settled + timedelta(minutes=20))
    assert set(divergence_alerts(engine).values()) == {"resolved"}


@pytest.mark.slow
def test_an_engine_serving_the_live_head_never_diverges_over_seven_days(
    config: Config, engine: Engine, divergence_models: LiveModels, engine_logs: dict[str, list[list[dict[str, Any]]]]
) -> None:
    config = divergence_config(config)
    models = divergence_models
    start = STEADY_START
    for logged in engine_logs["steady"]:
        take_in_and_replay(config, engine, models, logged)
    for hours in range(24, 7 * 24 + 1, 12):
        evaluation = evaluate(config, engine, models.versions.draft, now=start + timedelta(hours=hours))
        diverging = [f.summary for f in evaluation.findings if f.detector == "divergence"]
        assert not diverging, f"day {hours / 24:.1f}: {diverging}"
    assert divergence_alerts(engine) == {}
    pairs = load_pairs(engine, models.versions.draft, start)
    with Session(engine) as session:
        linked = len(list(session.scalars(select(LiveResult.id).where(LiveResult.sample_id.is_not(None)))))
    assert 0.95 * linked <= len(pairs) <= linked, "every replayed sample with engine counts pairs (a few are skipped)"
    exact_agreement = float(pairs.same_steps().mean())
    assert exact_agreement > 0.5, "with the engine's own token ids, replay reproduces the engine's counts exactly"


def steps(drafted: int, accepted_per_step: list[int]) -> AcceptCounts:
    counts = AcceptCounts()
    for accepted in accepted_per_step:
        counts.add_step(drafted, accepted)
    return counts


def synthetic_pairs(live_steps: list[list[int]], shadow_steps: list[list[int]], start: datetime) -> LiveShadowPairs:
    def side(per_sample: list[list[int]], draft_version: str) -> ResultColumns:
        return ResultColumns.from_results(
            SampleResult(
                sample_id=index + 1,
                segment="route=chat/lang=en" if index % 2 else "route=chat/lang=zh",
                occurred_at=start + timedelta(minutes=index),
                counts=steps(WINDOW, accepted),
                completion_tokens=1,
                draft_version=draft_version,
            )
            for index, accepted in enumerate(per_sample)
        )

    return LiveShadowPairs(live=side(live_steps, LIVE), shadow=side(shadow_steps, "shadow-head"))


def test_divergence_fires_only_when_the_paired_interval_clears_the_tolerance() -> None:
    start = utcnow() - timedelta(hours=2)
    windows = {"24h": timedelta(hours=24)}
    healthy = [[4, 2, 4, 1], [3, 4, 0, 4], [4, 4, 2, 3]] * 20
    same = synthetic_pairs(healthy, healthy, start)
    assert divergence_findings(same, windows, utcnow(), tolerance=0.05, min_pairs=30) == []

    broken = [[0, 0, 0, 0]] * 60  # the engine rejects every draft
    [everything, *segments] = divergence_findings(
        synthetic_pairs(broken, healthy, start), windows, utcnow(), tolerance=0.05, min_pairs=30
    )
    assert everything.segment == "*" and everything.evidence["live_alpha"] == 0.0
    assert everything.evidence["interval"][1] < -0.05
    assert {f.segment for f in segments} == {"route=chat/lang=en", "route=chat/lang=zh"}
    assert set(everything.evidence["segments"]) == {"route=chat/lang=en", "route=chat/lang=zh"}
    assert everything.evidence["positions"][0] == {"position": 1, "live": 0.0, "shadow": 55 / 60 * 1.0, "gap": -55 / 60}

    assert (
        divergence_findings(
            synthetic_pairs(broken, healthy, start).take(slice(0, 29)), windows, utcnow(), tolerance=0.05, min_pairs=30
        )
        == []
    ), "below min_pairs nothing is judged"
    slightly = [[4, 2, 4, 1], [3, 4, 0, 4], [4, 4, 2, 2]] * 20  # one draft in a few hundred fewer
    assert (
        divergence_findings(synthetic_pairs(slightly, healthy, start), windows, utcnow(), tolerance=0.05, min_pairs=30)
        == []
    )
    assert (
        divergence_findings(
            synthetic_pairs(broken, healthy, start), windows, start - timedelta(hours=1), tolerance=0.05, min_pairs=30
        )
        == []
    ), "pairs outside the window are not read"


def test_onset_is_where_the_excess_difference_starts_to_accumulate() -> None:
    start = utcnow() - timedelta(hours=2)
    healthy = [[4, 2, 4, 1]] * 40
    live = healthy[:25] + [[0, 1, 0, 0]] * 15
    pairs = synthetic_pairs(live, healthy, start)
    assert onset_of(pairs, sign=-1.0, tolerance=0.05) == pairs.live.occurred_at(25)


def onset_by_loop(live: list[AcceptCounts], shadow: list[AcceptCounts], times: list[datetime], sign: float) -> datetime:
    """The onset rule step by step: after the lowest point of the running sum of sign * d_i - 0.05."""
    cumulative, lowest, start = 0.0, 0.0, times[0]
    for index, (one, two) in enumerate(zip(live, shadow, strict=True)):
        if one.alpha is None or two.alpha is None:
            continue
        cumulative += sign * (one.alpha - two.alpha) - 0.05
        if cumulative < lowest:
            lowest, start = cumulative, times[min(index + 1, len(times) - 1)]
    return start


def test_onset_equals_the_running_sum_step_by_step_skipping_pairs_without_drafts() -> None:
    rng = np.random.default_rng(3)
    start = utcnow() - timedelta(hours=2)
    for case in range(20):
        size = int(rng.integers(2, 40))
        drop = int(rng.integers(0, size))
        live = [[int(a) for a in rng.integers(0, 5 if i < drop else 2, size=3)] for i in range(size)]
        shadow = [[int(a) for a in rng.integers(0, 5, size=3)] for _ in range(size)]
        for quiet in rng.choice(size, size=size // 5, replace=False):
            live[quiet] = []  # nothing drafted: no alpha
        pairs = synthetic_pairs(live, shadow, start)
        times = [pairs.live.occurred_at(row) for row in range(size)]
        counts = [pairs.live.sample_counts(row) for row in range(size)], [steps(WINDOW, s) for s in shadow]
        for sign in (-1.0, 1.0):
            assert onset_of(pairs, sign=sign, tolerance=0.05) == onset_by_loop(*counts, times, sign), (case, sign)
