"""The queries several layers read: scored replay results, deploys, the replay backlog, the cost ratio.

    results = load_results(engine, draft_version, since)    # scored results of one head, oldest first
    columns = load_result_columns(engine, draft_version, since)   # the same as numeric columns (evaluation)
    live_columns = load_live_columns(engine, since)          # the engines' counts as numeric columns
    everything = load_scored(engine, since)                 # every head's scored results
    live = load_live(engine, since)                         # the engines' own per-request counts
    pairs = load_pairs(engine, draft_version, since)        # live and shadow counts of the same samples
    deploys(engine)                                         # each draft version and when it went live
    replay_backlog(engine, draft_version)                   # (pending samples, seconds the oldest waited)

Replay stores results in two modes: SCORED (teacher-forced over the logged completion, every sample)
and EXACT (the verify loop run for real, a share of them, with a measured speedup). Intake stores what
the serving engine reported about each request (live_results): the live side of every statistic.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import msgspec
import numpy as np
from sqlalchemy import Engine, Float, String, Text, case, cast, exists, extract, func, select, type_coerce
from sqlalchemy.orm import Session

from decoder.counts import AcceptCounts
from monitor.base.columns import ColumnsBuilder, ResultColumns
from monitor.base.db import HeadEvent, LiveResult, ReplayResult, Sample, as_utc, utcnow
from monitor.base.stats import LIVE, SampleResult

SCORED, EXACT = "scored", "exact"  # replay modes, as stored in replay_results.mode
HISTOGRAM_ESTIMATE, PER_STEP = "histogram", "per_step"  # live_results.rejected_basis


def load_results(engine: Engine, draft_version: str, since: datetime) -> list[SampleResult]:
    """Scored results of one draft version for traffic since `since`, oldest first."""
    query = (
        select(ReplayResult)
        .where(
            ReplayResult.draft_version == draft_version,
            ReplayResult.mode == SCORED,
            ReplayResult.skipped.is_(None),
            ReplayResult.occurred_at > since,
        )
        .order_by(ReplayResult.occurred_at, ReplayResult.id)
    )
    with Session(engine) as session:
        return [sample_result(row) for row in session.scalars(query)]


STREAM_ROWS = 20_000  # rows fetched at a time when loading columns: memory stays ~ the columns themselves


def _moment(engine: Engine, column: Any) -> Any:
    """A UtcDateTime column as the driver's cheapest form: SQLite's stored text ("YYYY-MM-DD HH:MM:SS.ffffff",
    UTC), PostgreSQL's epoch seconds; `_seconds` turns either into floats without a datetime per row."""
    if engine.dialect.name == "sqlite":
        return type_coerce(column, String)
    return cast(extract("epoch", column), Float)


def _seconds(values: Sequence[Any]) -> np.ndarray:
    if values and isinstance(values[0], str):
        return np.array(values, dtype="datetime64[us]").astype(np.int64) / 1e6
    return np.asarray(values, dtype=np.float64)


def _of_version(engine: Engine, draft_version: str) -> Any:
    """`replay_results.draft_version = draft_version`, written so that SQLite reads the table in order. Its
    index on (draft_version, segment, occurred_at) would visit the version's rows in segment order, one
    row lookup each: three times slower over 1,000,000 results than reading the table, where one or two
    versions hold most rows (30 days of retention). PostgreSQL's planner decides from its statistics."""
    column = ReplayResult.draft_version
    return (column.concat("") if engine.dialect.name == "sqlite" else column) == draft_version


def _detail(column: Any, moment: Any, detail_since: datetime | None) -> Any:
    """The counts JSON as text, only for rows after `detail_since` (None: every row)."""
    text = cast(column, Text)
    return text if detail_since is None else case((moment > detail_since, text), else_=None)


class _Detail(msgspec.Struct, gc=False):
    """What columns read of a counts JSON (AcceptCounts.to_dict or an engine's report); other keys are skipped."""

    eos_ended: float | None = 0.0
    accepted_per_position: tuple[float, ...] | None = None
    accept_histogram: tuple[float, ...] | None = None


_DETAILS = msgspec.json.Decoder(list[_Detail])


def _vectors(texts: Sequence[str | None]) -> dict[str, list[Any]]:
    """E and the per-position and histogram vectors of a chunk's counts JSON, parsed in one call (one C-level
    parse into typed records, not one per row); None reads as none."""
    details = _DETAILS.decode("[" + ",".join(text or "{}" for text in texts) + "]")
    return {
        "eos_ended": [detail.eos_ended for detail in details],
        "per_position": [detail.accepted_per_position or () for detail in details],
        "histogram": [detail.accept_histogram or () for detail in details],
    }


def _chunks_of(engine: Engine, query: Any) -> Iterator[list[Sequence[Any]]]:
    """The query's rows, STREAM_ROWS at a time, each chunk as a list of columns."""
    with engine.connect() as connection:
        result = connection.execution_options(yield_per=STREAM_ROWS).execute(query)
        width = len(result.keys())
        for rows in result.partitions():
            yield [[row[column] for row in rows] for column in range(width)]  # 3x faster than zip(*rows)


def load_result_columns(
    engine: Engine, draft_version: str, since: datetime, detail_since: datetime | None = None
) -> ResultColumns:
    """Scored results of one draft version for traffic since `since`, as columns: numbers only, streamed
    in chunks, never as ORM objects (what `evaluate` reads, bounded in memory). Results up to
    `detail_since` carry A, R, D and S only (no E, per-position or histogram: zeros), which is all change
    detection reads of them; the windows' statistics read results after it."""
    query = select(
        ReplayResult.segment,
        ReplayResult.sample_id,
        _moment(engine, ReplayResult.occurred_at),
        ReplayResult.accepted,
        ReplayResult.rejected,
        ReplayResult.drafted,
        ReplayResult.steps,
        ReplayResult.completion_tokens,
        ReplayResult.token_source,
        ReplayResult.retokenized_equal,
        ReplayResult.window,
        _detail(ReplayResult.counts, ReplayResult.occurred_at, detail_since),
    ).where(
        _of_version(engine, draft_version),
        ReplayResult.mode == SCORED,
        ReplayResult.skipped.is_(None),
        ReplayResult.occurred_at > since,
    )
    builder = ColumnsBuilder()
    for chunk in _chunks_of(engine, query):
        segment, sample_id, occurred, accepted, rejected, drafted, steps, tokens, source, equal, window, texts = chunk
        builder.add_chunk(
            segment=segment,
            sample_id=sample_id,
            occurred=_seconds(occurred),
            accepted=accepted,
            rejected=rejected,
            drafted=drafted,
            steps=steps,
            tokens=tokens,
            window_k=window,
            **_vectors(texts),
            from_ids=[value in ("ids", "completion_ids") for value in source],
            retokenized_differs=[value is False or value == 0 for value in equal],
        )
    return builder.build()


def load_live_columns(
    engine: Engine, since: datetime, until: datetime | None = None, detail_since: datetime | None = None
) -> ResultColumns:
    """`load_live` as columns (the sample id of a report without a stored sample is minus its row id);
    `detail_since` as for `load_result_columns`."""
    query = select(
        LiveResult.segment,
        func.coalesce(LiveResult.sample_id, -LiveResult.id),
        _moment(engine, LiveResult.occurred_at),
        LiveResult.accepted,
        LiveResult.rejected,
        LiveResult.drafted,
        LiveResult.steps,
        LiveResult.rejected_basis,
        func.coalesce(LiveResult.num_spec_tokens, -1),
        _detail(LiveResult.counts, LiveResult.occurred_at, detail_since),
    ).where(LiveResult.occurred_at > since, LiveResult.rejected.is_not(None))
    if until is not None:
        query = query.where(LiveResult.occurred_at <= until)
    builder = ColumnsBuilder()
    for chunk in _chunks_of(engine, query):
        segment, sample_id, occurred, accepted, rejected, drafted, steps, basis, window, texts = chunk
        builder.add_chunk(
            segment=segment,
            sample_id=sample_id,
            occurred=_seconds(occurred),
            accepted=accepted,
            rejected=rejected,
            drafted=drafted,
            steps=steps,
            tokens=[a + s for a, s in zip(accepted, steps, strict=True)],
            window_k=window,
            **_vectors(texts),  # engines report no E: it reads 0
            rejected_estimated=[value == HISTOGRAM_ESTIMATE for value in basis],
        )
    return builder.build()


def sample_result(row: ReplayResult) -> SampleResult:
    """A stored result as the statistics read it."""
    return SampleResult(
        sample_id=row.sample_id,
        segment=row.segment,
        occurred_at=row.occurred_at,
        counts=AcceptCounts.from_dict(row.counts),
        completion_tokens=row.completion_tokens,
        draft_version=row.draft_version,
        token_source=row.token_source,
        retokenized_equal=row.retokenized_equal,
    )


def measured_cost_ratio(engine: Engine, draft_version: str, window_k: int) -> float | None:
    """Draft/target forward cost implied by exact replays: speedup = tau / (1 + k c) solved for c, with tau the
    emitted tokens per verify step, (A + S - E) / S (counts stored before E was recorded read E = 0)."""
    query = select(ReplayResult.counts, ReplayResult.speedup).where(
        _of_version(engine, draft_version), ReplayResult.mode == EXACT, ReplayResult.speedup.is_not(None)
    )
    with Session(engine) as session:
        ratios = []
        for counts, speedup in session.execute(query):
            tau = AcceptCounts.from_dict(counts).tau
            if tau is not None and speedup:
                ratios.append(max(0.0, (tau / speedup - 1.0) / window_k))
    return sum(ratios) / len(ratios) if ratios else None


def load_scored(engine: Engine, since: datetime) -> list[SampleResult]:
    """Scored, not skipped results of every draft version for traffic since `since`, oldest first."""
    query = (
        select(ReplayResult)
        .where(ReplayResult.mode == SCORED, ReplayResult.skipped.is_(None), ReplayResult.occurred_at > since)
        .order_by(ReplayResult.occurred_at, ReplayResult.id)
    )
    with Session(engine) as session:
        return [sample_result(row) for row in session.scalars(query)]


def deploys(engine: Engine) -> list[Deploy]:
    """Every draft version in replay_results with its first replay time, oldest first. The replayer works
    through the backlog oldest-first, so a version's first replay, not its oldest traffic, dates it."""
    first = func.min(ReplayResult.replayed_at)
    query = (
        select(ReplayResult.draft_version, first, func.count())
        .where(ReplayResult.mode == SCORED)
        .group_by(ReplayResult.draft_version)
        .order_by(first)
    )
    with Session(engine) as session:
        return [Deploy(version, at, count) for version, at, count in session.execute(query)]


def last_head_change(engine: Engine) -> HeadEvent | None:
    """The latest change of the live head (a deploy or a rollback): since then the engine should serve it."""
    query = (
        select(HeadEvent).where(HeadEvent.event.in_(["deployed", "rolled_back"])).order_by(HeadEvent.id.desc()).limit(1)
    )
    with Session(engine) as session:
        return session.scalars(query).first()


@dataclass(frozen=True)
class Deploy:
    """A draft version and when it went live: the first time any sample was replayed against it."""

    draft_version: str
    at: datetime
    results: int


def replay_backlog(
    engine: Engine, draft_version: str, target_version: str | None = None, now: datetime | None = None
) -> tuple[int, float]:
    """(samples without a scored result for the draft version (and target version, when given),
    seconds the oldest of them has waited since it was received); (0, 0.0) when nothing is pending."""
    replayed = exists().where(
        ReplayResult.sample_id == Sample.id,
        ReplayResult.draft_version == draft_version,
        ReplayResult.mode == SCORED,
    )
    if target_version is not None:
        replayed = replayed.where(ReplayResult.target_version == target_version)
    query = select(func.count(), func.min(Sample.received_at)).select_from(Sample).where(~replayed)
    with Session(engine) as session:
        pending, oldest = session.execute(query).one()
    if not pending or oldest is None:
        return 0, 0.0
    return int(pending), max(0.0, ((now or utcnow()) - as_utc(oldest)).total_seconds())


def live_counts(row: LiveResult) -> AcceptCounts:
    """An engine's report as verify-step counts. Engines do not report steps ended by an EOS (E = 0), so
    tau is theirs, 1 + A / S. Only rows whose R is known (exact or estimated) are read as counts."""
    counts = row.counts
    return AcceptCounts(
        accepted=float(row.accepted),
        rejected=float(row.rejected if row.rejected is not None else 0),
        drafted=float(row.drafted),
        steps=float(row.steps),
        accept_histogram=[float(x) for x in counts.get("accept_histogram") or []],
        accepted_per_position=[float(x) for x in counts.get("accepted_per_position") or []],
    )


def live_result(row: LiveResult) -> SampleResult:
    return SampleResult(
        sample_id=row.sample_id if row.sample_id is not None else -row.id,
        segment=row.segment,
        occurred_at=row.occurred_at,
        counts=live_counts(row),
        completion_tokens=int(row.accepted + row.steps),
        draft_version=LIVE,
        rejected_estimated=row.rejected_basis == HISTOGRAM_ESTIMATE,
    )


def load_live(engine: Engine, since: datetime, until: datetime | None = None) -> list[SampleResult]:
    """The engines' per-request counts for traffic in (since, until], oldest first; reports whose R is
    unknown (no histogram or no window k) are left out: their alpha cannot be computed
    (`live_without_alpha` counts them)."""
    query = select(LiveResult).where(LiveResult.occurred_at > since, LiveResult.rejected.is_not(None))
    if until is not None:
        query = query.where(LiveResult.occurred_at <= until)
    with Session(engine) as session:
        rows = session.scalars(query.order_by(LiveResult.occurred_at, LiveResult.id))
        return [live_result(row) for row in rows]


def live_without_alpha(engine: Engine, since: datetime) -> int:
    """Engine reports since `since` whose R is unknown, so they are in no live alpha."""
    query = select(func.count()).where(LiveResult.occurred_at > since, LiveResult.rejected.is_(None))
    with Session(engine) as session:
        return int(session.scalar(query) or 0)


@dataclass(frozen=True)
class LiveShadowPairs:
    """Requests measured twice, as two row-aligned columns: `live`, the serving engine's counts, and `shadow`,
    a replay of the registry's live head on the same logged completion. Row i of both is one request; the
    live side places it (time, segment; rows ordered by time and sample id), its `window_k` is the engine's
    k (-1 when it reported none) and its `rejected_estimated` says how R was counted. The shadow's R is
    counted the way the live one was: estimated as S - hist[k] from its own histogram when the engine's is
    an estimate, so the two alphas compare like for like."""

    live: ResultColumns
    shadow: ResultColumns

    def __post_init__(self) -> None:
        if not np.array_equal(self.live.sample_id, self.shadow.sample_id):
            raise ValueError("live and shadow columns must hold the same samples in the same order")

    def __len__(self) -> int:
        return len(self.live)

    @classmethod
    def empty(cls) -> LiveShadowPairs:
        return cls(ResultColumns.empty(), ResultColumns.empty())

    def take(self, rows: np.ndarray | slice) -> LiveShadowPairs:
        return LiveShadowPairs(self.live.take(rows), self.shadow.take(rows))

    def same_steps(self) -> np.ndarray:
        """Per pair: the engine's A, R, D and S equal the replay's (replay reproduced the engine's steps)."""
        live, shadow = self.live, self.shadow
        return (
            (live.accepted == shadow.accepted)
            & (live.rejected == shadow.rejected)
            & (live.drafted == shadow.drafted)
            & (live.steps == shadow.steps)
        )

    def window(self, start: datetime, end: datetime) -> LiveShadowPairs:
        """Pairs with start < occurred_at <= end (views, not copies)."""
        return self.take(self.live.rows_between(start, end))


def shadow_rejected_like_live(shadow: ResultColumns, live: ResultColumns) -> np.ndarray:
    """The shadow's R per row, computed as the engine's was: exact, or S - hist[k] with the engine's k."""
    estimated = np.flatnonzero(live.rejected_estimated & (live.window_k >= 0))
    rejected = shadow.rejected.copy()
    if estimated.size == 0:
        return rejected
    engine_k = live.window_k[estimated]
    width = shadow.histogram.shape[1]
    full = np.zeros(estimated.size)
    inside = engine_k < width
    full[inside] = shadow.histogram[estimated[inside], engine_k[inside]]
    rejected[estimated] = shadow.steps[estimated] - full
    return rejected


def load_pairs(engine: Engine, draft_version: str, since: datetime) -> LiveShadowPairs:
    """Samples since `since` with both the engine's counts (R known) and a scored replay of `draft_version`."""
    return pairs_of(load_result_columns(engine, draft_version, since), load_live_columns(engine, since), since)


def pairs_of(shadow: ResultColumns, live: ResultColumns, since: datetime) -> LiveShadowPairs:
    """Samples since `since` with both the engine's counts (R known) and a scored replay, matched by sample
    id in the columns already loaded (the later replay when a sample was replayed under two target
    versions), oldest first."""
    linked = np.flatnonzero((live.sample_id > 0) & (live.occurred > since.timestamp()))
    if linked.size == 0 or len(shadow) == 0:
        return LiveShadowPairs.empty()
    by_id = np.argsort(shadow.sample_id, kind="stable")
    sorted_ids = shadow.sample_id[by_id]
    position = np.searchsorted(sorted_ids, live.sample_id[linked], side="right") - 1
    found = (position >= 0) & (sorted_ids[np.maximum(position, 0)] == live.sample_id[linked])
    live_side = live.take(linked[found])
    shadow_side = shadow.take(by_id[position[found]])
    return LiveShadowPairs(live_side, replace(shadow_side, rejected=shadow_rejected_like_live(shadow_side, live_side)))
