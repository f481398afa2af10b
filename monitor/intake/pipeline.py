"""The intake pipeline: raw records in, redacted samples and quarantined records out.

    decode -> parse -> key -> language -> segment -> rate -> redact -> (one transaction:
    dedupe -> hourly cap -> insert samples + the engine's own counts + quarantine + counters + file cursor)

The engine's per-request acceptance (monitor.intake.engine_stats), when a record carries it, is stored in
live_results for every record (`intake.live_counts = "all"`: a few numbers and labels, no text) or only
for sampled ones, linked to the stored sample when there is one. A payload that is present but wrong is
refused with its reason in the quarantine (counted as `live_refused`); the sample itself is still kept.

Everything a batch changes, the file cursor included, commits in one transaction, so a
crash at any moment neither loses nor doubles a record.

One record can never stop intake: whatever goes wrong while reading it quarantines that record
with a reason, and everything a column cannot hold (NUL, unpaired surrogates, over-long values)
is refused before the database sees it. Should the database still refuse a batch for good
(`monitor.base.failures.is_permanent_database_error`), its records are stored one at a time and the
ones it refuses are quarantined; `IntakeRefused` (caused by the refusal, so the same check holds
for it) is raised only when even that fails. `is_database_unreachable` tells the errors worth a retry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import traceback
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, String, Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from monitor.base.config import Config, Secret
from monitor.base.db import (
    IntakeCounter,
    IntakeCursor,
    LiveResult,
    QuarantinedRecord,
    Sample,
    SamplingBucket,
    utcnow,
)
from monitor.base.failures import is_permanent_database_error
from monitor.intake.language import detect_language, prose_languages
from monitor.intake.records import RecordError, TrafficRecord, decode_line, parse_record
from monitor.intake.redact import Redactor
from monitor.intake.sampling import Bucket, HourlyCap, hour_of, passes_rate
from monitor.intake.segments import ValueHasher, segment_for

log = logging.getLogger(__name__)

EXCERPT_CHARS = 2000
LANGUAGE_PROBE_CHARS = 800
SALT_FILE = "hash_salt"
PARAMETERS_PER_STATEMENT = 10_000  # PostgreSQL takes at most 65,535 bind parameters in one statement
ROWS_PER_INSERT = 1000
IDS_WITHHELD = "token_ids_withheld"
"""counted in a sample's redactions when its logged token ids were dropped: they would decode to
the text redaction changed"""
_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")
_JSON_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")
T = TypeVar("T")


def column_limits(table: Table) -> dict[str, int]:
    """Column name -> the most characters its String type holds."""
    return {
        column.name: column.type.length
        for column in table.columns
        if isinstance(column.type, String) and column.type.length
    }


SAMPLE_LIMITS = column_limits(Sample.__table__)  # type: ignore[arg-type]
SOURCE_CHARS = column_limits(IntakeCounter.__table__)["source"]  # type: ignore[arg-type]
PATH_CHARS = column_limits(IntakeCursor.__table__)["path"]  # type: ignore[arg-type]


class IntakeRefused(Exception):
    """The database refused a batch for a reason retrying cannot fix (a value or a statement it
    cannot take), and storing its records one at a time did not get around it either (it refuses
    the quarantine or the counters too). Raised from the database's error, so
    `monitor.base.failures.is_permanent_database_error` is true of it: HTTP answers 422, not 503."""


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
    live: int = 0
    """engine-reported acceptance counts stored"""
    live_refused: int = 0
    """engine payloads present but refused (their records' samples were kept)"""
    problems: list[tuple[str, str]] = field(default_factory=list)

    def describe(self) -> str:
        live = f", {self.live} engine acceptance reports" if self.live else ""
        refused = f" ({self.live_refused} refused)" if self.live_refused else ""
        return (
            f"{self.records} records: {self.stored} stored, {self.duplicates} duplicates, "
            f"{self.sampled_out} sampled out, {self.quarantined} quarantined{live}{refused}"
        )

    def add(self, other: IngestReport) -> None:
        self.records += other.records
        self.stored += other.stored
        self.duplicates += other.duplicates
        self.sampled_out += other.sampled_out
        self.quarantined += other.quarantined
        self.live += other.live
        self.live_refused += other.live_refused
        self.problems.extend(other.problems)


@dataclass(frozen=True)
class Live:
    """The engine's own counts of one record, ready for live_results, or why its payload was refused."""

    row: dict[str, Any] | None
    refused: Rejected | None = None


@dataclass(frozen=True)
class Candidate:
    """A record that passed the rate, redacted and ready to store."""

    row: dict[str, Any]
    hourly_cap: int
    record: RawRecord
    live: Live | None = None

    @property
    def bucket(self) -> Bucket:
        return self.row["segment"], hour_of(self.row["occurred_at"])


@dataclass(frozen=True)
class Rejected:
    position: str
    reason: str
    raw: bytes


@dataclass(frozen=True)
class SampledOut:
    """A record the rate left out of replay; its engine counts may still be kept."""

    live: Live | None


@dataclass
class Prepared:
    """A batch after reading, checking and sampling: what to store and what to quarantine."""

    candidates: list[Candidate] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    sampled_out: int = 0
    live: list[Live] = field(default_factory=list)
    """engine counts of records left out of replay (by the rate or the hourly cap)"""


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
    return hashlib.sha256(material.encode("utf-8", "surrogatepass")).hexdigest()


class IntakePipeline:
    def __init__(self, config: Config, engine: Engine, salt: Secret | None = None) -> None:
        self.config = config
        self.intake = config.intake
        self.engine = engine
        self.redactor = Redactor(self.intake.redaction.extra_patterns)
        self.hasher = ValueHasher(salt or resolve_salt(config), self.intake.redaction.hashed_keys)
        self.languages = prose_languages(self.intake.languages, self.intake.language_min_confidence)
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert

    def ingest(self, source: str, records: Sequence[RawRecord], cursor: CursorAdvance | None = None) -> IngestReport:
        """Process and store one batch in one transaction; returns what became of each record."""
        source = storable(source, SOURCE_CHARS)
        received_at = utcnow()
        prepared = self._prepare_batch(records, source, received_at)
        try:
            return self._commit(source, prepared, len(records), received_at, cursor)
        except DBAPIError as error:
            if not is_permanent_database_error(error):
                raise
            log.warning(
                "%s: the database refused a batch of %d records (%s); storing them one at a time",
                source,
                len(records),
                _error_name(error),
            )
            return self._commit_one_at_a_time(source, prepared, len(records), received_at, cursor)

    def _prepare_batch(self, records: Sequence[RawRecord], source: str, received_at: datetime) -> Prepared:
        prepared = Prepared()
        for raw in records:
            outcome = self._prepare(raw, source, received_at)
            if isinstance(outcome, Rejected):
                prepared.rejected.append(outcome)
            elif isinstance(outcome, SampledOut):
                prepared.sampled_out += 1
                if outcome.live is not None:
                    prepared.live.append(outcome.live)
            else:
                prepared.candidates.append(outcome)
        return prepared

    def _prepare(self, raw: RawRecord, source: str, received_at: datetime) -> Candidate | Rejected | SampledOut:
        """One record; whatever goes wrong with it quarantines this record, never the batch."""
        try:
            return self._prepare_record(raw, source, received_at)
        except RecordError as error:
            return Rejected(raw.position, str(error), raw_bytes(raw))
        except Exception as error:  # no check foresaw it: a bug to fix, but only this record pays
            reason = unexpected_reason(error)
            log.error("%s %s: %s; record quarantined", source, raw.position, reason)
            return Rejected(raw.position, reason, raw_bytes(raw))

    def _prepare_record(self, raw: RawRecord, source: str, received_at: datetime) -> Candidate | SampledOut:
        limit = self.intake.max_record_bytes
        if raw.data is not None:
            value = decode_line(raw.data, limit)
        else:
            size = len(_encode(raw.value))
            if size > limit:
                raise RecordError(f"record is over the {limit}-byte limit ({size} bytes)")
            value = raw.value
        record = parse_record(value, self.intake.format)
        key = sample_key(record, value)
        language = self._language(record)
        segment = segment_for(self._segment_values(record.metadata), language, self.intake.segment_keys)
        check_fits({"segment": segment})
        rate, hourly_cap = self.intake.sampling.rule_for(segment)
        live = self._live(raw, record, key, segment, language, received_at)
        if not passes_rate(key, rate):
            return SampledOut(live if self.intake.live_counts == "all" else None)
        row = self._row(record, key, segment, language, source, received_at)
        check_fits(row)
        return Candidate(row, hourly_cap, raw, live)

    def _live(
        self, raw: RawRecord, record: TrafficRecord, key: str, segment: str, language: str, received_at: datetime
    ) -> Live | None:
        """The record's engine counts as a live_results row (the sample id is filled in at commit)."""
        if record.engine_acceptance_problem is not None:
            reason = f"engine_acceptance refused, the sample itself kept: {record.engine_acceptance_problem}"
            return Live(None, Rejected(f"{raw.position} (engine_acceptance)", reason, raw_bytes(raw)))
        acceptance = record.engine_acceptance
        if acceptance is None:
            return None
        model = storable(self.redactor.redact(record.model).text, 255) if record.model is not None else None
        row = {
            "sample_key": key,
            "sample_id": None,
            "received_at": received_at,
            "occurred_at": record.timestamp or received_at,
            "segment": segment,
            "language": language,
            "model": model,
            "engine": acceptance.engine,
            "method": acceptance.method,
            "num_spec_tokens": acceptance.num_spec_tokens,
            "steps": acceptance.steps,
            "drafted": acceptance.drafted,
            "accepted": acceptance.accepted,
            "rejected": acceptance.rejected,
            "rejected_basis": acceptance.rejected_basis,
            "counts": acceptance.to_dict(),
        }
        return Live(row)

    def _language(self, record: TrafficRecord) -> str:
        """The record's `language` when it is one of our labels (any case), else the detected one."""
        label = record.metadata.get("language", "").strip().lower()
        return label if label in self.languages.labels else detect_language(_language_text(record), self.languages)

    def _segment_values(self, metadata: Mapping[str, str]) -> dict[str, str]:
        """The values that form the segment: hashed keys' hashes, every other value redacted."""
        present = {key: metadata[key] for key in self.intake.segment_keys if key in metadata}
        return {
            key: value if key in self.hasher.hashed_keys else self.redactor.redact(value).text
            for key, value in self.hasher.protect(present).items()
        }

    def _attributes(self, metadata: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, int]]:
        """Metadata as stored: hashed keys' values hashed, every other value and every key redacted."""
        hashed = {key: value for key, value in self.hasher.protect(metadata).items() if key in self.hasher.hashed_keys}
        plain = {key: value for key, value in metadata.items() if key not in self.hasher.hashed_keys}
        redacted, counts = self.redactor.redact_value(plain)
        assert isinstance(redacted, dict)
        return {**hashed, **redacted}, counts

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
        # ids decode to the text as sent: they are kept only when redaction changed none of it
        text_redacted = bool(redactions)
        if text_redacted and (record.prompt_token_ids or record.completion_token_ids):
            redactions[IDS_WITHHELD] = 1
        attributes, attribute_counts = self._attributes(record.metadata)
        _merge(redactions, attribute_counts)
        model = self.redactor.redact(record.model) if record.model is not None else None
        if model is not None:
            _merge(redactions, model.counts)
        return {
            "sample_key": key,
            "received_at": received_at,
            "occurred_at": record.timestamp or received_at,
            "segment": segment,
            "language": language,
            "source": source,
            "model": model.text if model is not None else None,
            "temperature": record.temperature,
            "messages": messages,
            "completion": completion.text,
            "attributes": attributes,
            "redactions": redactions,
            "prompt_chars": sum(len(message["content"]) for message in messages),
            "completion_chars": len(completion.text),
            "raw_prompt": record.raw_prompt,
            "finish_reason": record.finish_reason,
            "max_tokens": record.max_tokens,
            "prompt_token_ids": None if text_redacted else record.prompt_token_ids,
            "completion_token_ids": None if text_redacted else record.completion_token_ids,
        }

    def _commit(
        self, source: str, prepared: Prepared, records: int, received_at: datetime, cursor: CursorAdvance | None
    ) -> IngestReport:
        """One transaction: samples, quarantine, counters and the file cursor, all or nothing."""
        report = IngestReport(records=records, sampled_out=prepared.sampled_out)
        with Session(self.engine) as session, session.begin():
            stored_live = self._store(session, prepared.candidates, report)
            self._store_live(session, [*prepared.live, *stored_live], report)
            self._refuse_live(session, source, [*prepared.live, *stored_live], received_at, report)
            self._quarantine(session, source, prepared.rejected, received_at, report)
            self._count(session, source, report, received_at)
            if cursor is not None:
                self._advance(session, cursor, received_at)
        return report

    def _commit_one_at_a_time(
        self, source: str, prepared: Prepared, records: int, received_at: datetime, cursor: CursorAdvance | None
    ) -> IngestReport:
        """After the database refused a whole batch: each sample in its own transaction, a refused one
        quarantined, the cursor last. A crash in between can quarantine or count a record twice on
        the re-read (a stored sample is still stored once)."""
        head = Prepared(rejected=prepared.rejected, sampled_out=prepared.sampled_out, live=prepared.live)
        report = self._commit_or_refuse(source, head, records, received_at, None)
        for candidate in prepared.candidates:
            try:
                report.add(self._commit(source, Prepared(candidates=[candidate]), 0, received_at, None))
            except DBAPIError as error:
                if not is_permanent_database_error(error):
                    raise
                reason = f"refused by the database ({_error_name(error)})"
                refused = Prepared(rejected=[Rejected(candidate.record.position, reason, raw_bytes(candidate.record))])
                report.add(self._commit_or_refuse(source, refused, 0, received_at, None))
        report.add(self._commit_or_refuse(source, Prepared(), 0, received_at, cursor))
        return report

    def _commit_or_refuse(
        self, source: str, prepared: Prepared, records: int, received_at: datetime, cursor: CursorAdvance | None
    ) -> IngestReport:
        try:
            return self._commit(source, prepared, records, received_at, cursor)
        except DBAPIError as error:
            if is_permanent_database_error(error):
                raise IntakeRefused(f"the database refused the batch ({_error_name(error)})") from error
            raise

    def _store(self, session: Session, candidates: list[Candidate], report: IngestReport) -> list[Live]:
        """Inserts the samples; returns the engine counts of every candidate (stored, duplicate or over the
        hourly cap) that are to be kept, each linked to its stored sample."""
        if not candidates:
            return []
        existing = self._existing_keys(session, [candidate.row["sample_key"] for candidate in candidates])
        cap = HourlyCap(self._kept_so_far(session, {candidate.bucket for candidate in candidates}))
        rows, live = [], []
        for candidate in candidates:
            key = candidate.row["sample_key"]
            if key in existing:
                report.duplicates += 1
                live.append(candidate.live)
                continue
            existing.add(key)
            if not cap.admit(candidate.row["segment"], candidate.row["occurred_at"], candidate.hourly_cap):
                report.sampled_out += 1
                live.append(candidate.live if self.intake.live_counts == "all" else None)
                continue
            rows.append(candidate.row)
            live.append(candidate.live)
        statement = self._insert(Sample).on_conflict_do_nothing(index_elements=["sample_key"])
        sample_ids: dict[str, int] = {}
        for chunk in chunks(rows, ROWS_PER_INSERT):
            stored = session.execute(statement.returning(Sample.sample_key, Sample.id), chunk).all()
            sample_ids.update({key: sample_id for key, sample_id in stored})
            report.stored += len(stored)
            report.duplicates += len(chunk) - len(stored)
        self._count_buckets(session, cap)
        kept = [item for item in live if item is not None]
        self._link_samples(session, kept, sample_ids)
        return kept

    def _link_samples(self, session: Session, live: list[Live], sample_ids: dict[str, int]) -> None:
        """Fills each live row's sample id: the sample just stored, or the one stored before with its key."""
        missing = [item.row["sample_key"] for item in live if item.row and item.row["sample_key"] not in sample_ids]
        for chunk in chunks(missing, PARAMETERS_PER_STATEMENT):
            found = session.execute(select(Sample.sample_key, Sample.id).where(Sample.sample_key.in_(chunk)))
            sample_ids.update({key: sample_id for key, sample_id in found})
        for item in live:
            if item.row is not None:
                item.row["sample_id"] = sample_ids.get(item.row["sample_key"])

    def _store_live(self, session: Session, live: list[Live], report: IngestReport) -> None:
        """The engine's counts, once per record key (a record sent again adds nothing)."""
        rows = [item.row for item in live if item.row is not None]
        statement = self._insert(LiveResult).on_conflict_do_nothing(index_elements=["sample_key"])
        for chunk in chunks(rows, ROWS_PER_INSERT):
            report.live += len(session.execute(statement.returning(LiveResult.id), chunk).all())

    def _refuse_live(
        self, session: Session, source: str, live: list[Live], received_at: datetime, report: IngestReport
    ) -> None:
        refused = [item.refused for item in live if item.refused is not None]
        self._add_quarantined(session, source, refused, received_at)
        report.live_refused += len(refused)
        report.problems.extend((item.position, item.reason) for item in refused)
        if refused:
            log.warning(
                "%s: refused %d engine acceptance payload(s), first: %s", source, len(refused), refused[0].reason
            )

    def _existing_keys(self, session: Session, keys: list[str]) -> set[str]:
        existing: set[str] = set()
        for chunk in chunks(keys, PARAMETERS_PER_STATEMENT):
            existing.update(session.scalars(select(Sample.sample_key).where(Sample.sample_key.in_(chunk))))
        return existing

    def _kept_so_far(self, session: Session, buckets: Iterable[Bucket]) -> dict[Bucket, int]:
        wanted = list(buckets)
        if not any(self.intake.sampling.rule_for(segment)[1] for segment, _ in wanted):
            return {}
        kept: dict[Bucket, int] = {}
        for chunk in chunks(wanted, PARAMETERS_PER_STATEMENT // 2):
            query = select(SamplingBucket.segment, SamplingBucket.hour, SamplingBucket.kept).where(
                SamplingBucket.segment.in_({segment for segment, _ in chunk}),
                SamplingBucket.hour.in_({hour for _, hour in chunk}),
            )
            kept.update({(segment, hour): count for segment, hour, count in session.execute(query)})
        return kept

    def _count_buckets(self, session: Session, cap: HourlyCap) -> None:
        rows = [{"segment": seg, "hour": hour, "kept": n} for (seg, hour), n in cap.admitted.items() if n]
        statement = self._insert(SamplingBucket)
        upsert = statement.on_conflict_do_update(
            index_elements=["segment", "hour"], set_={"kept": SamplingBucket.kept + statement.excluded.kept}
        )
        for chunk in chunks(rows, ROWS_PER_INSERT):
            session.execute(upsert, chunk)

    def _quarantine(
        self,
        session: Session,
        source: str,
        rejected: list[Rejected],
        received_at: datetime,
        report: IngestReport,
    ) -> None:
        self._add_quarantined(session, source, rejected, received_at)
        report.quarantined += len(rejected)
        report.problems.extend((item.position, item.reason) for item in rejected)
        if rejected:
            log.warning("%s: quarantined %d record(s), first: %s", source, len(rejected), rejected[0].reason)

    def _add_quarantined(self, session: Session, source: str, rejected: list[Rejected], received_at: datetime) -> None:
        for item in rejected:
            session.add(
                QuarantinedRecord(
                    received_at=received_at,
                    source=source,
                    position=storable(item.position, 255),
                    reason=storable(item.reason, 500),
                    record_bytes=len(item.raw),
                    record_sha256=hashlib.sha256(item.raw).hexdigest(),
                    excerpt=self._excerpt(item.raw),
                )
            )

    def _excerpt(self, raw: bytes) -> str:
        """The record's start, redacted; JSON escapes (\\u0040) are read first, so PII spelt with
        them is found too, and what no column holds becomes U+FFFD."""
        text = raw[: EXCERPT_CHARS * 4].decode("utf-8", "replace")[:EXCERPT_CHARS]
        unescaped = _JSON_ESCAPE.sub(lambda escape: chr(int(escape.group(1), 16)), text)
        return self.redactor.redact(storable(unescaped)).text

    def _count(self, session: Session, source: str, report: IngestReport, now: datetime) -> None:
        totals = {
            "records": report.records,
            "stored": report.stored,
            "duplicates": report.duplicates,
            "sampled_out": report.sampled_out,
            "quarantined": report.quarantined,
            "live": report.live,
            "live_refused": report.live_refused,
        }
        statement = self._insert(IntakeCounter).values(source=source, updated_at=now, **totals)
        increments: dict[str, Any] = {name: getattr(IntakeCounter, name) + value for name, value in totals.items()}
        session.execute(
            statement.on_conflict_do_update(index_elements=["source"], set_={**increments, "updated_at": now})
        )

    def _advance(self, session: Session, cursor: CursorAdvance, now: datetime) -> None:
        path = storable(cursor.path, PATH_CHARS)
        statement = self._insert(IntakeCursor).values(
            fingerprint=cursor.fingerprint,
            path=path,
            offset=cursor.offset,
            line=cursor.line,
            updated_at=now,
        )
        session.execute(
            statement.on_conflict_do_update(
                index_elements=["fingerprint"],
                set_={"path": path, "offset": cursor.offset, "line": cursor.line, "updated_at": now},
            )
        )


def _encode(value: Any) -> bytes:
    """An already-decoded record as JSON bytes; lone surrogates pass (the record check refuses them)."""
    try:
        return json.dumps(value, ensure_ascii=False, default=str).encode("utf-8", "surrogatepass")
    except (ValueError, RecursionError):
        raise RecordError("record cannot be written as JSON: nested too deeply or an over-long number") from None


def raw_bytes(raw: RawRecord) -> bytes:
    """The record's bytes as received (for its hash and excerpt in quarantine), b"" if it has none."""
    if raw.data is not None:
        return raw.data
    try:
        return _encode(raw.value)
    except RecordError:
        return b""


def storable(text: str, limit: int | None = None) -> str:
    """Text any column holds: NUL and lone surrogates as U+FFFD; over `limit` characters, cut and
    ended with a hash of the whole, so that two long texts stay apart."""
    text = _UNSTORABLE.sub("\ufffd", text)
    if limit is None or len(text) <= limit:
        return text
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    return f"{text[: limit - len(digest) - 1]}~{digest}"


def check_fits(row: Mapping[str, Any]) -> None:
    """RecordError unless every string fits its column in samples (PostgreSQL refuses longer ones)."""
    for column, value in row.items():
        limit = SAMPLE_LIMITS.get(column)
        if limit is not None and isinstance(value, str) and len(value) > limit:
            raise RecordError(f"{column}: {len(value)} characters, over the {limit} the database holds")


def unexpected_reason(error: Exception) -> str:
    """A reason for an error no check foresaw: its type and the line that raised it, never its
    message, which may quote the record."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return f"unexpected {type(error).__name__}{where} while reading the record"


def _error_name(error: DBAPIError) -> str:
    """The driver's error class (psycopg names the condition: StringDataRightTruncation), no message."""
    return type(error.orig or error).__name__


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


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
