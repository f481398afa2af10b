"""The database: SQLAlchemy 2 tables, engine creation, and migration to the latest schema.

The schema only changes through alembic (migrations/); `upgrade(url)` brings any database
to head. SQLite by default, PostgreSQL by URL.
"""

from __future__ import annotations

import logging
import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
    false,
    text,
)
from sqlalchemy.engine import URL, Dialect, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import migrations
from monitor.base.config import StorageConfig, shown_url
from monitor.base.db_timeouts import connect_with_deadlines, libpq_parameters, ping_within, without_time_limits

if TYPE_CHECKING:
    from monitor.base.config import Config

log = logging.getLogger(__name__)

Id = BigInteger().with_variant(Integer(), "sqlite")


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive, in UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        moment = as_utc(value)
        return moment.replace(tzinfo=None) if dialect.name == "sqlite" else moment

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UtcDateTime(),
        dict[str, Any]: JSON(),
        list[Any]: JSON(),
        bool: Boolean(),
    }


class Sample(Base):
    """One sampled, redacted exchange of production traffic."""

    __tablename__ = "samples"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    sample_key: Mapped[str] = mapped_column(String(64), unique=True)
    received_at: Mapped[datetime] = mapped_column(index=True)
    occurred_at: Mapped[datetime] = mapped_column(index=True)
    segment: Mapped[str] = mapped_column(String(255))
    language: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(1024))
    model: Mapped[str | None] = mapped_column(String(255))
    temperature: Mapped[float | None] = mapped_column(Float)
    messages: Mapped[list[Any]]
    completion: Mapped[str] = mapped_column(Text)
    attributes: Mapped[dict[str, Any]]
    redactions: Mapped[dict[str, Any]]
    prompt_chars: Mapped[int] = mapped_column(Integer)
    completion_chars: Mapped[int] = mapped_column(Integer)
    raw_prompt: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    """the input is one raw prompt (completions API): replay encodes it without the chat template"""
    finish_reason: Mapped[str | None] = mapped_column(String(16))
    """how the generation ended (monitor.intake.records.FINISH_REASONS); None: unknown, a natural stop"""
    max_tokens: Mapped[int | None] = mapped_column(Integer)
    """the request's cap on generated tokens, when the log carried it"""
    prompt_token_ids: Mapped[list[Any] | None]
    """the prompt's token ids as the engine read them, when logged (and the text needed no redaction)"""
    completion_token_ids: Mapped[list[Any] | None]
    """the completion's token ids as the engine emitted them, when logged (same condition)"""


class QuarantinedRecord(Base):
    """An input record that could not be used, with why and where it came from."""

    __tablename__ = "quarantine"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    received_at: Mapped[datetime] = mapped_column(index=True)
    source: Mapped[str] = mapped_column(String(1024))
    position: Mapped[str] = mapped_column(String(255))
    reason: Mapped[str] = mapped_column(String(500))
    record_bytes: Mapped[int] = mapped_column(Integer)
    record_sha256: Mapped[str] = mapped_column(String(64))
    excerpt: Mapped[str] = mapped_column(Text)


class IntakeCursor(Base):
    """How far a followed file has been read, keyed by the file's content fingerprint."""

    __tablename__ = "intake_cursors"

    fingerprint: Mapped[str] = mapped_column(String(64), primary_key=True)
    path: Mapped[str] = mapped_column(String(1024))
    offset: Mapped[int] = mapped_column(BigInteger)
    line: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime]


class SamplingBucket(Base):
    """Samples kept per segment per hour, for the hourly cap."""

    __tablename__ = "sampling_buckets"

    segment: Mapped[str] = mapped_column(String(255), primary_key=True)
    hour: Mapped[datetime] = mapped_column(primary_key=True)
    kept: Mapped[int] = mapped_column(Integer)


class IntakeCounter(Base):
    """Running totals per intake source: what came in and where it went."""

    __tablename__ = "intake_counters"

    source: Mapped[str] = mapped_column(String(1024), primary_key=True)
    records: Mapped[int] = mapped_column(BigInteger, default=0)
    stored: Mapped[int] = mapped_column(BigInteger, default=0)
    duplicates: Mapped[int] = mapped_column(BigInteger, default=0)
    sampled_out: Mapped[int] = mapped_column(BigInteger, default=0)
    quarantined: Mapped[int] = mapped_column(BigInteger, default=0)
    live: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    """records whose engine-reported acceptance was stored"""
    live_refused: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    """records whose engine acceptance payload was present but refused (the sample itself was kept)"""
    updated_at: Mapped[datetime]


class ReplayResult(Base):
    """What one replay of one sample measured, for one (target, draft) version pair and mode."""

    __tablename__ = "replay_results"
    __table_args__ = (
        UniqueConstraint("sample_id", "draft_version", "target_version", "mode", name="uq_replay_results_run"),
        Index("ix_replay_results_version_segment", "draft_version", "segment", "occurred_at"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    sample_id: Mapped[int] = mapped_column(Id, ForeignKey("samples.id", ondelete="CASCADE"))
    segment: Mapped[str] = mapped_column(String(255))
    occurred_at: Mapped[datetime]
    replayed_at: Mapped[datetime]
    draft_version: Mapped[str] = mapped_column(String(64))
    target_version: Mapped[str] = mapped_column(String(64))
    mode: Mapped[str] = mapped_column(String(16))
    window: Mapped[int] = mapped_column(Integer)
    temperature: Mapped[float] = mapped_column(Float)
    accepted: Mapped[float] = mapped_column(Float)
    rejected: Mapped[float] = mapped_column(Float)
    drafted: Mapped[float] = mapped_column(Float)
    steps: Mapped[float] = mapped_column(Float)
    counts: Mapped[dict[str, Any]]
    outcomes: Mapped[list[Any]]
    target_agreement: Mapped[float | None] = mapped_column(Float)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    truncated_tokens: Mapped[int] = mapped_column(Integer)
    skipped: Mapped[str | None] = mapped_column(String(255))
    seconds: Mapped[float] = mapped_column(Float)
    speedup: Mapped[float | None] = mapped_column(Float)
    worker: Mapped[str] = mapped_column(String(128))
    token_source: Mapped[str | None] = mapped_column(String(16))
    """decoder.exchange.TokenSource: ids, completion_ids or text (None: replayed before it was recorded)"""
    retokenized_equal: Mapped[bool | None] = mapped_column(Boolean)
    """re-tokenizing the sample's text gave the logged ids; None without logged ids"""


class LiveResult(Base):
    """What the serving engine itself reported about one request's speculative decoding (its per-request
    spec-decode stats, monitor.intake.engine_stats): the live head's real acceptance, free of any replay.

    Stored for every parsed record that carries it, sampled out of replay or not (`intake.live_counts`),
    keyed like samples; `sample_id` links it to the stored sample when there is one, so the two can be
    paired with that sample's shadow replay. No text: counts, segment, language and the engine's labels."""

    __tablename__ = "live_results"
    __table_args__ = (Index("ix_live_results_segment_time", "segment", "occurred_at"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    sample_key: Mapped[str] = mapped_column(String(64), unique=True)
    sample_id: Mapped[int | None] = mapped_column(Id, ForeignKey("samples.id", ondelete="SET NULL"), index=True)
    received_at: Mapped[datetime]
    occurred_at: Mapped[datetime] = mapped_column(index=True)
    segment: Mapped[str] = mapped_column(String(255))
    language: Mapped[str] = mapped_column(String(16))
    model: Mapped[str | None] = mapped_column(String(255))
    engine: Mapped[str] = mapped_column(String(16))
    """vllm | sglang | trtllm"""
    method: Mapped[str | None] = mapped_column(String(32))
    num_spec_tokens: Mapped[int | None] = mapped_column(Integer)
    """the engine's window k, when it reported one"""
    steps: Mapped[int] = mapped_column(Integer)
    drafted: Mapped[int] = mapped_column(Integer)
    accepted: Mapped[int] = mapped_column(Integer)
    rejected: Mapped[int | None] = mapped_column(Integer)
    rejected_basis: Mapped[str | None] = mapped_column(String(16))
    """per_step: R exact (vLLM detailed); histogram: R estimated as S - hist[k]; None: R unknown"""
    counts: Mapped[dict[str, Any]]
    """EngineAcceptance.to_dict(): the histogram, per-position counts and per-step arrays as reported"""


class EngineScrape(Base):
    """One scrape of a serving engine's Prometheus counters (vLLM's spec_decode_*), as deltas since the
    previous scrape of the same series (engine name, model_name, engine label); a counter that went
    down restarted from zero, so its delta is its new value and `reset` says so."""

    __tablename__ = "engine_scrapes"
    __table_args__ = (Index("ix_engine_scrapes_series", "endpoint", "model_name", "engine_label", "scraped_at"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    endpoint: Mapped[str] = mapped_column(String(128))
    """the [engines.NAME] key"""
    model_name: Mapped[str] = mapped_column(String(255))
    engine_label: Mapped[str] = mapped_column(String(64))
    scraped_at: Mapped[datetime] = mapped_column(index=True)
    totals: Mapped[dict[str, Any]]
    """the counters' values as read: drafts, draft_tokens, accepted, accepted_per_position"""
    drafts: Mapped[float] = mapped_column(Float)
    """S since the previous scrape"""
    draft_tokens: Mapped[float] = mapped_column(Float)
    """D since the previous scrape"""
    accepted: Mapped[float] = mapped_column(Float)
    """A since the previous scrape"""
    accepted_per_position: Mapped[list[Any]]
    """per-position accepted counts since the previous scrape"""
    reset: Mapped[bool] = mapped_column(Boolean, default=False)
    previous_id: Mapped[int | None] = mapped_column(Id, unique=True)
    """the scrape of the same series these deltas are taken against; None on a series' first scrape. Unique:
    two scrapers that read the same previous scrape at once cannot both store (its interval would count twice)"""


class ReplayClaim(Base):
    """A worker's lease on a sample it is replaying; an expired lease may be taken over."""

    __tablename__ = "replay_claims"

    sample_id: Mapped[int] = mapped_column(Id, ForeignKey("samples.id", ondelete="CASCADE"), primary_key=True)
    draft_version: Mapped[str] = mapped_column(String(64), primary_key=True)
    worker: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime]


FINDING_OPEN = "resolved_at IS NULL"


class StoredFinding(Base):
    """One episode of a detector's finding about one key (detector, segment, window, draft_version): opened
    when first reported, updated by every evaluation that reports it again (last_seen_at, times_seen and the
    newest severity, summary and evidence), closed (`resolved_at`) by the first evaluation in which the
    detector ran and did not report it. A later recurrence opens a new row (monitor.evaluation.findings_store)."""

    __tablename__ = "findings"
    __table_args__ = (
        # one open row per key; alembic's model/migration comparison ignores the WHERE, so
        # tests/monitor/evaluation/test_findings_store.py checks that closed rows may share a key
        Index(
            "uq_findings_open",
            "detector",
            "segment",
            "window",
            "draft_version",
            unique=True,
            sqlite_where=text(FINDING_OPEN),
            postgresql_where=text(FINDING_OPEN),
        ),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(index=True)
    """first seen: the evaluation that opened the episode"""
    last_seen_at: Mapped[datetime] = mapped_column(index=True)
    times_seen: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    """evaluations that reported it in this episode"""
    resolved_at: Mapped[datetime | None]
    """the first evaluation that ran the detector and did not report it; None while open"""
    draft_version: Mapped[str] = mapped_column(String(64))
    detector: Mapped[str] = mapped_column(String(32))
    segment: Mapped[str] = mapped_column(String(255))
    window: Mapped[str] = mapped_column(String(32))
    severity: Mapped[str] = mapped_column(String(16))
    summary: Mapped[str] = mapped_column(Text)
    evidence: Mapped[dict[str, Any]]


class AlertRecord(Base):
    """One alert, identified by the fingerprint of its labels: firing until its condition has been
    clear for `resolve_after`, then resolved. A resolved alert that fires again starts over."""

    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    fingerprint: Mapped[str] = mapped_column(String(32), unique=True)
    alertname: Mapped[str] = mapped_column(String(128))
    detector: Mapped[str] = mapped_column(String(64))
    labels: Mapped[dict[str, Any]]
    annotations: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), index=True)
    starts_at: Mapped[datetime]
    last_active_at: Mapped[datetime]
    clear_since: Mapped[datetime | None]
    ends_at: Mapped[datetime | None]


class NotificationLogEntry(Base):
    """What a receiver was last told about one alert group: the notification log that decides
    whether to notify again (Alertmanager's nflog)."""

    __tablename__ = "notification_log"

    receiver: Mapped[str] = mapped_column(String(128), primary_key=True)
    group_key: Mapped[str] = mapped_column(String(512), primary_key=True)
    incident: Mapped[int] = mapped_column(Integer)
    open: Mapped[bool]
    firing: Mapped[list[Any]]
    resolved: Mapped[list[Any]]
    notified_at: Mapped[datetime]


class OutboxMessage(Base):
    """A notification waiting for, or accepted by, its receiver. Marked sent only after the
    receiver accepted it; sent in id order per receiver."""

    __tablename__ = "alert_outbox"
    __table_args__ = (Index("ix_alert_outbox_pending", "receiver", "sent_at", "id"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    receiver: Mapped[str] = mapped_column(String(128))
    group_key: Mapped[str] = mapped_column(String(512))
    incident: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    payload: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    attempted_at: Mapped[datetime | None]
    next_attempt_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(String(500))
    sent_at: Mapped[datetime | None]
    receipt: Mapped[dict[str, Any] | None]


class OutboxLease(Base):
    """Which dispatcher works a receiver's outbox queue, until when: one at a time, so nothing is sent
    twice and nothing overtakes. Free when `owner` is empty, `expires_at` has passed, or the owner is a
    process of this machine (`host`, `pid`) that no longer runs."""

    __tablename__ = "alert_outbox_leases"

    receiver: Mapped[str] = mapped_column(String(128), primary_key=True)
    owner: Mapped[str | None] = mapped_column(String(64))
    host: Mapped[str | None] = mapped_column(String(255))
    pid: Mapped[int | None] = mapped_column(Integer)
    expires_at: Mapped[datetime | None]


class Silence(Base):
    """Mutes the alerts its matchers select from starts_at to ends_at, without deleting them."""

    __tablename__ = "silences"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    matchers: Mapped[list[Any]]
    starts_at: Mapped[datetime]
    ends_at: Mapped[datetime]
    comment: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime]


class RetrainJob(Base):
    """One retrain: what started it, where it is, and what the gate decided."""

    __tablename__ = "retrain_jobs"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    trigger: Mapped[str] = mapped_column(String(32))  # quarterly | recapture | manual
    reason: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), index=True)  # queued running succeeded refused failed interrupted
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    owner: Mapped[str | None] = mapped_column(String(128))
    work_dir: Mapped[str] = mapped_column(String(1024))
    progress: Mapped[dict[str, Any]]
    corpus_hash: Mapped[str | None] = mapped_column(String(64))
    candidate_version: Mapped[str | None] = mapped_column(String(64))
    decision: Mapped[dict[str, Any] | None]
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer)


class RetrainLock(Base):
    """The one-retrain-at-a-time lock: held while its owner's heartbeat is fresh, so a crashed
    owner's lock frees itself."""

    __tablename__ = "retrain_lock"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str | None] = mapped_column(String(128))
    job_id: Mapped[int | None] = mapped_column(Id)
    heartbeat_at: Mapped[datetime | None]


class HeadEvent(Base):
    """A change of the live head: deploy, refusal, watch verdict, rollback, with the hook's result."""

    __tablename__ = "head_events"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(index=True)
    event: Mapped[str] = mapped_column(String(32))  # deployed | refused | kept | rolled_back
    version: Mapped[str] = mapped_column(String(64))
    previous_version: Mapped[str | None] = mapped_column(String(64))
    job_id: Mapped[int | None] = mapped_column(Id)
    reason: Mapped[str] = mapped_column(Text)
    details: Mapped[dict[str, Any]]


Index("ix_samples_segment_occurred", Sample.segment, Sample.occurred_at)


def with_password(url: str, password: str | None) -> URL:
    parsed = make_url(url)
    return parsed.set(password=password) if password else parsed


def create_db_engine(
    url: str | URL, connect_timeout_s: float | None = None, storage: StorageConfig | None = None, **kwargs: Any
) -> Engine:
    """An engine for `url`. SQLite gets WAL, a busy timeout and foreign keys, its directory mode 0700 and its
    files 0600. PostgreSQL gets the time limits of `storage` (defaults when None; monitor.base.db_timeouts):
    a connect timeout, TCP keepalives and tcp_user_timeout, the server's statement and idle-in-transaction
    timeouts, a deadline on every call and a timed ping before a pooled connection is used. A parameter
    the URL sets itself (e.g. `connect_timeout`) is left to the URL."""
    storage = storage or StorageConfig()
    if connect_timeout_s is not None:
        storage = storage.model_copy(update={"connect_timeout_s": connect_timeout_s})
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, **kwargs)
    if parsed.get_backend_name() != "postgresql":
        return create_engine(parsed, pool_pre_ping=True, **kwargs)
    connect_args = {**libpq_parameters(storage, dict(parsed.query)), **kwargs.pop("connect_args", {})}
    engine = create_engine(parsed, connect_args=connect_args, **kwargs)
    event.listen(engine, "do_connect", connect_with_deadlines(storage.answer_timeout_s))
    event.listen(engine, "checkout", ping_within(storage.ping_timeout_s))
    return engine


def _sqlite_engine(url: URL, **kwargs: Any) -> Engine:
    if url.database and url.database != ":memory:":
        database = Path(url.database)
        open_data_dir(database.parent)
        _restrict_files(database)
    engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def open_data_dir(directory: Path) -> None:
    """Creates the data directory mode 0700 (and tightens it to that), and sets this process's umask to
    077: the database, the salt, reports and checkpoints specwatch writes there are its user's alone."""
    os.umask(0o077)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    _tighten(directory, 0o700)


def _restrict_files(database: Path) -> None:
    """The SQLite database and its -wal/-shm files 0600 (SQLite gives -wal/-shm the database's mode)."""
    if not database.exists():
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT, 0o600))
    for path in (database, database.with_name(database.name + "-wal"), database.with_name(database.name + "-shm")):
        _tighten(path, 0o600)


def _tighten(path: Path, mode: int) -> None:
    try:
        current = stat.S_IMODE(path.stat().st_mode)
        if current & ~mode:
            path.chmod(current & mode)
            log.info("%s was mode %o; now %o", path, current, current & mode)
    except FileNotFoundError:
        return
    except PermissionError as error:
        log.warning("cannot restrict the mode of %s: %s", path, error)


def open_database(config: Config, migrate: bool = True) -> Engine:
    """An engine on the configured database (password and time limits from the config), migrated
    to the latest schema unless told not to. Opens the data directory (mode 0700, umask 077)."""
    open_data_dir(config.storage.data_dir)
    password = config.storage.database_password.read()
    url = with_password(config.database_url, password.reveal() if password else None)
    engine = create_db_engine(url, storage=config.storage)
    if migrate:
        upgrade(engine)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def alembic_config(engine: Engine) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the database behind `engine` to `revision` (default: the latest)."""
    cfg = alembic_config(engine)
    with engine.begin() as connection, without_time_limits(connection):
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)
    log.info("database at %s is at revision %s", shown_url(engine.url), revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
