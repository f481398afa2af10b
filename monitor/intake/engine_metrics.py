"""The serving engines' own acceptance, read from their Prometheus counters and stored as deltas.

    from monitor.intake.engine_metrics import live_engine_totals, scrape_engine
    scrape_engine("vllm-a", config.engines["vllm-a"], engine, utcnow())   # every interval_s, in the daemon
    for totals in live_engine_totals(engine, since=utcnow() - timedelta(hours=1)):
        print(totals.model_name, totals.draft_acceptance_rate, totals.tau, totals.alpha)

What vLLM exports, as verified in vllm-project/vllm: `SpecDecodingProm` in vllm/v1/spec_decode/metrics.py
(commit 016a858) makes four prometheus_client Counters, with the labels `PrometheusStatLogger` passes in
vllm/v1/metrics/loggers.py (commit 005a810): labelnames = ["model_name", "engine"] (the served model name
and the engine index). prometheus_client exposes a Counter NAME as NAME_total (and NAME_created, not read):

    vllm:spec_decode_num_drafts_total              S: verify steps that had a draft
    vllm:spec_decode_num_draft_tokens_total        D: drafted tokens
    vllm:spec_decode_num_accepted_tokens_total     A: accepted drafted tokens
    vllm:spec_decode_num_accepted_tokens_per_pos_total{position="i"}
                                                   steps that accepted at least i + 1 tokens, i = 0..k-1
                                                   (`SpecDecodingStats.observe_draft` counts positions
                                                   0..accepted-1 of each step; k = num_speculative_tokens)

With speculative decoding off vLLM registers none of them: nothing to store, not an error. SGLang's
`sglang:spec_accept_rate` and `sglang:spec_accept_length` are gauges over the last batch; they cannot be
summed over a window, so they are not scraped (`EngineEndpointConfig.kind` allows only vllm).

Each scrape stores, per series (endpoint, model_name, engine), the totals as read and the increase since
the series' previous stored scrape. Counters restart from zero when the engine restarts: a counter lower
than before (or a changed number of positions) marks the scrape `reset`, and its delta is the new total.
A series' first scrape stores its totals with zero deltas: nothing before it is known.

From summed deltas, A/D, tau = 1 + A/S and the per-position rates are exact. alpha = A / (A + R) needs R,
the steps that rejected a drafted token, which the counters do not give: it is estimated as
S - per_pos[k-1] (the steps that accepted all k drafts are exactly those whose last position was
accepted), which also counts steps whose draft was shorter than k and fully accepted. The estimate is
therefore at most the true alpha, and is marked `rejected_basis = "counters"`.
"""

from __future__ import annotations

import http.client
import logging
import math
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from monitor.base.config import EngineEndpointConfig
from monitor.base.db import EngineScrape

log = logging.getLogger(__name__)

DRAFTS = "vllm:spec_decode_num_drafts_total"
DRAFT_TOKENS = "vllm:spec_decode_num_draft_tokens_total"
ACCEPTED = "vllm:spec_decode_num_accepted_tokens_total"
ACCEPTED_PER_POSITION = "vllm:spec_decode_num_accepted_tokens_per_pos_total"
SERIES_LABELS = ("model_name", "engine")
VLLM_PREFIX = "vllm:"
ACCEPT_HEADER = "text/plain; version=0.0.4"  # the text exposition format, not OpenMetrics
MAX_BODY_BYTES = 16 * 2**20  # a vLLM /metrics page is tens of kilobytes
QUOTED_CHARS = 200  # of a malformed page, at most this much is quoted in an error
REJECTED_BASIS = "counters"


class ScrapeError(Exception):
    """A scrape that stored nothing: the endpoint did not answer, answered with an HTTP error, or served
    text that is not the exposition format or not vLLM's counters. The message never holds the body."""


class Series(NamedTuple):
    """One engine's counters behind an endpoint: vLLM's `model_name` and `engine` labels."""

    model_name: str
    engine_label: str

    def __str__(self) -> str:
        return f"model_name={self.model_name!r} engine={self.engine_label!r}"


@dataclass(frozen=True)
class CounterTotals:
    """vLLM's four spec-decode counters for one series: totals as read, or the increase between two reads."""

    drafts: float
    draft_tokens: float
    accepted: float
    accepted_per_position: tuple[float, ...]

    def values(self) -> tuple[float, ...]:
        return (self.drafts, self.draft_tokens, self.accepted, *self.accepted_per_position)

    def restarted_since(self, earlier: CounterTotals) -> bool:
        """A counter went down, or the number of positions changed: the engine restarted in between."""
        if len(self.accepted_per_position) != len(earlier.accepted_per_position):
            return True
        return any(now < before for now, before in zip(self.values(), earlier.values(), strict=True))

    def minus(self, earlier: CounterTotals) -> CounterTotals:
        return CounterTotals(
            self.drafts - earlier.drafts,
            self.draft_tokens - earlier.draft_tokens,
            self.accepted - earlier.accepted,
            tuple(
                now - before
                for now, before in zip(self.accepted_per_position, earlier.accepted_per_position, strict=True)
            ),
        )

    def zero(self) -> CounterTotals:
        return CounterTotals(0.0, 0.0, 0.0, tuple(0.0 for _ in self.accepted_per_position))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "accepted_per_position": list(self.accepted_per_position)}

    @classmethod
    def from_dict(cls, stored: Mapping[str, Any]) -> CounterTotals:
        return cls(
            float(stored["drafts"]),
            float(stored["draft_tokens"]),
            float(stored["accepted"]),
            tuple(float(count) for count in stored["accepted_per_position"]),
        )


@dataclass(frozen=True)
class SeriesScrape:
    """What one scrape stored for one series."""

    series: Series
    totals: CounterTotals
    delta: CounterTotals
    first: bool
    """the series' first stored scrape: its delta is zero"""
    reset: bool


@dataclass(frozen=True)
class ScrapeReport:
    endpoint: str
    url: str
    scraped_at: datetime
    series: tuple[SeriesScrape, ...]
    """empty when the engine runs without speculative decoding"""


@dataclass(frozen=True)
class EngineTotals:
    """One series' summed deltas over the scrapes in a window, and the acceptance figures they give."""

    endpoint: str
    model_name: str
    engine_label: str
    scrapes: int
    first_scrape_at: datetime
    last_scrape_at: datetime
    drafts: float
    """S: verify steps"""
    draft_tokens: float
    """D: drafted tokens"""
    accepted: float
    """A: accepted drafted tokens"""
    accepted_per_position: tuple[float, ...]
    """steps that accepted at least i + 1 tokens"""
    rejected_estimate: float
    """R estimated per scrape as S - per_pos[k-1]; over-counts steps whose draft was shortened"""
    reset: bool
    """the engine restarted within the window (a scrape's counters went down)"""
    rejected_basis: str = REJECTED_BASIS

    @property
    def draft_acceptance_rate(self) -> float | None:
        """A / D, exact: vLLM's own acceptance rate."""
        return self.accepted / self.draft_tokens if self.draft_tokens > 0 else None

    @property
    def tau(self) -> float | None:
        """1 + A / S, exact: vLLM's mean acceptance length (tokens per target forward)."""
        return 1 + self.accepted / self.drafts if self.drafts > 0 else None

    @property
    def per_position_rates(self) -> tuple[float, ...]:
        """per_pos[i] / S, exact."""
        return tuple(count / self.drafts for count in self.accepted_per_position) if self.drafts > 0 else ()

    @property
    def alpha(self) -> float | None:
        """A / (A + R) with R estimated from the counters (see `rejected_estimate`): at most the true alpha."""
        attempts = self.accepted + self.rejected_estimate
        return self.accepted / attempts if attempts > 0 else None

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "accepted_per_position": list(self.accepted_per_position),
            "draft_acceptance_rate": self.draft_acceptance_rate,
            "tau": self.tau,
            "per_position_rates": list(self.per_position_rates),
            "alpha": self.alpha,
        }


# -- reading the exposition text


def parse_spec_decode_counters(text: str) -> dict[Series, CounterTotals]:
    """vLLM's spec-decode counters per series, from Prometheus text exposition. {} when vLLM runs without
    speculative decoding; ScrapeError when the text is malformed, is not vLLM's, or a series lacks one of
    the four counters."""
    families = exposition_families(text)
    if not any(family.name.startswith(VLLM_PREFIX) for family in families):
        raise ScrapeError("no vllm: metric in the exposition: not a vLLM metrics endpoint")
    samples = [sample for family in families for sample in family.samples]
    counters = {name: counter_values(samples, name) for name in (DRAFTS, DRAFT_TOKENS, ACCEPTED)}
    per_position = per_position_values(samples)
    every_series = set(per_position).union(*counters.values())
    return {series: series_totals(series, counters, per_position.get(series, {})) for series in sorted(every_series)}


def exposition_families(text: str) -> list[Metric]:
    try:
        return list(text_string_to_metric_families(text))
    except ValueError as error:  # its message quotes the offending part of the line
        raise ScrapeError(f"malformed Prometheus text exposition: {str(error)[:QUOTED_CHARS]}") from None


def series_of(sample: Sample) -> Series:
    missing = [label for label in SERIES_LABELS if label not in sample.labels]
    if missing:
        raise ScrapeError(f"{sample.name}{sample.labels} has no {' or '.join(missing)} label")
    return Series(sample.labels["model_name"], sample.labels["engine"])


def counter_value(sample: Sample) -> float:
    value = float(sample.value)
    if not math.isfinite(value) or value < 0:
        raise ScrapeError(f"{sample.name}{sample.labels} = {value}: a counter is a finite number >= 0")
    return value


def counter_values(samples: Iterable[Sample], name: str) -> dict[Series, float]:
    values: dict[Series, float] = {}
    for sample in (sample for sample in samples if sample.name == name):
        series = series_of(sample)
        if series in values:
            raise ScrapeError(f"{name} appears twice for {series}")
        values[series] = counter_value(sample)
    return values


def per_position_values(samples: Iterable[Sample]) -> dict[Series, dict[int, float]]:
    values: dict[Series, dict[int, float]] = defaultdict(dict)
    for sample in (sample for sample in samples if sample.name == ACCEPTED_PER_POSITION):
        series, position = series_of(sample), sample.labels.get("position", "")
        if not position.isdigit():
            raise ScrapeError(f"{sample.name}{sample.labels}: position is not a number >= 0")
        if int(position) in values[series]:
            raise ScrapeError(f"{sample.name}{sample.labels} appears twice")
        values[series][int(position)] = counter_value(sample)
    return dict(values)


def series_totals(
    series: Series, counters: Mapping[str, Mapping[Series, float]], per_position: Mapping[int, float]
) -> CounterTotals:
    """The four counters of one series; each must be there, with positions 0..k-1 and none missing."""
    missing = [name for name, values in counters.items() if series not in values]
    if missing or not per_position:
        raise ScrapeError(f"{series} lacks {', '.join(missing or [ACCEPTED_PER_POSITION])}")
    if sorted(per_position) != list(range(len(per_position))):
        raise ScrapeError(f"{series}: {ACCEPTED_PER_POSITION} positions {sorted(per_position)} are not 0..k-1")
    return CounterTotals(
        counters[DRAFTS][series],
        counters[DRAFT_TOKENS][series],
        counters[ACCEPTED][series],
        tuple(per_position[position] for position in range(len(per_position))),
    )


# -- scraping


def fetch_exposition(url: str, timeout_s: float) -> str:
    """GET the metrics page, straight to `url` (no proxy from the environment). ScrapeError names the url and
    the HTTP status or network error, never the body."""
    request = urllib.request.Request(url, headers={"Accept": ACCEPT_HEADER, "User-Agent": "specwatch"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout_s) as response:
            body: bytes = response.read(MAX_BODY_BYTES + 1)
    except urllib.error.HTTPError as error:
        error.close()
        raise ScrapeError(f"{url}: HTTP {error.code} {error.reason}") from None
    except urllib.error.URLError as error:
        if isinstance(error.reason, TimeoutError):
            raise ScrapeError(f"{url}: no answer within {timeout_s:g}s") from None
        raise ScrapeError(f"{url}: {error.reason}") from None
    except TimeoutError:
        raise ScrapeError(f"{url}: no answer within {timeout_s:g}s") from None
    except (OSError, http.client.HTTPException) as error:
        raise ScrapeError(f"{url}: {type(error).__name__}: {error}") from None
    if len(body) > MAX_BODY_BYTES:
        raise ScrapeError(f"{url}: the metrics page is larger than {MAX_BODY_BYTES} bytes")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise ScrapeError(f"{url}: the metrics page is not UTF-8 text") from None


def scrape_engine(name: str, endpoint: EngineEndpointConfig, engine: Engine, now: datetime) -> ScrapeReport:
    """Read [engines.NAME]'s counters and store each series' increase since its previous scrape, all series
    in one transaction. ScrapeError, with nothing stored, when the page cannot be had or read."""
    text = fetch_exposition(endpoint.url, endpoint.timeout_s)
    try:
        counters = parse_spec_decode_counters(text)
    except ScrapeError as error:
        raise ScrapeError(f"{endpoint.url}: {error}") from None
    report = ScrapeReport(name, endpoint.url, now, tuple(store_scrape(engine, name, counters, now)))
    for scraped in report.series:
        if scraped.reset:
            log.info("engine %s: %s restarted (its counters went down); counting from zero", name, scraped.series)
    if not report.series:
        log.debug("engine %s: no spec-decode counters (speculative decoding off); nothing stored", name)
    return report


def store_scrape(
    engine: Engine, endpoint: str, counters: Mapping[Series, CounterTotals], now: datetime
) -> list[SeriesScrape]:
    """One row per series, deltas against the series' latest stored scrape."""
    if not counters:
        return []
    try:
        with Session(engine) as session, session.begin():
            scraped = []
            for series, totals in counters.items():
                previous = latest_scrape(session, endpoint, series)
                scraped.append(compared(series, totals, previous))
                session.add(scrape_row(endpoint, now, scraped[-1], previous))
    except IntegrityError:
        raise ScrapeError(
            f"another scrape of {endpoint} stored its counters at the same moment; this one stored nothing"
        ) from None
    return scraped


def latest_scrape(session: Session, endpoint: str, series: Series) -> EngineScrape | None:
    return session.scalars(
        select(EngineScrape)
        .where(
            EngineScrape.endpoint == endpoint,
            EngineScrape.model_name == series.model_name,
            EngineScrape.engine_label == series.engine_label,
        )
        .order_by(EngineScrape.scraped_at.desc(), EngineScrape.id.desc())
        .limit(1)
    ).first()


def compared(series: Series, totals: CounterTotals, previous: EngineScrape | None) -> SeriesScrape:
    """The increase since `previous`: zero on a series' first scrape, the new totals after a restart."""
    if previous is None:
        return SeriesScrape(series, totals, totals.zero(), first=True, reset=False)
    before = CounterTotals.from_dict(previous.totals)
    if totals.restarted_since(before):
        return SeriesScrape(series, totals, totals, first=False, reset=True)
    return SeriesScrape(series, totals, totals.minus(before), first=False, reset=False)


def scrape_row(endpoint: str, now: datetime, scraped: SeriesScrape, previous: EngineScrape | None) -> EngineScrape:
    return EngineScrape(
        endpoint=endpoint,
        model_name=scraped.series.model_name,
        engine_label=scraped.series.engine_label,
        scraped_at=now,
        totals=scraped.totals.to_dict(),
        drafts=scraped.delta.drafts,
        draft_tokens=scraped.delta.draft_tokens,
        accepted=scraped.delta.accepted,
        accepted_per_position=list(scraped.delta.accepted_per_position),
        reset=scraped.reset,
        previous_id=previous.id if previous is not None else None,
    )


# -- summing a window


def live_engine_totals(
    engine: Engine, since: datetime, until: datetime | None = None, endpoint: str | None = None
) -> list[EngineTotals]:
    """Per (endpoint, model_name, engine label): the deltas of the scrapes in (since, until], summed.
    `endpoint` keeps one [engines.NAME]."""
    return summed(scrape_deltas(engine, since, until, endpoint))


def engine_totals_by_window(
    engine: Engine, windows: Mapping[str, timedelta], now: datetime, endpoint: str | None = None
) -> dict[str, list[EngineTotals]]:
    """live_engine_totals over (now - length, now] for each named window, from one read of the longest."""
    rows = scrape_deltas(engine, now - max(windows.values(), default=timedelta(0)), now, endpoint)
    return {name: summed([row for row in rows if row.scraped_at > now - length]) for name, length in windows.items()}


def scrape_deltas(engine: Engine, since: datetime, until: datetime | None, endpoint: str | None) -> Sequence[Any]:
    columns = select(
        EngineScrape.endpoint,
        EngineScrape.model_name,
        EngineScrape.engine_label,
        EngineScrape.scraped_at,
        EngineScrape.drafts,
        EngineScrape.draft_tokens,
        EngineScrape.accepted,
        EngineScrape.accepted_per_position,
        EngineScrape.reset,
    ).where(EngineScrape.scraped_at > since)
    if until is not None:
        columns = columns.where(EngineScrape.scraped_at <= until)
    if endpoint is not None:
        columns = columns.where(EngineScrape.endpoint == endpoint)
    with Session(engine) as session:
        return session.execute(columns).all()


def summed(rows: Iterable[Any]) -> list[EngineTotals]:
    by_series: dict[tuple[str, str, str], list[Any]] = defaultdict(list)
    for row in rows:
        by_series[(row.endpoint, row.model_name, row.engine_label)].append(row)
    return [series_window(*key, rows=group) for key, group in sorted(by_series.items())]


def series_window(endpoint: str, model_name: str, engine_label: str, rows: Sequence[Any]) -> EngineTotals:
    """One series' scrapes summed. R is estimated per scrape, so a window across a restart that changed k
    stays right; per-position counts of different k are summed position by position."""
    positions = max(len(row.accepted_per_position) for row in rows)
    per_position = [0.0] * positions
    for row in rows:
        for position, count in enumerate(row.accepted_per_position):
            per_position[position] += count
    rejected = sum(row.drafts - row.accepted_per_position[-1] for row in rows)
    return EngineTotals(
        endpoint=endpoint,
        model_name=model_name,
        engine_label=engine_label,
        scrapes=len(rows),
        first_scrape_at=min(row.scraped_at for row in rows),
        last_scrape_at=max(row.scraped_at for row in rows),
        drafts=sum(row.drafts for row in rows),
        draft_tokens=sum(row.draft_tokens for row in rows),
        accepted=sum(row.accepted for row in rows),
        accepted_per_position=tuple(per_position),
        # the engine updates its counters one by one while a scrape reads them one by one, so a scrape can
        # hold a step's position count without its draft or the reverse: consecutive scrapes cancel that out,
        # but at a window's edge it can leave R a little below zero
        rejected_estimate=max(0.0, rejected),
        reset=any(row.reset for row in rows),
    )
