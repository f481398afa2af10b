"""Read JSONL logs like `tail -F`: follow rotation and truncation, read rotated .gz files.

A file is known by the fingerprint of its first line (hash of the decompressed bytes), not
by its name or inode, so `app.log` renamed to `app.log.1` and later compressed to
`app.log.1.gz` is one file read once: its cursor (byte offset in the uncompressed stream)
moves with it. Cursors commit in the same transaction as the samples read up to them.
A line longer than `intake.max_record_bytes` is never held whole: its first bytes go to
quarantine and the rest is skipped. `import_logs` (a one-shot `specwatch ingest`) reports the bytes
read, of the files' sizes on disk, to a `decoder.progress.Progress`.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from sqlalchemy import Engine

from decoder.progress import NO_PROGRESS, Progress
from monitor.base.config import Config, FollowConfig
from monitor.intake.pipeline import CursorAdvance, IngestReport, IntakePipeline, RawRecord, cursor_offsets

log = logging.getLogger(__name__)

FINGERPRINT_MAX_BYTES = 64 * 1024
SKIP_CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Batch:
    records: list[RawRecord]
    cursor: CursorAdvance
    disk_offset: int
    """Bytes of the file on disk read up to the batch's end (compressed bytes for a .gz file)."""


def is_compressed(path: Path) -> bool:
    return path.suffix == ".gz"


def open_log(path: Path) -> BinaryIO:
    if is_compressed(path):
        return cast(BinaryIO, gzip.GzipFile(path, "rb"))
    return path.open("rb")


def disk_offset(handle: BinaryIO) -> int:
    """How far into the file on disk a handle from `open_log` has read."""
    if isinstance(handle, gzip.GzipFile):
        return int(handle.fileobj.tell()) if handle.fileobj is not None else 0
    return handle.tell()


def fingerprint_of(path: Path) -> str | None:
    """Hash of the file's first complete line; None while it has none (or cannot be read)."""
    try:
        with open_log(path) as handle:
            first = handle.readline(FINGERPRINT_MAX_BYTES)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        log.warning("cannot read %s: %s", path, exc)
        return None
    complete = first.endswith(b"\n") or len(first) == FINGERPRINT_MAX_BYTES
    if not complete and not (is_compressed(path) and first):
        return None
    return hashlib.sha256(first).hexdigest()


def discover(paths: list[Path], pattern: str) -> list[Path]:
    """Files to read: named files, and files in named directories matching `pattern`, oldest first."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(child for child in path.glob(pattern) if child.is_file())
        elif path.is_file():
            found.append(path)
    return sorted(set(found), key=_age_order)


def _age_order(path: Path) -> tuple[float, str]:
    try:
        return path.stat().st_mtime, str(path)
    except OSError:
        return 0.0, str(path)


def read_line(handle: BinaryIO, max_bytes: int) -> tuple[bytes, int]:
    """The next line's first `max_bytes + 1` bytes at most (enough to tell it is too long) and its
    whole length; (b"", 0) at end of file. Ends with a newline when the line was complete."""
    data = handle.readline(max_bytes + 1)
    length = len(data)
    if data.endswith(b"\n") or length <= max_bytes:
        return data, length
    while True:  # over the limit: skip the rest without holding it
        rest = handle.readline(SKIP_CHUNK_BYTES)
        length += len(rest)
        if not rest or rest.endswith(b"\n"):
            return data + (b"\n" if rest else b""), length


def read_batches(
    path: Path,
    fingerprint: str,
    offset: int,
    line: int,
    batch_lines: int,
    final: bool,
    max_line_bytes: int = 1 << 62,
) -> Iterator[Batch]:
    """Complete lines from `offset` on, in batches; a last line without newline counts only if `final`."""
    final = final or is_compressed(path)
    with open_log(path) as handle:
        handle.seek(offset)
        records: list[RawRecord] = []
        committed = offset
        while True:
            data, length = read_line(handle, max_line_bytes)
            if not length or (not data.endswith(b"\n") and not final):
                break
            line += 1
            if data.strip():
                records.append(RawRecord(position=f"line {line} (byte {offset})", data=data.rstrip(b"\r\n")))
            offset += length
            if len(records) >= batch_lines:
                yield Batch(records, CursorAdvance(fingerprint, str(path), offset, line), disk_offset(handle))
                records, committed = [], offset
        if offset > committed:
            yield Batch(records, CursorAdvance(fingerprint, str(path), offset, line), disk_offset(handle))


class FileFollower:
    """Reads every followed file up to its end, then again on each poll, committing as it goes."""

    def __init__(
        self,
        pipeline: IntakePipeline,
        engine: Engine,
        config: FollowConfig,
        on_batch: Callable[[Path, IngestReport, int], None] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.engine = engine
        self.config = config
        self.on_batch = on_batch

    def poll_once(self, paths: list[Path] | None = None, final: bool = False) -> IngestReport:
        """Read what is new in every file; `final` treats end of file as end of line (one-shot imports)."""
        total = IngestReport()
        cursors = cursor_offsets(self.engine)
        for path in discover(paths if paths is not None else self.config.paths, self.config.glob):
            fingerprint = fingerprint_of(path)
            if fingerprint is None:
                continue
            offset, line = cursors.get(fingerprint, (0, 0))
            if not is_compressed(path) and _size(path) < offset:
                log.warning("%s was truncated below its read offset %d; reading it from the start", path, offset)
                offset, line = 0, 0
            total.add(self._read_file(path, fingerprint, offset, line, final))
        return total

    def _read_file(self, path: Path, fingerprint: str, offset: int, line: int, final: bool) -> IngestReport:
        report = IngestReport()
        try:
            max_bytes = self.pipeline.intake.max_record_bytes
            for batch in read_batches(path, fingerprint, offset, line, self.config.batch_lines, final, max_bytes):
                batch_report = self.pipeline.ingest(f"file:{path}", batch.records, batch.cursor)
                report.add(batch_report)
                offset = batch.cursor.offset
                if self.on_batch:
                    self.on_batch(path, batch_report, batch.disk_offset)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            log.warning("stopped reading %s at byte %d: %s", path, offset, exc)
        return report

    def run(self, stop: threading.Event) -> None:
        """Follow until `stop` is set."""
        while not stop.is_set():
            try:
                self.poll_once()
            except Exception:
                log.exception("file follower poll failed; retrying in %.1fs", self.config.poll_interval_s)
            stop.wait(self.config.poll_interval_s)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def import_logs(config: Config, engine: Engine, paths: list[Path], progress: Progress = NO_PROGRESS) -> IngestReport:
    """Read files and directories once to their end (a last line without newline counts);
    `progress` hears of the bytes read of all the files' sizes on disk."""
    files = discover([path.resolve() for path in paths], config.intake.follow.glob)
    sizes = [_size(path) for path in files]
    before = dict(zip(files, itertools.accumulate(sizes, initial=0), strict=False))  # bytes of the files ahead
    total = IngestReport()
    started = time.monotonic()

    def show(path: Path, report: IngestReport, read_to: int) -> None:
        total.add(report)
        progress.advance(before.get(path, 0) + read_to, f"{path.name}: {total.records} records")

    follower = FileFollower(IntakePipeline(config, engine), engine, config.intake.follow, on_batch=show)
    progress.start("ingest", sum(sizes), unit="B")
    try:
        follower.poll_once(files, final=True)
        progress.advance(sum(sizes), f"{total.records} records")
    finally:
        progress.finish()
    log.info("ingested %s in %.1fs", total.describe(), time.monotonic() - started)
    return total
