"""Metrics: what specwatch measures, as OpenTelemetry instruments, scraped by Prometheus at /metrics.

    from prometheus_client import CollectorRegistry
    registry = CollectorRegistry()
    metrics = Metrics([prometheus_reader(registry)], service_name="specwatch")
    server = serve_prometheus("127.0.0.1", 9464, registry=registry)  # curl http://127.0.0.1:9464/metrics
    metrics.observe_evaluation(evaluation, config.drift)
    server.stop(); metrics.shutdown()

`Metrics` owns its MeterProvider (never the global one), so tests and several services in one
process each get their own. The README's "Metrics" section lists every instrument; Prometheus
renders a counter named `specwatch_samples_ingested` as `specwatch_samples_ingested_total`.
monitor/dashboards/specwatch.json (a Grafana dashboard) and monitor/prometheus/specwatch.rules.yml (recording
and alert rules) read these series; tests/monitor/service/test_prometheus_stack.py checks both on a real
Prometheus.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from prometheus_client import CollectorRegistry, make_asgi_app
from starlette.applications import Starlette
from starlette.routing import Route

from alerts.model import Alert
from alerts.queries import alert_views
from monitor.base.config import AlertRule, Config, DriftConfig, MetricsConfig
from monitor.base.results import SCORED
from monitor.base.serving import ThreadedServer
from monitor.replay.replayer import ReplayReport, Versions

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from monitor.base.stats import SegmentStats
    from monitor.evaluation.evaluate import Evaluation
    from monitor.intake.engine_metrics import EngineTotals
    from monitor.intake.pipeline import IngestReport

log = logging.getLogger(__name__)

METER_NAME = "specwatch"
ACCEPTED_LENGTH_BOUNDARIES = [float(length) for length in range(17)]  # tokens accepted per verify step: 0..16
OTLP_PACKAGE = "opentelemetry-exporter-otlp"

Attributes = tuple[tuple[str, str], ...]
SEGMENT_GAUGES = ("alpha", "threshold", "tau", "low", "high", "draft_rate", "samples", "paired", "position")
"""the gauges per (segment, window, source) the latest evaluation sets"""
CONDITIONS = {
    "intake_paused": "1 while a full disk pauses intake (the IntakePaused alert), else 0",
    "device_lost": "1 while the configured GPU is gone: replay runs on the CPU or is paused (ReplayDeviceLost), else 0",
}
"""what only the daemon knows, each a gauge named specwatch_<condition>, read at every collection"""


class MetricsUnavailable(Exception):
    """The metrics configuration asks for something this installation cannot do."""


class _Readings:
    """The current values of one observable gauge, keyed by attributes; its callback reports them. Series
    may be kept in parts, each replaced on its own (the engine gauges: one part per endpoint)."""

    def __init__(self) -> None:
        self._parts: dict[str, dict[Attributes, float]] = {}
        self._lock = threading.Lock()

    def replace(self, values: Mapping[Attributes, float], part: str = "") -> None:
        """All series (of `part`) at once: a series not in `values` disappears from the next collection."""
        with self._lock:
            self._parts[part] = dict(values)

    def observe(self, _options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            return [
                Observation(value, dict(attributes))
                for values in self._parts.values()
                for attributes, value in values.items()
            ]


class MetricsServer:
    """A running /metrics endpoint (the daemon's also serves /healthz and /readyz)."""

    def __init__(self, server: ThreadedServer) -> None:
        self.server = server
        self.host, self.port = server.host, server.port

    @property
    def url(self) -> str:
        return f"{self.server.url}/metrics"

    def stop(self) -> None:
        self.server.stop()


class PrometheusEndpoint:
    """prometheus_client's ASGI app on a registry, as a route's endpoint (starlette would take a plain
    function for a request handler)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.app = make_asgi_app(registry)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


def metrics_route(registry: CollectorRegistry) -> Route:
    return Route("/metrics", PrometheusEndpoint(registry), methods=["GET"])


def prometheus_reader(registry: CollectorRegistry) -> PrometheusMetricReader:
    """A reader that exposes the metrics in `registry` (not prometheus_client's global one)."""
    return PrometheusMetricReader(registry=registry, scope_info_enabled=False)


def serve_prometheus(host: str = "127.0.0.1", port: int = 9464, *, registry: CollectorRegistry) -> MetricsServer:
    """Serve `registry` at http://host:port/metrics from a daemon thread; port 0 picks a free port."""
    server = ThreadedServer(Starlette(routes=[metrics_route(registry)]), host, port, name="metrics-http")
    server.start()
    served = MetricsServer(server)
    log.info("metrics at %s", served.url)
    return served


def _otlp_url(endpoint: str, signal_path: str) -> str:
    """OTLP/HTTP wants the full URL per signal; a bare collector address gets the standard path."""
    base = endpoint.rstrip("/")
    return base if base.endswith(signal_path) else base + signal_path


def _otlp_missing(endpoint: str) -> MetricsUnavailable:
    return MetricsUnavailable(
        f"metrics.otlp_endpoint = {endpoint!r} needs the OTLP exporter: pip install {OTLP_PACKAGE}"
    )


def otlp_metric_reader(endpoint: str, interval_s: float = 60.0) -> MetricReader:
    """A reader pushing metrics to an OTLP/HTTP collector; the exporter package is optional."""
    try:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    except ImportError:
        raise _otlp_missing(endpoint) from None
    exporter = OTLPMetricExporter(endpoint=_otlp_url(endpoint, "/v1/metrics"))
    return PeriodicExportingMetricReader(exporter, export_interval_millis=interval_s * 1000)


def tracer_provider(config: MetricsConfig) -> TracerProvider:
    """A TracerProvider for the replay spans; exports to OTLP when an endpoint is configured.

    Hand `provider.get_tracer("monitor.replay.replayer")` to `Replayer(tracer=...)`, or make it the global
    provider in the daemon; without either, spans are no-ops.
    """
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: config.service_name}))
    if config.otlp_endpoint:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise _otlp_missing(config.otlp_endpoint) from None
        exporter = OTLPSpanExporter(endpoint=_otlp_url(config.otlp_endpoint, "/v1/traces"))
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _attributes(**labels: str) -> Attributes:
    return tuple(sorted(labels.items()))


def _segment_readings(stats: SegmentStats, drift: DriftConfig) -> Iterator[tuple[str, Attributes, float]]:
    """(gauge, attributes, value) of one segment's statistics; a value that is not known is left out. The
    threshold that applies to the segment (drift.threshold_for) is set beside each alpha."""
    labels = {"segment": stats.segment, "window": stats.window, "source": stats.source, "group": stats.kind}
    key = _attributes(**labels)
    interval = stats.alpha_interval
    known = {
        "alpha": stats.alpha,
        "threshold": drift.threshold_for(stats.segment)[0] if stats.alpha is not None else None,
        "tau": stats.tau,
        "low": interval.low if interval else None,
        "high": interval.high if interval else None,
        "draft_rate": stats.draft_acceptance_rate,
        "samples": float(stats.samples),
        "paired": float(stats.paired),
    }
    for name, value in known.items():
        if value is not None:
            yield name, key, value
    if stats.counts.steps:
        for position, rate in enumerate(stats.per_position_rates, start=1):
            yield "position", _attributes(**labels, position=str(position)), rate


class Metrics:
    """specwatch's instruments on a MeterProvider of its own, fed by the replay/evaluation loop."""

    def __init__(
        self, readers: Sequence[MetricReader] = (), *, service_name: str = "specwatch", otlp_endpoint: str = ""
    ) -> None:
        readers = list(readers)
        if otlp_endpoint:
            readers.append(otlp_metric_reader(otlp_endpoint))
        self.provider = MeterProvider(metric_readers=readers, resource=Resource.create({SERVICE_NAME: service_name}))
        self._readings = {
            name: _Readings()
            for name in (*SEGMENT_GAUGES, "live", "engine_rate", "engine_tau", "engine_alpha", "alerts_firing")
        }
        self._conditions: Callable[[], Mapping[str, bool]] | None = None
        self._histogram_carry: dict[int, float] = defaultdict(float)
        self._carry_lock = threading.Lock()
        self._create_instruments()

    def _create_instruments(self) -> None:
        meter = self.provider.get_meter(METER_NAME)
        gauges = {
            "alpha": (
                "specwatch_alpha",
                "acceptance rate A / (A + R) of the live draft per group (label group: all, segment or rollup), "
                "window and source (shadow: replay; live: the serving engine's own counts)",
            ),
            "threshold": (
                "specwatch_alpha_threshold",
                "the alpha threshold that applies to the group (drift.threshold, or its override for the segment)",
            ),
            "tau": ("specwatch_tau", "emitted tokens per verify step (A + S - E) / S"),
            "low": ("specwatch_alpha_interval_low", "lower end of alpha's bootstrap confidence interval"),
            "high": ("specwatch_alpha_interval_high", "upper end of alpha's bootstrap confidence interval"),
            "draft_rate": ("specwatch_draft_acceptance_rate", "accepted / drafted tokens A / D (vLLM's rate)"),
            "samples": ("specwatch_samples", "samples of the group and window that alpha is measured on"),
            "paired": ("specwatch_paired_samples", "samples of the segment and window with live and shadow counts"),
            "position": (
                "specwatch_per_position_acceptance",
                "share of verify steps whose i-th drafted token was accepted (p_i; position 1..k)",
            ),
            "live": ("specwatch_live_draft_info", "1 for the live (draft_version, target_version) pair"),
            "engine_rate": (
                "specwatch_engine_draft_acceptance_rate",
                "A / D from a serving engine's own spec-decode counters, per endpoint, model, engine and window",
            ),
            "engine_tau": (
                "specwatch_engine_mean_acceptance_length",
                "1 + A / S from a serving engine's own spec-decode counters (vLLM's mean acceptance length)",
            ),
            "engine_alpha": (
                "specwatch_engine_alpha_estimate",
                "A / (A + R) from a serving engine's counters, R estimated as S - per_pos[k-1]: at most the true alpha",
            ),
            "alerts_firing": (
                "specwatch_alerts_firing",
                "specwatch's own alerts firing (muted or not) per configured alert rule: alertname and severity",
            ),
        }
        for key, (name, description) in gauges.items():
            meter.create_observable_gauge(name, callbacks=[self._readings[key].observe], description=description)
        for condition, description in CONDITIONS.items():
            meter.create_observable_gauge(
                f"specwatch_{condition}", callbacks=[self._condition_reader(condition)], description=description
            )
        self._accepted_length = meter.create_histogram(
            "specwatch_accepted_length",
            description="drafted tokens accepted per verify step (scored replays)",
            explicit_bucket_boundaries_advisory=ACCEPTED_LENGTH_BOUNDARIES,
        )
        self._ingested = meter.create_counter("specwatch_samples_ingested", description="samples stored by intake")
        self._quarantined = meter.create_counter(
            "specwatch_samples_quarantined", description="records intake could not use (see specwatch intake errors)"
        )
        self._live = meter.create_counter(
            "specwatch_engine_reports_ingested",
            description="requests whose engine-reported acceptance intake stored (outcome stored) or refused (refused)",
        )
        self._replayed = meter.create_counter("specwatch_samples_replayed", description="replay results stored")
        self._tokens_per_second = meter.create_gauge(
            "specwatch_replay_tokens_per_second", description="target tokens scored per second in the last round"
        )
        self._pending = meter.create_gauge(
            "specwatch_replay_pending_samples", description="samples without a scored result for the live versions"
        )
        self._lag = meter.create_gauge(
            "specwatch_replay_lag_seconds", unit="s", description="how long the oldest pending sample has waited"
        )

    def _condition_reader(self, condition: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(_options: CallbackOptions) -> Iterable[Observation]:
            state = self._conditions() if self._conditions is not None else {}
            return [Observation(int(state[condition]))] if condition in state else []

        return observe

    def follow_conditions(self, read: Callable[[], Mapping[str, bool]]) -> None:
        """`read()` is called at every collection; each CONDITIONS key it returns becomes its gauge's value."""
        self._conditions = read

    def observe_evaluation(self, evaluation: Evaluation, drift: DriftConfig) -> None:
        """alpha with its threshold and interval, tau, A/D, samples, paired samples and p_i per (segment, window,
        source) from the latest evaluation; a series the evaluation no longer has disappears."""
        values: dict[str, dict[Attributes, float]] = {name: {} for name in SEGMENT_GAUGES}
        for stats in evaluation.stats:
            for name, key, value in _segment_readings(stats, drift):
                values[name][key] = value
        for name, series in values.items():
            self._readings[name].replace(series)

    def observe_engine_totals(self, endpoint: str, windows: Mapping[str, Sequence[EngineTotals]]) -> None:
        """A/D, tau and the alpha estimate of one [engines.NAME] per (model, engine, window); the other
        endpoints' series stay as they are."""
        values: dict[str, dict[Attributes, float | None]] = {"engine_rate": {}, "engine_tau": {}, "engine_alpha": {}}
        for window, totals in windows.items():
            for series in totals:
                key = _attributes(
                    endpoint=endpoint, model_name=series.model_name, engine=series.engine_label, window=window
                )
                values["engine_rate"][key] = series.draft_acceptance_rate
                values["engine_tau"][key] = series.tau
                values["engine_alpha"][key] = series.alpha
        for name, gauge in values.items():
            self._readings[name].replace({key: value for key, value in gauge.items() if value is not None}, endpoint)

    def observe_alerts(self, rules: Mapping[str, AlertRule], firing: Iterable[Alert]) -> None:
        """Firing alerts per configured rule (0 for a rule with none, so every rule has a series)."""
        counted = Counter(alert.name for alert in firing)
        self._readings["alerts_firing"].replace(
            {_attributes(alertname=name, severity=rule.severity): float(counted[name]) for name, rule in rules.items()}
        )

    def observe_live_draft(self, versions: Versions) -> None:
        self._readings["live"].replace({_attributes(draft_version=versions.draft, target_version=versions.target): 1})

    def record_intake(self, source: str, report: IngestReport) -> None:
        self._ingested.add(report.stored, {"source": source})
        self._quarantined.add(report.quarantined, {"source": source})
        self._live.add(report.live, {"source": source, "outcome": "stored"})
        self._live.add(report.live_refused, {"source": source, "outcome": "refused"})

    def record_replay(self, rows: Iterable[Mapping[str, Any]], report: ReplayReport | None = None) -> None:
        """Results as the Replayer stores them (keys mode, counts, skipped), and the round's throughput."""
        for row in rows:
            self._replayed.add(1, {"mode": row["mode"]})
            if row["mode"] == SCORED and not row.get("skipped"):
                self._record_accepted_lengths(row["counts"].get("accept_histogram", []))
        if report is not None and report.seconds > 0:
            self._tokens_per_second.set(report.tokens / report.seconds)

    def _record_accepted_lengths(self, histogram: Sequence[float]) -> None:
        """One observation per verify step. Sampled (temperature > 0) scoring gives expected, fractional
        step counts: their fractions are carried over and recorded once they add up to whole steps."""
        with self._carry_lock:
            for accepted, steps in enumerate(histogram):
                self._histogram_carry[accepted] += steps
                whole = math.floor(self._histogram_carry[accepted] + 1e-9)
                self._histogram_carry[accepted] -= whole
                for _ in range(whole):
                    self._accepted_length.record(accepted)

    def observe_backlog(self, pending: int, lag_s: float) -> None:
        self._pending.set(pending)
        self._lag.set(lag_s)

    def shutdown(self) -> None:
        self.provider.shutdown()


def publish_evaluation(metrics: Metrics, config: Config, engine: Engine, evaluation: Evaluation) -> None:
    """What an evaluation leaves on /metrics: its statistics, and the alerts that fire after it."""
    metrics.observe_evaluation(evaluation, config.drift)
    metrics.observe_alerts(config.alerts.rules, [view.alert for view in alert_views(config.alerts, engine)])


def start_metrics(config: MetricsConfig) -> tuple[Metrics, MetricsServer | None]:
    """The service's wiring: instruments, the /metrics endpoint when enabled, OTLP when configured."""
    registry = CollectorRegistry()
    readers = [prometheus_reader(registry)] if config.enabled else []
    metrics = Metrics(readers, service_name=config.service_name, otlp_endpoint=config.otlp_endpoint)
    server = serve_prometheus(config.host, config.port, registry=registry) if config.enabled else None
    return metrics, server
