"""Scraping vLLM's spec-decode counters: a real HTTP server on 127.0.0.1 serves the text prometheus_client
writes for Counters named and labelled as vLLM's SpecDecodingProm makes them, into a real database."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from sqlalchemy import Engine, event, func, insert, select
from sqlalchemy.orm import Session

from monitor.base.config import Config, EngineEndpointConfig, RetentionConfig
from monitor.base.db import EngineScrape
from monitor.intake.engine_metrics import (
    CounterTotals,
    ScrapeError,
    Series,
    live_engine_totals,
    parse_spec_decode_counters,
    scrape_engine,
)
from monitor.intake.retention import purge_expired
from monitor.service.cli import main

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
LABELS = ["model_name", "engine"]
Steps = list[tuple[int, int]]  # verify steps as (drafted, accepted)


class VllmSpecCounters:
    """vLLM's four spec-decode counters as SpecDecodingProm makes them (prometheus_client Counters, same
    names, labels and help), in a registry of their own beside two of vLLM's other metrics; steps are
    counted as SpecDecodingStats.observe_draft counts them."""

    def __init__(self, window_k: int) -> None:
        self.window_k = window_k
        self.registry = CollectorRegistry()
        self.drafts = Counter(
            "vllm:spec_decode_num_drafts", "Number of spec decoding drafts.", LABELS, registry=self.registry
        )
        self.draft_tokens = Counter(
            "vllm:spec_decode_num_draft_tokens", "Number of draft tokens.", LABELS, registry=self.registry
        )
        self.accepted = Counter(
            "vllm:spec_decode_num_accepted_tokens", "Number of accepted tokens.", LABELS, registry=self.registry
        )
        self.per_position = Counter(
            "vllm:spec_decode_num_accepted_tokens_per_pos",
            "Accepted tokens per draft position.",
            [*LABELS, "position"],
            registry=self.registry,
        )
        add_other_vllm_metrics(self.registry)

    def add_series(self, model_name: str, engine: str) -> None:
        """As vLLM does at startup: every child, at zero."""
        for counter in (self.drafts, self.draft_tokens, self.accepted):
            counter.labels(model_name, engine)
        for position in range(self.window_k):
            self.per_position.labels(model_name, engine, str(position))

    def record(self, model_name: str, engine: str, steps: Steps) -> None:
        self.add_series(model_name, engine)
        for drafted, accepted in steps:
            self.drafts.labels(model_name, engine).inc()
            self.draft_tokens.labels(model_name, engine).inc(drafted)
            self.accepted.labels(model_name, engine).inc(accepted)
            for position in range(accepted):
                self.per_position.labels(model_name, engine, str(position)).inc()


def add_other_vllm_metrics(registry: CollectorRegistry) -> None:
    Gauge("vllm:num_requests_running", "Number of requests in model execution batches.", LABELS, registry=registry)
    Counter("vllm:prompt_tokens", "Number of prefill tokens processed.", LABELS, registry=registry).labels("m", "0")


def counted(steps: Steps, window_k: int) -> CounterTotals:
    """S, D, A and per-position counts of `steps`, by hand."""
    return CounterTotals(
        float(len(steps)),
        float(sum(drafted for drafted, _ in steps)),
        float(sum(accepted for _, accepted in steps)),
        tuple(float(sum(1 for _, accepted in steps if accepted > position)) for position in range(window_k)),
    )


class VllmMetricsServer:
    """GET /metrics on 127.0.0.1 answers with `registry`'s text as prometheus_client writes it, or with
    `status` and `raw_body` when a test sets them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.status = 200
        self.raw_body: bytes | None = None
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self.handler())
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/metrics"

    def handler(self) -> type[BaseHTTPRequestHandler]:
        site = self

        class MetricsPage(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = site.raw_body if site.raw_body is not None else generate_latest(site.registry)
                self.send_response(site.status)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return MetricsPage

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def vllm_server() -> Iterator[VllmMetricsServer]:
    server = VllmMetricsServer()
    yield server
    server.close()


@pytest.fixture
def silent_metrics_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    yield listener.getsockname()[1]
    listener.close()


@pytest.fixture
def closed_metrics_port() -> int:
    """A port nothing listens on: connecting is refused."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port: int = probe.getsockname()[1]
    probe.close()
    return port


def serving(server: VllmMetricsServer, counters: VllmSpecCounters) -> VllmSpecCounters:
    server.registry = counters.registry
    return counters


def endpoint_at(url: str, timeout_s: float = 5.0) -> EngineEndpointConfig:
    return EngineEndpointConfig(url=url, timeout_s=timeout_s)


def stored_rows(engine: Engine) -> list[EngineScrape]:
    with Session(engine) as session:
        return list(session.scalars(select(EngineScrape).order_by(EngineScrape.id)))


def count_rows(engine: Engine) -> int:
    with Session(engine) as session:
        return session.scalar(select(func.count()).select_from(EngineScrape)) or 0


# -- scraping and storing


def test_the_first_scrape_stores_totals_and_the_next_the_increase(
    engine: Engine, vllm_server: VllmMetricsServer
) -> None:
    counters = serving(vllm_server, VllmSpecCounters(window_k=4))
    counters.record("qwen", "0", [(4, 4), (4, 1), (4, 0)])
    assert "vllm:spec_decode_num_drafts_created" in generate_latest(counters.registry).decode()
    endpoint = endpoint_at(vllm_server.url)

    [first] = scrape_engine("vllm-a", endpoint, engine, NOW).series
    assert first.series == Series("qwen", "0") and first.first and not first.reset
    assert first.totals == CounterTotals(3, 12, 5, (2, 1, 1, 1))
    assert first.delta == CounterTotals(0, 0, 0, (0, 0, 0, 0))

    counters.record("qwen", "0", [(4, 2), (3, 3)])
    [second] = scrape_engine("vllm-a", endpoint, engine, NOW + timedelta(seconds=30)).series
    assert second.delta == CounterTotals(2, 7, 5, (2, 2, 1, 0)) and not second.first and not second.reset

    rows = stored_rows(engine)
    assert [(row.drafts, row.draft_tokens, row.accepted, row.accepted_per_position) for row in rows] == [
        (0, 0, 0, [0, 0, 0, 0]),
        (2, 7, 5, [2, 2, 1, 0]),
    ]
    assert rows[1].totals == {"drafts": 5, "draft_tokens": 19, "accepted": 10, "accepted_per_position": [4, 3, 2, 1]}
    assert (rows[0].previous_id, rows[1].previous_id) == (None, rows[0].id)
    assert (rows[1].endpoint, rows[1].model_name, rows[1].engine_label) == ("vllm-a", "qwen", "0")
    assert rows[1].scraped_at == NOW + timedelta(seconds=30)


def test_a_restarted_engine_marks_the_scrape_reset_and_counts_its_new_totals(
    engine: Engine, vllm_server: VllmMetricsServer
) -> None:
    before = serving(vllm_server, VllmSpecCounters(window_k=2))
    before.record("qwen", "0", [(2, 2)] * 10)
    endpoint = endpoint_at(vllm_server.url)
    scrape_engine("vllm-a", endpoint, engine, NOW)
    before.record("qwen", "0", [(2, 1)] * 5)
    scrape_engine("vllm-a", endpoint, engine, NOW + timedelta(seconds=30))

    restarted = serving(vllm_server, VllmSpecCounters(window_k=2))  # a new process: counters from zero
    restarted.record("qwen", "0", [(2, 0), (2, 2), (1, 1)])
    [scraped] = scrape_engine("vllm-a", endpoint, engine, NOW + timedelta(seconds=60)).series
    assert scraped.reset and scraped.delta == scraped.totals == CounterTotals(3, 5, 3, (2, 1))

    [window] = live_engine_totals(engine, NOW)
    assert window.reset and (window.drafts, window.draft_tokens, window.accepted) == (5 + 3, 10 + 5, 5 + 3)


def test_a_restart_with_another_window_is_a_reset_even_with_higher_counters(
    engine: Engine, vllm_server: VllmMetricsServer
) -> None:
    serving(vllm_server, VllmSpecCounters(window_k=2)).record("qwen", "0", [(2, 1)])
    endpoint = endpoint_at(vllm_server.url)
    scrape_engine("vllm-a", endpoint, engine, NOW)
    serving(vllm_server, VllmSpecCounters(window_k=3)).record("qwen", "0", [(3, 3)] * 4)
    [scraped] = scrape_engine("vllm-a", endpoint, engine, NOW + timedelta(seconds=30)).series
    assert scraped.reset and scraped.delta == CounterTotals(4, 12, 12, (4, 4, 4))


def test_series_of_other_models_engines_and_endpoints_are_kept_apart(
    engine: Engine, vllm_server: VllmMetricsServer
) -> None:
    counters = serving(vllm_server, VllmSpecCounters(window_k=2))
    counters.record("qwen", "0", [])
    counters.record("llama", "1", [])
    other = VllmMetricsServer()
    try:
        serving(other, VllmSpecCounters(window_k=2)).record("qwen", "0", [(2, 2)])
        for name, url in (("vllm-a", vllm_server.url), ("vllm-b", other.url)):
            scrape_engine(name, endpoint_at(url), engine, NOW)
        counters.record("qwen", "0", [(2, 2), (2, 1)])
        counters.record("llama", "1", [(2, 0)])
        report = scrape_engine("vllm-a", endpoint_at(vllm_server.url), engine, NOW + timedelta(seconds=30))
        scrape_engine("vllm-b", endpoint_at(other.url), engine, NOW + timedelta(seconds=30))
    finally:
        other.close()
    assert {scraped.series: scraped.delta for scraped in report.series} == {
        Series("llama", "1"): CounterTotals(1, 2, 0, (0, 0)),
        Series("qwen", "0"): CounterTotals(2, 4, 3, (2, 1)),
    }
    totals = {(t.endpoint, t.model_name, t.engine_label): t.accepted for t in live_engine_totals(engine, NOW)}
    assert totals == {("vllm-a", "llama", "1"): 0, ("vllm-a", "qwen", "0"): 3, ("vllm-b", "qwen", "0"): 0}


@pytest.mark.parametrize("declared", [False, True], ids=["no-families", "families-without-series"])
def test_an_engine_without_speculative_decoding_stores_nothing(
    declared: bool, engine: Engine, vllm_server: VllmMetricsServer
) -> None:
    """vLLM without a speculative config registers no spec-decode counter; declared counters whose series
    were never made are exposed as families with no samples. Neither is an error."""
    if declared:
        vllm_server.registry = VllmSpecCounters(window_k=3).registry
    else:
        add_other_vllm_metrics(vllm_server.registry)
    report = scrape_engine("vllm-a", endpoint_at(vllm_server.url), engine, NOW)
    assert report.series == () and report.url == vllm_server.url
    assert count_rows(engine) == 0


# -- what fails, fails clearly and stores nothing


def test_a_page_without_any_vllm_metric_is_not_taken_for_an_engine_without_spec_decoding(
    engine: Engine, vllm_server: VllmMetricsServer
) -> None:
    Counter("http_requests", "requests", registry=vllm_server.registry).inc()
    with pytest.raises(ScrapeError, match="not a vLLM metrics endpoint") as raised:
        scrape_engine("vllm-a", endpoint_at(vllm_server.url), engine, NOW)
    assert vllm_server.url in str(raised.value)
    assert count_rows(engine) == 0


@pytest.mark.parametrize("failure", ["malformed", "http-500", "refused", "timeout"])
def test_a_failed_scrape_says_what_failed_and_stores_nothing(
    failure: str,
    engine: Engine,
    vllm_server: VllmMetricsServer,
    silent_metrics_port: int,
    closed_metrics_port: int,
) -> None:
    serving(vllm_server, VllmSpecCounters(window_k=2)).record("qwen", "0", [(2, 1)])
    scrape_engine("vllm-a", endpoint_at(vllm_server.url), engine, NOW)
    url, expected = vllm_server.url, ""
    if failure == "malformed":
        vllm_server.raw_body = b'vllm:spec_decode_num_drafts_total{model_name="qwen",engine="0" 3\n'
        expected = "malformed Prometheus text exposition"
    elif failure == "http-500":
        vllm_server.status, vllm_server.raw_body = 500, b"Traceback: the engine's private stack trace"
        expected = "HTTP 500 Internal Server Error"
    elif failure == "refused":
        url, expected = f"http://127.0.0.1:{closed_metrics_port}/metrics", "Connection refused"
    else:
        url, expected = f"http://127.0.0.1:{silent_metrics_port}/metrics", "no answer within 0.5s"
    with pytest.raises(ScrapeError) as raised:
        scrape_engine("vllm-a", endpoint_at(url, timeout_s=0.5), engine, NOW + timedelta(seconds=30))
    message = str(raised.value)
    assert message.startswith(url) and expected in message, message
    assert "stack trace" not in message
    assert count_rows(engine) == 1


def exposition(*lines: str) -> str:
    return "\n".join(lines) + "\n"


SERIES = 'model_name="qwen",engine="0"'
COMPLETE = (
    f"vllm:spec_decode_num_drafts_total{{{SERIES}}} 3",
    f"vllm:spec_decode_num_draft_tokens_total{{{SERIES}}} 6",
    f"vllm:spec_decode_num_accepted_tokens_total{{{SERIES}}} 4",
    f'vllm:spec_decode_num_accepted_tokens_per_pos_total{{{SERIES},position="0"}} 3',
    f'vllm:spec_decode_num_accepted_tokens_per_pos_total{{{SERIES},position="1"}} 1',
)


def test_handwritten_exposition_with_created_samples_and_types_parses_exactly() -> None:
    text = exposition(
        "# HELP vllm:spec_decode_num_drafts_total Number of spec decoding drafts.",
        "# TYPE vllm:spec_decode_num_drafts_total counter",
        *COMPLETE[:1],
        f"vllm:spec_decode_num_drafts_created{{{SERIES}}} 1.7e9",
        *COMPLETE[1:],
    )
    assert parse_spec_decode_counters(text) == {Series("qwen", "0"): CounterTotals(3, 6, 4, (3, 1))}


@pytest.mark.parametrize(
    ("lines", "complaint"),
    [
        ((COMPLETE[0], *COMPLETE[2:]), "model_name='qwen' engine='0' lacks vllm:spec_decode_num_draft_tokens_total"),
        (COMPLETE[:3], "lacks vllm:spec_decode_num_accepted_tokens_per_pos_total"),
        ((*COMPLETE[:4], COMPLETE[4].replace('"1"', '"2"')), "positions [0, 2] are not 0..k-1"),
        ((*COMPLETE[:4], COMPLETE[4].replace('"1"', '"one"')), "position is not a number"),
        ((COMPLETE[0].replace(" 3", " -3"), *COMPLETE[1:]), "a counter is a finite number >= 0"),
        ((COMPLETE[0].replace(" 3", " NaN"), *COMPLETE[1:]), "a counter is a finite number >= 0"),
        ((*COMPLETE, COMPLETE[1]), "vllm:spec_decode_num_draft_tokens_total appears twice"),
        ((COMPLETE[0].replace(',engine="0"', ""), *COMPLETE[1:]), "has no engine label"),
        (("vllm:spec_decode_num_drafts_total{model_name=qwen} 3",), "malformed Prometheus text exposition"),
        (("<html>not found</html>",), "malformed Prometheus text exposition"),
    ],
    ids=[
        "missing-counter",
        "missing-positions",
        "position-gap",
        "position-not-a-number",
        "negative",
        "nan",
        "duplicate-series",
        "missing-label",
        "unquoted-label",
        "html",
    ],
)
def test_malformed_or_incomplete_exposition_is_refused_by_name(lines: tuple[str, ...], complaint: str) -> None:
    with pytest.raises(ScrapeError) as raised:
        parse_spec_decode_counters(exposition(*lines))
    assert complaint in str(raised.value)


def test_two_scrapers_reading_the_same_previous_scrape_cannot_both_store(
    engine: Engine, vllm_server: VllmMetricsServer
) -> None:
    """Another scraper (a second daemon on the same database) stores its reading after this scrape read
    the series' latest row and before it writes: this scrape must store nothing, or that interval would
    count twice."""
    counters = serving(vllm_server, VllmSpecCounters(window_k=2))
    counters.record("qwen", "0", [(2, 2)])
    endpoint = endpoint_at(vllm_server.url)
    scrape_engine("vllm-a", endpoint, engine, NOW)
    [previous] = stored_rows(engine)
    counters.record("qwen", "0", [(2, 1)])

    raced: list[str] = []

    def other_scraper_stores_first(connection: Any, cursor: Any, statement: str, *_: Any) -> None:
        if raced or not statement.startswith("INSERT INTO engine_scrapes"):
            return
        raced.append(statement)
        with engine.begin() as other:
            other.execute(
                insert(EngineScrape).values(
                    endpoint="vllm-a",
                    model_name="qwen",
                    engine_label="0",
                    scraped_at=NOW + timedelta(seconds=29),
                    totals=CounterTotals(2, 4, 3, (2, 1)).to_dict(),
                    drafts=1,
                    draft_tokens=2,
                    accepted=1,
                    accepted_per_position=[1, 0],
                    reset=False,
                    previous_id=previous.id,
                )
            )

    event.listen(engine, "before_cursor_execute", other_scraper_stores_first)
    try:
        with pytest.raises(ScrapeError, match="another scrape of vllm-a stored its counters at the same moment"):
            scrape_engine("vllm-a", endpoint, engine, NOW + timedelta(seconds=30))
    finally:
        event.remove(engine, "before_cursor_execute", other_scraper_stores_first)
    assert len(raced) == 1
    assert count_rows(engine) == 2
    [window] = live_engine_totals(engine, NOW)
    assert (window.drafts, window.accepted) == (1, 1)


# -- windows


def test_window_totals_are_the_sums_of_the_scrapes_inside_it(engine: Engine, vllm_server: VllmMetricsServer) -> None:
    counters = serving(vllm_server, VllmSpecCounters(window_k=3))
    counters.record("qwen", "0", [(3, 3)] * 7)
    endpoint = endpoint_at(vllm_server.url)
    scrape_engine("vllm-a", endpoint, engine, NOW)  # baseline
    batches: list[Steps] = [[(3, 0), (3, 1)], [(3, 3), (2, 2), (3, 1)], [(3, 2)], [(1, 0), (3, 3)]]
    for minute, steps in enumerate(batches, start=1):
        counters.record("qwen", "0", steps)
        scrape_engine("vllm-a", endpoint, engine, NOW + timedelta(minutes=minute))

    # (NOW + 1 min, NOW + 3 min] holds the scrapes at minutes 2 and 3: batches[1] and batches[2]
    [window] = live_engine_totals(engine, NOW + timedelta(minutes=1), NOW + timedelta(minutes=3))
    assert (window.drafts, window.draft_tokens, window.accepted) == (4, 11, 8)
    assert window.accepted_per_position == (4, 3, 1)  # accepted >= 1: 4 steps, >= 2: 3 steps, 3: 1 step
    assert window.scrapes == 2 and not window.reset
    assert (window.first_scrape_at, window.last_scrape_at) == (NOW + timedelta(minutes=2), NOW + timedelta(minutes=3))
    assert window.draft_acceptance_rate == 8 / 11
    assert window.tau == 1 + 8 / 4
    assert window.per_position_rates == (4 / 4, 3 / 4, 1 / 4)

    [everything] = live_engine_totals(engine, NOW - timedelta(seconds=1))
    assert everything.scrapes == 5 and (everything.drafts, everything.accepted) == (8, 12)
    assert live_engine_totals(engine, NOW + timedelta(minutes=4)) == []
    assert live_engine_totals(engine, NOW - timedelta(seconds=1), endpoint="vllm-b") == []


def test_alpha_is_estimated_as_a_over_a_plus_s_minus_the_last_position(
    engine: Engine, vllm_server: VllmMetricsServer
) -> None:
    """Steps whose draft was shortened (drafted < k) and fully accepted have their last position unaccepted:
    the estimate counts them as rejections, so it is at most the true alpha."""
    counters = serving(vllm_server, VllmSpecCounters(window_k=3))
    counters.add_series("qwen", "0")
    endpoint = endpoint_at(vllm_server.url)
    scrape_engine("vllm-a", endpoint, engine, NOW)
    steps = [(3, 3), (3, 1), (2, 2), (3, 0), (1, 1), (3, 2)]
    counters.record("qwen", "0", steps)
    scrape_engine("vllm-a", endpoint, engine, NOW + timedelta(seconds=30))

    [window] = live_engine_totals(engine, NOW)
    assert counted(steps, 3) == CounterTotals(6, 15, 9, (5, 3, 1))
    # S = 6, A = 9, per_pos[k-1] = 1: R estimated = 6 - 1 = 5
    assert window.rejected_estimate == 5 and window.rejected_basis == "counters"
    assert window.alpha == 9 / (9 + 5)
    truly_rejected = sum(1 for drafted, accepted in steps if accepted < drafted)  # 3
    assert window.alpha < 9 / (9 + truly_rejected)
    assert window.draft_acceptance_rate == 9 / 15 and window.tau == 1 + 9 / 6


def test_retention_purges_engine_scrapes_past_samples_days(engine: Engine, vllm_server: VllmMetricsServer) -> None:
    serving(vllm_server, VllmSpecCounters(window_k=2)).record("qwen", "0", [(2, 1)])
    endpoint = endpoint_at(vllm_server.url)
    for age in (timedelta(days=40), timedelta(days=31), timedelta(days=1)):
        scrape_engine("vllm-a", endpoint, engine, NOW - age)
    report = purge_expired(engine, RetentionConfig(samples_days=30), now=NOW)
    assert report.engine_scrapes == 2
    assert [row.scraped_at for row in stored_rows(engine)] == [NOW - timedelta(days=1)]


# -- the daemon's job and the command line


def gauge_values(reader: InMemoryMetricReader, name: str) -> dict[tuple[tuple[str, Any], ...], float]:
    data = reader.get_metrics_data()
    assert data is not None
    points: list[Any] = [
        point
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == name
        for point in metric.data.data_points
    ]
    return {tuple(sorted(point.attributes.items())): point.value for point in points}


def test_the_daemon_job_stores_scrapes_shows_gauges_and_survives_a_failing_engine(
    config: Config,
    engine: Engine,
    vllm_server: VllmMetricsServer,
    closed_metrics_port: int,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from monitor.service.daemon import Daemon
    from monitor.service.metrics import Metrics

    engines = {
        "vllm-a": endpoint_at(vllm_server.url),
        "vllm-down": endpoint_at(f"http://127.0.0.1:{closed_metrics_port}/metrics"),
    }
    daemon = Daemon(config.model_copy(update={"engines": engines}), tmp_path / "config.toml")
    reader = InMemoryMetricReader()
    daemon.engine, daemon.metrics = engine, Metrics([reader])
    counters = serving(vllm_server, VllmSpecCounters(window_k=2))
    counters.record("qwen", "0", [(2, 2)])
    daemon.jobs.engine_scrape_job("vllm-a")
    counters.record("qwen", "0", [(2, 2), (2, 1), (2, 0)])  # S 3, D 6, A 3, per_pos (2, 1)
    daemon.jobs.engine_scrape_job("vllm-a")
    with caplog.at_level(logging.WARNING, logger="monitor.service.daemon"):
        daemon.jobs.engine_scrape_job("vllm-down")

    assert count_rows(engine) == 2
    [warning] = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert warning.getMessage().startswith(f"engine-scrape:vllm-down: http://127.0.0.1:{closed_metrics_port}/")
    assert "Connection refused" in warning.getMessage()
    assert daemon.health.jobs == {}
    labels = {"endpoint": "vllm-a", "model_name": "qwen", "engine": "0"}
    expected = {"specwatch_engine_draft_acceptance_rate": 3 / 6, "specwatch_engine_mean_acceptance_length": 2.0}
    expected["specwatch_engine_alpha_estimate"] = 3 / (3 + (3 - 1))
    for name, value in expected.items():
        shown = gauge_values(reader, name)
        assert shown == {tuple(sorted({**labels, "window": w}.items())): value for w in ("1h", "24h", "7d")}, name
    daemon.metrics.shutdown()


def write_engines_config(tmp_path: Path, database_url: str, engines: dict[str, str]) -> Path:
    path = tmp_path / "specwatch.toml"
    tables = "".join(f'[engines.{name}]\nurl = "{url}"\ntimeout_s = 2\n' for name, url in engines.items())
    path.write_text(f'[storage]\ndata_dir = "{tmp_path / "data"}"\ndatabase_url = "{database_url}"\n{tables}')
    return path


def test_engines_scrape_and_status_on_the_command_line(
    tmp_path: Path,
    database_url: str,
    vllm_server: VllmMetricsServer,
    closed_metrics_port: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import json

    down = f"http://127.0.0.1:{closed_metrics_port}/metrics"
    config = str(write_engines_config(tmp_path, database_url, {"vllm-a": vllm_server.url, "vllm-down": down}))
    counters = serving(vllm_server, VllmSpecCounters(window_k=2))
    counters.record("qwen", "0", [(2, 2)])
    assert main(["engines", "scrape", "--config", config, "--name", "vllm-a"]) == 0
    assert "vllm-a: 1 series stored\n  model_name='qwen' engine='0': first scrape" in capsys.readouterr().out
    counters.record("qwen", "0", [(2, 1), (2, 0)])
    assert main(["engines", "scrape", "--config", config]) == 1
    out, err = capsys.readouterr()
    assert "model_name='qwen' engine='0': +2 drafts, +4 draft tokens, +1 accepted" in out
    assert f"vllm-down: scrape failed: {down}: " in err and "Connection refused" in err

    assert main(["engines", "status", "--config", config, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [item["window"] for item in shown] == ["1h", "24h", "7d"]
    assert {(item["drafts"], item["draft_tokens"], item["accepted"], item["alpha"]) for item in shown} == {
        (2, 4, 1, 1 / (1 + 2))
    }
    assert main(["engines", "status", "--config", config]) == 0
    table = capsys.readouterr().out
    assert "window 1h" in table and "vllm-a" in table and "0.250" in table  # A/D = 1/4

    assert main(["engines", "scrape", "--config", config, "--name", "nope"]) == 2
    assert "--name nope: not one of the configured engines ['vllm-a', 'vllm-down']" in capsys.readouterr().err
