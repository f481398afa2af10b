"""Metrics: each instrument read back through an in-memory reader, a real /metrics scrape on
127.0.0.1, replay spans, and the backlog measured on a real database."""

from __future__ import annotations

import importlib.util
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from alerts.model import FIRING, Alert
from decoder import AcceptCounts
from monitor.base.config import (
    Config,
    DriftConfig,
    MetricsConfig,
    ModelsConfig,
    ReplayConfig,
    Secret,
    default_alert_rules,
)
from monitor.base.db import ReplayResult
from monitor.base.results import EXACT, SCORED, replay_backlog
from monitor.base.stats import LIVE, SampleResult, segment_stats
from monitor.evaluation.evaluate import Evaluation
from monitor.intake.pipeline import IngestReport, IntakePipeline, RawRecord
from monitor.replay.live_models import LiveModels, load_live_models
from monitor.replay.replayer import Replayer, ReplayReport, Versions
from monitor.service.demo_traffic import traffic
from monitor.service.metrics import (
    ACCEPTED_LENGTH_BOUNDARIES,
    Metrics,
    MetricsUnavailable,
    prometheus_reader,
    serve_prometheus,
    start_metrics,
    tracer_provider,
)

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def metrics(reader: InMemoryMetricReader) -> Iterator[Metrics]:
    metrics = Metrics([reader], service_name="specwatch-test")
    yield metrics
    metrics.shutdown()


def points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    """Metric name -> its data points, from one collection."""
    found: dict[str, list[Any]] = {}
    data = reader.get_metrics_data()
    if data is None:  # nothing recorded or observed yet
        return found
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                found[metric.name] = list(metric.data.data_points)
    return found


def values(reader: InMemoryMetricReader, name: str) -> dict[tuple[tuple[str, Any], ...], float]:
    return {tuple(sorted(point.attributes.items())): point.value for point in points(reader).get(name, [])}


def counts(steps: list[tuple[int, int]]) -> AcceptCounts:
    """Counts of verify steps given as (drafted, accepted)."""
    result = AcceptCounts()
    for drafted, accepted in steps:
        result.add_step(drafted, accepted)
    return result


def sample_result(sample_id: int, segment: str, hours_ago: float, steps: list[tuple[int, int]]) -> SampleResult:
    return SampleResult(sample_id, segment, NOW - timedelta(hours=hours_ago), counts(steps), 20, "draft-a")


def evaluation_of(results: list[SampleResult], live: Sequence[SampleResult] = ()) -> Evaluation:
    windows = {"1h": timedelta(hours=1), "24h": timedelta(hours=24)}
    stats = segment_stats(results, windows, NOW, window_k=4, cost_ratio=None, resamples=200)
    stats += segment_stats(live, windows, NOW, window_k=4, cost_ratio=None, resamples=200, source=LIVE)
    return Evaluation(NOW, "draft-a", stats, [], None)


def zh_and_en() -> list[SampleResult]:
    zh = [sample_result(i, "lang=zh", 2 + i, [(4, 1), (4, 0), (4, 2)]) for i in range(3)]
    en = [sample_result(10 + i, "lang=en", 0.5, [(4, 4), (4, 3)]) for i in range(2)]
    return zh + en


def test_evaluation_gauges(metrics: Metrics, reader: InMemoryMetricReader) -> None:
    metrics.observe_evaluation(evaluation_of(zh_and_en()), DriftConfig())
    alpha = values(reader, "specwatch_alpha")
    zh = (("group", "rollup"), ("segment", "lang=zh"), ("source", "shadow"), ("window", "24h"))
    assert alpha[zh] == pytest.approx(3 / (3 + 3))  # A = 1 + 0 + 2 per sample, R = 3 rejections
    en_last_hour = (("group", "rollup"), ("segment", "lang=en"), ("source", "shadow"), ("window", "1h"))
    assert alpha[en_last_hour] == pytest.approx(7 / 8)
    zh_last_hour = (("group", "rollup"), ("segment", "lang=zh"), ("source", "shadow"), ("window", "1h"))
    assert zh_last_hour not in alpha, "no zh traffic in the last hour"
    assert values(reader, "specwatch_tau")[zh] == pytest.approx(1 + 3 / 3)
    low, high = values(reader, "specwatch_alpha_interval_low")[zh], values(reader, "specwatch_alpha_interval_high")[zh]
    assert low <= alpha[zh] <= high
    assert (("group", "all"), ("segment", "*"), ("source", "shadow"), ("window", "24h")) in alpha
    assert values(reader, "specwatch_draft_acceptance_rate")[zh] == pytest.approx(3 / 12)
    assert values(reader, "specwatch_paired_samples")[zh] == 0
    positions = values(reader, "specwatch_per_position_acceptance")
    assert positions[tuple(sorted((("position", "1"), *zh)))] == pytest.approx(2 / 3), "two of three steps accept p_1"
    assert not any(dict(key)["source"] == "live" for key in alpha), "no engine counts, no live series"

    metrics.observe_evaluation(evaluation_of(zh_and_en()[3:]), DriftConfig())
    assert zh not in values(reader, "specwatch_alpha"), "a segment gone from the evaluation leaves the gauge"


def test_evaluation_gauges_carry_both_sources(metrics: Metrics, reader: InMemoryMetricReader) -> None:
    live = [replace(result, draft_version=LIVE) for result in zh_and_en()[:3]]  # the engine saw zh only
    live[0] = replace(live[0], counts=counts([(4, 0), (4, 0), (4, 0)]))
    evaluation = evaluation_of(zh_and_en(), live)
    paired = [replace(item, paired=3 if item.segment in ("lang=zh", "*") else 0) for item in evaluation.stats]
    metrics.observe_evaluation(replace(evaluation, stats=paired), DriftConfig())
    alpha = values(reader, "specwatch_alpha")
    zh_live = (("group", "rollup"), ("segment", "lang=zh"), ("source", "live"), ("window", "24h"))
    zh_shadow = (("group", "rollup"), ("segment", "lang=zh"), ("source", "shadow"), ("window", "24h"))
    assert alpha[zh_shadow] == pytest.approx(3 / 6) and alpha[zh_live] == pytest.approx(6 / 15)
    assert (("group", "rollup"), ("segment", "lang=en"), ("source", "live"), ("window", "24h")) not in alpha
    assert values(reader, "specwatch_draft_acceptance_rate")[zh_live] == pytest.approx(6 / 36)
    paired_samples = values(reader, "specwatch_paired_samples")
    assert paired_samples[zh_live] == paired_samples[zh_shadow] == 3
    low = values(reader, "specwatch_alpha_interval_low")
    assert zh_live in low and zh_shadow in low
    position_one = values(reader, "specwatch_per_position_acceptance")
    assert position_one[tuple(sorted((("position", "1"), *zh_live)))] == pytest.approx(4 / 9)
    assert position_one[tuple(sorted((("position", "1"), *zh_shadow)))] == pytest.approx(2 / 3)


def test_threshold_and_samples_beside_alpha(metrics: Metrics, reader: InMemoryMetricReader) -> None:
    metrics.observe_evaluation(evaluation_of(zh_and_en()), DriftConfig(threshold_overrides={"lang=zh": 0.7}))
    threshold, samples = values(reader, "specwatch_alpha_threshold"), values(reader, "specwatch_samples")
    zh = (("group", "rollup"), ("segment", "lang=zh"), ("source", "shadow"), ("window", "24h"))
    everything = (("group", "all"), ("segment", "*"), ("source", "shadow"), ("window", "24h"))
    assert threshold[zh] == 0.7 and threshold[everything] == 0.65, "the override applies to its segment only"
    assert samples[zh] == 3 and samples[everything] == 5
    assert set(threshold) == set(values(reader, "specwatch_alpha")), "a threshold wherever there is an alpha"


def test_alerts_firing_per_rule(metrics: Metrics, reader: InMemoryMetricReader) -> None:
    def firing(name: str, segment: str) -> Alert:
        return Alert({"alertname": name, "segment": segment}, {}, FIRING, NOW)

    rules = default_alert_rules()
    metrics.observe_alerts(
        rules, [firing("AcceptanceBelowThreshold", "lang=zh"), firing("AcceptanceBelowThreshold", "*")]
    )
    counts = values(reader, "specwatch_alerts_firing")
    assert len(counts) == len(rules)
    assert counts[(("alertname", "AcceptanceBelowThreshold"), ("severity", "critical"))] == 2
    assert counts[(("alertname", "InputDrift"), ("severity", "warning"))] == 0
    metrics.observe_alerts(rules, [])
    assert set(values(reader, "specwatch_alerts_firing").values()) == {0}


def test_conditions_are_read_at_each_collection(metrics: Metrics, reader: InMemoryMetricReader) -> None:
    assert not values(reader, "specwatch_intake_paused"), "no series until something reports the conditions"
    state = {"intake_paused": True, "device_lost": False}
    metrics.follow_conditions(lambda: state)
    assert values(reader, "specwatch_intake_paused") == {(): 1} and values(reader, "specwatch_device_lost") == {(): 0}
    state.update(intake_paused=False, device_lost=True)
    assert values(reader, "specwatch_intake_paused") == {(): 0} and values(reader, "specwatch_device_lost") == {(): 1}


def test_live_draft_info(metrics: Metrics, reader: InMemoryMetricReader) -> None:
    metrics.observe_live_draft(Versions(target="t1", draft="d1"))
    metrics.observe_live_draft(Versions(target="t1", draft="d2"))
    assert values(reader, "specwatch_live_draft_info") == {(("draft_version", "d2"), ("target_version", "t1")): 1}


def test_intake_counters(metrics: Metrics, reader: InMemoryMetricReader, config: Config, engine: Engine) -> None:
    records = [RawRecord(f"item {i}", value=value) for i, value in enumerate(traffic(5, {"en": 1.0}, seed=4))]
    records += [RawRecord("line 9", data=b"{not json"), RawRecord("line 10", data=b'{"completion": ""}')]
    report = IntakePipeline(config, engine, Secret("salt")).ingest("gateway.jsonl", records)
    metrics.record_intake("gateway.jsonl", report)
    metrics.record_intake("gateway.jsonl", report)
    assert values(reader, "specwatch_samples_ingested") == {(("source", "gateway.jsonl"),): 10}
    assert values(reader, "specwatch_samples_quarantined") == {(("source", "gateway.jsonl"),): 4}


def row(mode: str, steps: list[tuple[int, int]], skipped: str | None = None) -> dict[str, Any]:
    return {"mode": mode, "counts": counts(steps).to_dict(), "skipped": skipped}


def test_replay_histogram_counters_and_throughput(metrics: Metrics, reader: InMemoryMetricReader) -> None:
    rows = [
        row(SCORED, [(4, 0), (4, 2), (4, 2), (4, 4)]),
        row(SCORED, [(4, 1)], skipped="prompt too long"),  # stored, but measured nothing
        row(EXACT, [(4, 4)]),  # exact replays repeat a scored one: not counted twice in the histogram
    ]
    metrics.record_replay(rows, ReplayReport(claimed=2, stored=2, tokens=500, seconds=2.0))
    [histogram] = points(reader)["specwatch_accepted_length"]
    assert list(histogram.explicit_bounds) == ACCEPTED_LENGTH_BOUNDARIES
    assert histogram.count == 4 and histogram.sum == 8
    assert list(histogram.bucket_counts[:6]) == [1, 0, 2, 0, 1, 0]
    replayed = values(reader, "specwatch_samples_replayed")
    assert replayed == {(("mode", "scored"),): 2, (("mode", "exact"),): 1}
    assert values(reader, "specwatch_replay_tokens_per_second") == {(): 250.0}


def test_fractional_steps_are_carried_until_whole(metrics: Metrics, reader: InMemoryMetricReader) -> None:
    """Sampled scoring stores expected step counts; the histogram records whole steps as they add up."""
    expected = {"mode": SCORED, "skipped": None, "counts": {"accept_histogram": [0.4, 0.6]}}
    metrics.record_replay([expected])
    assert "specwatch_accepted_length" not in points(reader), "no whole step yet"
    metrics.record_replay([expected, expected])
    [histogram] = points(reader)["specwatch_accepted_length"]
    assert list(histogram.bucket_counts[:2]) == [1, 1]  # 1.2 steps accepted 0 tokens, 1.8 accepted 1


def test_backlog_gauges(metrics: Metrics, reader: InMemoryMetricReader) -> None:
    metrics.observe_backlog(12, 95.5)
    assert values(reader, "specwatch_replay_pending_samples") == {(): 12}
    assert values(reader, "specwatch_replay_lag_seconds") == {(): 95.5}


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return response.read().decode()


def test_prometheus_scrape_over_http() -> None:
    registry = CollectorRegistry()
    metrics = Metrics([prometheus_reader(registry)])
    server = serve_prometheus("127.0.0.1", 0, registry=registry)
    other_registry = CollectorRegistry()
    other = Metrics([prometheus_reader(other_registry)])
    other_server = serve_prometheus("127.0.0.1", 0, registry=other_registry)
    try:
        live = [replace(result, draft_version=LIVE) for result in zh_and_en()]
        metrics.observe_evaluation(evaluation_of(zh_and_en(), live), DriftConfig())
        metrics.record_intake("http", IngestReport(records=4, stored=3, quarantined=1))
        metrics.record_replay([row(SCORED, [(4, 2)])])
        body = scrape(server.url)
        assert server.port > 0
        lines = body.splitlines()
        assert 'specwatch_alpha{group="rollup",segment="lang=zh",source="shadow",window="24h"} 0.5' in lines
        assert 'specwatch_alpha{group="rollup",segment="lang=zh",source="live",window="24h"} 0.5' in lines
        assert 'specwatch_paired_samples{group="all",segment="*",source="live",window="24h"} 0.0' in lines
        position = 'specwatch_per_position_acceptance{group="all",position="1",segment="*",source="live",window="24h"}'
        assert position in body
        assert 'specwatch_samples_ingested_total{source="http"} 3.0' in body
        assert 'specwatch_samples_quarantined_total{source="http"} 1.0' in body
        assert 'specwatch_accepted_length_bucket{le="2.0"} 1.0' in body
        assert 'service_name="specwatch"' in body
        assert "specwatch_alpha{" not in scrape(other_server.url), "each Metrics has its own registry"
    finally:
        server.stop()
        other_server.stop()
        metrics.shutdown()
        other.shutdown()


def test_start_metrics_from_config() -> None:
    metrics, server = start_metrics(MetricsConfig(port=0, service_name="specwatch-a"))
    assert server is not None
    try:
        metrics.observe_backlog(3, 1.5)
        body = scrape(server.url)
        assert "specwatch_replay_pending_samples 3.0" in body
        assert 'service_name="specwatch-a"' in body
    finally:
        server.stop()
        metrics.shutdown()
    disabled, no_server = start_metrics(MetricsConfig(enabled=False))
    assert no_server is None
    disabled.shutdown()


@pytest.mark.skipif(
    importlib.util.find_spec("opentelemetry.exporter.otlp") is not None, reason="the OTLP exporter is installed"
)
def test_otlp_without_its_package_names_the_package() -> None:
    with pytest.raises(MetricsUnavailable, match="pip install opentelemetry-exporter-otlp"):
        Metrics([], otlp_endpoint="http://127.0.0.1:4318")
    with pytest.raises(MetricsUnavailable, match="pip install opentelemetry-exporter-otlp"):
        tracer_provider(MetricsConfig(otlp_endpoint="http://127.0.0.1:4318"))
    tracer_provider(MetricsConfig()).shutdown()  # without an endpoint: spans stay in process


@pytest.fixture(scope="module")
def live(reference_models: Path) -> LiveModels:
    return load_live_models(
        ModelsConfig(
            target=reference_models / "target", draft=reference_models / "drafts" / "draft_model", device="cpu"
        )
    )


def test_replay_spans_backlog_and_results(
    config: Config, engine: Engine, live: LiveModels, metrics: Metrics, reader: InMemoryMetricReader
) -> None:
    records = [RawRecord(f"item {i}", value=v) for i, v in enumerate(traffic(10, {"en": 0.5, "code": 0.5}, seed=5))]
    IntakePipeline(config, engine, Secret("salt")).ingest("test", records)
    waiting = replay_backlog(engine, live.versions.draft, live.versions.target)
    assert waiting[0] == 10 and waiting[1] >= 0.0

    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    replay = ReplayConfig(samples_per_round=4, exact_fraction=0.0)
    replayer = Replayer(engine, live.target, live.draft, live.versions, replay, tracer=provider.get_tracer("test"))
    report = replayer.replay_once()

    by_name = {span.name: span for span in spans.get_finished_spans()}
    assert set(by_name) == {"replay.round", "replay.scored_batch"}
    round_attributes = dict(by_name["replay.round"].attributes or {})
    assert round_attributes["samples"] == 4 and round_attributes["tokens"] == report.tokens > 0
    assert round_attributes["draft_version"] == live.versions.draft and round_attributes["mode"] == SCORED
    assert by_name["replay.scored_batch"].parent.span_id == by_name["replay.round"].context.span_id

    later = datetime.now(UTC) + timedelta(minutes=5)
    pending, lag = replay_backlog(engine, live.versions.draft, live.versions.target, now=later)
    assert pending == 6 and 300 <= lag < 600

    with Session(engine) as session:
        stored = [
            {"mode": r.mode, "counts": r.counts, "skipped": r.skipped} for r in session.scalars(select(ReplayResult))
        ]
    metrics.record_replay(stored, report)
    steps = sum(AcceptCounts.from_dict(item["counts"]).steps for item in stored)
    assert points(reader)["specwatch_accepted_length"][0].count == steps
