"""The intake pipeline: raw records in, redacted samples and quarantined records out.

    decode -> parse -> key -> language -> segment -> rate -> redact -> (one transaction:
    dedupe -> hourly cap -> insert samples + quarantine + counters + file cursor)

Everything a batch changes, the file cursor included, commits in one transaction, so a
crash at any moment neither loses nor doubles a record.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from monitor.config import Config, Secret
from monitor.db import IntakeCounter, IntakeCursor, QuarantinedRecord, Sample, SamplingBucket, utcnow
from monitor.intake.language import detect_language
from monitor.intake.records import RecordError, TrafficRecord, decode_line, parse_record
from monitor.intake.redact import Redactor
from monitor.intake.sampling import Bucket, HourlyCap, hour_of, passes_rate
from monitor.intake.segments import ValueHasher, segment_for

log = logging.getLogger(__name__)

EXCERPT_CHARS = 2000
LANGUAGE_PROBE_CHARS = 800
SALT_FILE = "hash_salt"


@dataclass(frozen=True)
class RawRecord:
    """One input record: a raw line (`data`) or an already-decoded JSON value (`value`)."""

    position: str
    data: bytes | None = None
    value: Any = None


@dataclass(frozen=True)
class CursorAdvance:
    """How far a followed file has been read once this batch commits."""

    fingerprint: str
    path: str
    offset: int
    line: int


@dataclass
class IngestReport:
    records: int = 0
    stored: int = 0
    duplicates: int = 0
    sampled_out: int = 0
    quarantined: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)

    def describe(self) -> str:
        return (
            f"{self.records} records: {self.stored} stored, {self.duplicates} duplicates, "
            f"{self.sampled_out} sampled out, {self.quarantined} quarantined"
        )

    def add(self, other: IngestReport) -> None:
        self.records += other.records
        self.stored += other.stored
        self.duplicates += other.duplicates
        self.sampled_out += other.sampled_out
        self.quarantined += other.quarantined
        self.problems.extend(other.problems)


@dataclass(frozen=True)
class Candidate:
    """A record that passed the rate, redacted and ready to store."""

    row: dict[str, Any]
    hourly_cap: int

    @property
    def bucket(self) -> Bucket:
        return self.row["segment"], hour_of(self.row["occurred_at"])


@dataclass(frozen=True)
class Rejected:
    position: str
    reason: str
    raw: bytes


def resolve_salt(config: Config) -> Secret:
    """The configured salt, else one generated once and kept in the data dir (mode 0600)."""
    configured = config.intake.redaction.hash_salt.read()
    if configured:
        return configured
    path = config.storage.data_dir / SALT_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(os.urandom(32).hex())
        log.info("generated a hashing salt in %s", path)
    return Secret(path.read_text().strip())


def sample_key(record: TrafficRecord, value: Any) -> str:
    """Idempotency key: the record's id when it has one, else a hash of its content."""
    if record.id is not None:
        material = f"id:{record.id}"
    else:
        material = "content:" + json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


class IntakePipeline:
    def __init__(self, config: Config, engine: Engine, salt: Secret | None = None) -> None:
        self.config = config
        self.intake = config.intake
        self.engine = engine
        self.redactor = Redactor(self.intake.redaction.extra_patterns)
        self.hasher = ValueHasher(salt or resolve_salt(config), self.intake.redaction.hashed_keys)
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert

    def ingest(self, source: str, records: Sequence[RawRecord], cursor: CursorAdvance | None = None) -> IngestReport:
        """Process and store one batch in one transaction; returns what became of each record."""
        report = IngestReport(records=len(records))
        received_at = utcnow()
        candidates: list[Candidate] = []
        rejected: list[Rejected] = []
        for raw in records:
            outcome = self._prepare(raw, source, received_at)
            if isinstance(outcome, Rejected):
                rejected.append(outcome)
            elif outcome is None:
                report.sampled_out += 1
            else:
                candidates.append(outcome)
        with Session(self.engine) as session, session.begin():
            self._store(session, candidates, report)
            self._quarantine(session, source, rejected, received_at, report)
            self._count(session, source, report, received_at)
            if cursor is not None:
                self._advance(session, cursor, received_at)
        return report

    def _prepare(self, raw: RawRecord, source: str, received_at: datetime) -> Candidate | Rejected | None:
        data = raw.data if raw.data is not None else _encode(raw.value)
        try:
            value = decode_line(data, self.intake.max_record_bytes) if raw.value is None else raw.value
            if raw.value is not None and len(data) > self.intake.max_record_bytes:
                raise RecordError(f"record is {len(data)} bytes, over the {self.intake.max_record_bytes}-byte limit")
            record = parse_record(value, self.intake.format)
        except RecordError as exc:
            return Rejected(raw.position, str(exc), data)
        key = sample_key(record, value)
        language = record.metadata.get("language") or detect_language(_language_text(record))
        segment = segment_for(self.hasher.protect(record.metadata), language, self.intake.segment_keys)
        rate, hourly_cap = self.intake.sampling.rule_for(segment)
        if not passes_rate(key, rate):
            return None
        return Candidate(self._row(record, key, segment, language, source, received_at), hourly_cap)

    def _row(
        self, record: TrafficRecord, key: str, segment: str, language: str, source: str, received_at: datetime
    ) -> dict[str, Any]:
        redactions: dict[str, int] = {}
        messages = []
        for message in record.messages:
            redacted = self.redactor.redact(message["content"])
            _merge(redactions, redacted.counts)
            messages.append({"role": message["role"], "content": redacted.text})
        completion = self.redactor.redact(record.completion)
        _merge(redactions, completion.counts)
        attributes, attribute_counts = self.redactor.redact_value(self.hasher.protect(record.metadata))
        _merge(redactions, attribute_counts)
        return {
            "sample_key": key,
            "received_at": received_at,
            "occurred_at": record.timestamp or received_at,
            "segment": segment,
            "language": language,
            "source": source,
            "model": record.model,
            "temperature": record.temperature,
            "messages": messages,
            "completion": completion.text,
            "attributes": attributes,
            "redactions": redactions,
            "prompt_chars": sum(len(message["content"]) for message in messages),
            "completion_chars": len(completion.text),
        }

    def _store(self, session: Session, candidates: list[Candidate], report: IngestReport) -> None:
        if not candidates:
            return
        keys = [candidate.row["sample_key"] for candidate in candidates]
        existing = set(session.scalars(select(Sample.sample_key).where(Sample.sample_key.in_(keys))))
        cap = HourlyCap(self._kept_so_far(session, {candidate.bucket for candidate in candidates}))
        rows = []
        for candidate in candidates:
            key = candidate.row["sample_key"]
            if key in existing:
                report.duplicates += 1
                continue
            existing.add(key)
            if not cap.admit(candidate.row["segment"], candidate.row["occurred_at"], candidate.hourly_cap):
                report.sampled_out += 1
                continue
            rows.append(candidate.row)
        if rows:
            statement = self._insert(Sample).on_conflict_do_nothing(index_elements=["sample_key"])
            stored = len(session.execute(statement.returning(Sample.sample_key), rows).all())
            report.stored += stored
            report.duplicates += len(rows) - stored
        self._count_buckets(session, cap)

    def _kept_so_far(self, session: Session, buckets: Iterable[Bucket]) -> dict[Bucket, int]:
        wanted = list(buckets)
        if not any(self.intake.sampling.rule_for(segment)[1] for segment, _ in wanted):
            return {}
        query = select(SamplingBucket.segment, SamplingBucket.hour, SamplingBucket.kept).where(
            SamplingBucket.segment.in_({segment for segment, _ in wanted}),
            SamplingBucket.hour.in_({hour for _, hour in wanted}),
        )
        return {(segment, hour): kept for segment, hour, kept in session.execute(query)}

    def _count_buckets(self, session: Session, cap: HourlyCap) -> None:
        rows = [{"segment": seg, "hour": hour, "kept": n} for (seg, hour), n in cap.admitted.items() if n]
        if not rows:
            return
        statement = self._insert(SamplingBucket)
        session.execute(
            statement.on_conflict_do_update(
                index_elements=["segment", "hour"],
                set_={"kept": SamplingBucket.kept + statement.excluded.kept},
            ),
            rows,
        )

    def _quarantine(
        self,
        session: Session,
        source: str,
        rejected: list[Rejected],
        received_at: datetime,
        report: IngestReport,
    ) -> None:
        for item in rejected:
            session.add(
                QuarantinedRecord(
                    received_at=received_at,
                    source=source,
                    position=item.position[:255],
                    reason=item.reason[:500],
                    record_bytes=len(item.raw),
                    record_sha256=hashlib.sha256(item.raw).hexdigest(),
                    excerpt=self.redactor.redact(
                        item.raw[: EXCERPT_CHARS * 4].decode("utf-8", "replace")[:EXCERPT_CHARS]
                    ).text,
                )
            )
            report.quarantined += 1
            report.problems.append((item.position, item.reason))
        if rejected:
            log.warning("%s: quarantined %d record(s), first: %s", source, len(rejected), rejected[0].reason)

    def _count(self, session: Session, source: str, report: IngestReport, now: datetime) -> None:
        totals = {
            "records": report.records,
            "stored": report.stored,
            "duplicates": report.duplicates,
            "sampled_out": report.sampled_out,
            "quarantined": report.quarantined,
        }
        statement = self._insert(IntakeCounter).values(source=source[:1024], updated_at=now, **totals)
        increments: dict[str, Any] = {name: getattr(IntakeCounter, name) + value for name, value in totals.items()}
        session.execute(
            statement.on_conflict_do_update(index_elements=["source"], set_={**increments, "updated_at": now})
        )

    def _advance(self, session: Session, cursor: CursorAdvance, now: datetime) -> None:
        statement = self._insert(IntakeCursor).values(
            fingerprint=cursor.fingerprint,
            path=cursor.path,
            offset=cursor.offset,
            line=cursor.line,
            updated_at=now,
        )
        session.execute(
            statement.on_conflict_do_update(
                index_elements=["fingerprint"],
                set_={"path": cursor.path, "offset": cursor.offset, "line": cursor.line, "updated_at": now},
            )
        )


def _encode(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, default=str).encode("utf-8")


def _language_text(record: TrafficRecord) -> str:
    """What the language is read from: the last user turn and the completion, each up to
    LANGUAGE_PROBE_CHARS (a longer probe costs time and does not change the answer)."""
    last_user = next((m["content"] for m in reversed(record.messages) if m["role"] == "user"), "")
    return f"{last_user[:LANGUAGE_PROBE_CHARS]}\n{record.completion[:LANGUAGE_PROBE_CHARS]}"


def _merge(total: dict[str, int], counts: dict[str, int]) -> None:
    for kind, count in counts.items():
        total[kind] = total.get(kind, 0) + count


def cursor_offsets(engine: Engine) -> dict[str, tuple[int, int]]:
    """Every followed file's committed (offset, line), by fingerprint."""
    with Session(engine) as session:
        rows = session.execute(select(IntakeCursor.fingerprint, IntakeCursor.offset, IntakeCursor.line))
        return {fingerprint: (offset, line) for fingerprint, offset, line in rows}
