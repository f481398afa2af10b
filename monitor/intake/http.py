"""HTTP intake: `POST /v1/samples` with a JSON object or array (`application/json`) or NDJSON
(`application/x-ndjson`), served by uvicorn + starlette from a thread of its own.

    server = IntakeHTTPServer(config.intake.http, IntakePipeline(config, engine), token)
    server.start()   # curl -H 'Content-Type: application/json' --data-binary @records.json URL/v1/samples
    server.stop()

Bound to 127.0.0.1 by default; a bearer token is required whenever one is configured, and a
non-loopback bind without one is refused (`ExposedWithoutToken`). Every record in a request is
either stored, recognised as a duplicate or sampled out, or quarantined with its reason; the reply
says which.

Memory stays bounded whatever the body: it is spooled to a temporary file as it arrives (at most
`max_body_bytes`), split into records by a scanner that never holds more than one record's bytes,
counted (over `max_records_per_request`: 413, nothing stored), and stored in transactions of
`records_per_commit` records by one of `ingest_threads` worker threads. At most
`max_concurrent_requests` requests are received or stored at once (more: 429 with Retry-After), and a
client must send its whole request within `request_timeout_s` (else 408, connection closed).

Failures: a full disk answers 507 and tells the daemon, which pauses file intake and alerts; data the
database refuses for good answers 422 (a retry would fail the same way); only a database that does not
answer gets 503 with Retry-After. Records committed before a failure stay stored: a retry of the same
request finds them as duplicates.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from itertools import islice
from typing import IO, Any

import anyio
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from monitor.base.config import HttpIntakeConfig, Secret
from monitor.base.failures import (
    describe,
    is_database_unreachable,
    is_disk_full,
    is_permanent_database_error,
    permanent_reason,
)
from monitor.base.serving import ThreadedServer
from monitor.intake.pipeline import IngestReport, IntakePipeline, RawRecord

log = logging.getLogger(__name__)

SAMPLES_PATH = "/v1/samples"
SOURCE = "http"
JSON, NDJSON = "application/json", "application/x-ndjson"
DISK_FULL_RETRY_AFTER_S = 60
RETRY_AFTER_S = 5
MAX_PROBLEMS_LISTED = 1000  # the reply lists this many problems; the rest are counted
SPOOL_IN_MEMORY_BYTES = 256 * 1024  # a body larger than this waits in a temporary file
READ_BLOCK_BYTES = 256 * 1024
# From a position in a JSON text: every byte up to the next bracket, brace or comma outside a string.
# A string cut off by the end of the buffer stops it at its opening quote.
SKIP_TO_STRUCTURE = re.compile(rb'(?:[^"\[\]{},]++|"(?:[^"\\]++|\\.)*+")*+', re.DOTALL)
OPENERS, CLOSERS = frozenset(b"[{"), frozenset(b"]}")
COMMA, QUOTE = ord(","), ord('"')


class ExposedWithoutToken(Exception):
    """A non-loopback bind without a bearer token: refused, the message says what to set."""


# -- the body -> records ----------------------------------------------------------------------------


def array_items(body: IO[bytes], head: bytes) -> Iterator[bytes]:
    """The bytes of each item of the JSON array that `head` (the body's first bytes, from its opening
    bracket on) and the rest of `body` hold. Only strings, brackets, braces and commas are looked at,
    so a malformed item is still one item (the pipeline quarantines it); what follows the closing
    bracket, and an unclosed last item, come out as one item each."""
    buffer, start, position, depth = head, 1, 1, 1
    while True:
        position = SKIP_TO_STRUCTURE.match(buffer, position).end()  # type: ignore[union-attr]
        if position == len(buffer) or buffer[position] == QUOTE:
            block = body.read(READ_BLOCK_BYTES)
            if not block:
                break
            buffer, position, start = buffer[start:] + block, position - start, 0
            continue
        byte = buffer[position]
        if byte in OPENERS:
            depth += 1
        elif byte in CLOSERS:
            depth -= 1
        if depth == 0 or (byte == COMMA and depth == 1):
            if buffer[start:position].strip():
                yield buffer[start:position].strip()
            start = position + 1
            if depth == 0:
                break
        position += 1
    rest = buffer[start:] + body.read()
    if rest.strip():
        yield rest.strip()


def single_value(body: IO[bytes], limit: int) -> bytes | None:
    """The whole body when it is one JSON value of at most `limit` bytes, else None (body rewound)."""
    data = body.read(limit + 1)
    body.seek(0)
    if len(data) > limit:
        return None
    try:
        json.loads(data)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
    return data


def body_lines(body: IO[bytes], request_id: str) -> Iterator[RawRecord]:
    for number, line in enumerate(body, start=1):
        if line.strip():
            yield RawRecord(position=f"request {request_id} line {number}", data=line.rstrip(b"\r\n"))


def read_records(body: IO[bytes], media_type: str, request_id: str, max_record_bytes: int) -> Iterator[RawRecord]:
    """A request body -> raw records. NDJSON: one record a line. JSON: the items of an array, else one
    value; a JSON body that is neither (NDJSON sent as JSON) is read as lines, as it always was."""
    body.seek(0)
    if media_type == NDJSON:
        yield from body_lines(body, request_id)
        return
    head = body.read(READ_BLOCK_BYTES).lstrip()
    if head.startswith(b"["):
        for index, item in enumerate(array_items(body, head)):
            yield RawRecord(position=f"request {request_id} item {index}", data=item)
        return
    body.seek(0)
    value = single_value(body, max_record_bytes)
    if value is not None:
        yield RawRecord(position=f"request {request_id} item 0", data=value)
    else:
        yield from body_lines(body, request_id)


def chunks(records: Iterator[RawRecord], size: int) -> Iterator[list[RawRecord]]:
    while chunk := list(islice(records, size)):
        yield chunk


# -- storing ----------------------------------------------------------------------------------------


@dataclass
class Tally:
    """What became of a request's records so far, with at most MAX_PROBLEMS_LISTED problems listed."""

    report: IngestReport = field(default_factory=IngestReport)
    problems_omitted: int = 0

    def add(self, chunk: IngestReport) -> None:
        self.report.add(chunk)
        extra = len(self.report.problems) - MAX_PROBLEMS_LISTED
        if extra > 0:
            del self.report.problems[MAX_PROBLEMS_LISTED:]
            self.problems_omitted += extra

    def body(self) -> dict[str, Any]:
        report = self.report
        return {
            "records": report.records,
            "stored": report.stored,
            "duplicates": report.duplicates,
            "sampled_out": report.sampled_out,
            "quarantined": report.quarantined,
            "live": report.live,
            "live_refused": report.live_refused,
            "problems": [{"position": position, "reason": reason} for position, reason in report.problems],
            "problems_omitted": self.problems_omitted,
        }


class TooManyRecords(Exception):
    def __init__(self, records: int) -> None:
        self.records = records


class Stopping(Exception):
    """The server is stopping: the request's remaining records are not stored."""


@dataclass
class Upload:
    """One POST's body, spooled, and how to read it."""

    request_id: str
    media_type: str
    body: IO[bytes]


class Intake:
    """Stores an upload's records in chunks; runs in a worker thread."""

    def __init__(self, config: HttpIntakeConfig, pipeline: IntakePipeline) -> None:
        self.config = config
        self.pipeline = pipeline
        self.stopping = threading.Event()

    def records(self, upload: Upload) -> Iterator[RawRecord]:
        max_record_bytes = self.pipeline.intake.max_record_bytes
        return read_records(upload.body, upload.media_type, upload.request_id, max_record_bytes)

    def store(self, upload: Upload, tally: Tally) -> None:
        """Counts the records (TooManyRecords: nothing stored), then stores them chunk by chunk."""
        count = sum(1 for _ in self.records(upload))
        if count > self.config.max_records_per_request:
            raise TooManyRecords(count)
        for chunk in chunks(self.records(upload), self.config.records_per_commit):
            if self.stopping.is_set():
                raise Stopping
            tally.add(self.pipeline.ingest(SOURCE, chunk))


# -- HTTP -------------------------------------------------------------------------------------------


def reply(status: HTTPStatus, body: dict[str, Any], retry_after: int | None = None, close: bool = False) -> Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    if close:
        headers["Connection"] = "close"
    return JSONResponse(body, status_code=status, headers=headers)


def media_type_problem(header: str | None) -> str | None:
    """Why a Content-Type is refused (415), or None: JSON or NDJSON, in UTF-8."""
    media_type, *parameters = (part.strip().lower() for part in (header or "").split(";"))
    if media_type not in (JSON, NDJSON):
        return f"Content-Type must be {JSON} or {NDJSON}"
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip() == "charset" and value.strip().strip('"') not in ("utf-8", "utf8"):
            return "bodies are read as UTF-8: charset must be utf-8"
    return None


class IntakeApp:
    """The ASGI application: checks a request, spools its body, hands it to `Intake` in a worker thread."""

    def __init__(
        self,
        config: HttpIntakeConfig,
        intake: Intake,
        token: Secret | None,
        on_disk_full: Callable[[str], object],
        on_stored: Callable[[], object],
    ) -> None:
        self.config = config
        self.intake = intake
        self.token = token
        self.on_disk_full, self.on_stored = on_disk_full, on_stored
        self.in_flight = 0  # touched only on the server's event loop
        self.workers: anyio.CapacityLimiter | None = None  # made on the loop, at the first request
        self.app = Starlette(
            routes=[
                Route(SAMPLES_PATH, self.samples, methods=["POST"]),
                Route("/healthz", self.healthz, methods=["GET"]),
            ],
            exception_handlers={404: self.not_found, 405: self.not_found},
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)

    async def not_found(self, request: Request, error: Exception) -> Response:
        status = HTTPStatus(getattr(error, "status_code", HTTPStatus.NOT_FOUND))
        return reply(status, {"error": f"no such endpoint; POST {SAMPLES_PATH}"})

    async def healthz(self, request: Request) -> Response:
        return reply(HTTPStatus.OK, {"status": "ok"})

    async def samples(self, request: Request) -> Response:
        refusal = self.refusal(request)
        if refusal is not None:
            return refusal
        if self.in_flight >= self.config.max_concurrent_requests:
            limit = self.config.max_concurrent_requests
            body = {"error": f"{limit} requests are being handled (intake.http.max_concurrent_requests); retry"}
            return reply(HTTPStatus.TOO_MANY_REQUESTS, body, retry_after=RETRY_AFTER_S)
        self.in_flight += 1
        try:
            return await self.receive_and_store(request)
        finally:
            self.in_flight -= 1

    def refusal(self, request: Request) -> Response | None:
        """401, 415, 411 or 413 (by Content-Length), before any of the body is read."""
        if not self.authorised(request.headers.get("authorization", "")):
            return reply(HTTPStatus.UNAUTHORIZED, {"error": "missing or wrong bearer token"})
        problem = media_type_problem(request.headers.get("content-type"))
        if problem is not None:
            return reply(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, {"error": problem})
        length = request.headers.get("content-length")
        if length is None and "chunked" not in request.headers.get("transfer-encoding", "").lower():
            return reply(HTTPStatus.LENGTH_REQUIRED, {"error": "Content-Length required"})
        if length is not None and not (length.isascii() and length.isdigit()):  # the HTTP parser refuses it first
            return reply(HTTPStatus.BAD_REQUEST, {"error": "Content-Length must be a number of bytes"}, close=True)
        if length is not None and int(length) > self.config.max_body_bytes:
            return self.too_large(f"body is {int(length)} bytes, over")
        return None

    def authorised(self, header: str) -> bool:
        if self.token is None:
            return True
        scheme, _, presented = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            presented.strip().encode(), self.token.reveal().encode()
        )

    def too_large(self, what: str) -> Response:
        limit = self.config.max_body_bytes
        body = {"error": f"{what} the {limit}-byte limit (intake.http.max_body_bytes)", "limit": limit}
        return reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, body, close=True)

    async def receive_and_store(self, request: Request) -> Response:
        media_type = request.headers["content-type"].split(";")[0].strip().lower()
        with tempfile.SpooledTemporaryFile(SPOOL_IN_MEMORY_BYTES) as spool:
            upload = Upload(uuid.uuid4().hex[:12], media_type, spool)
            try:
                if not await self.spool(request, spool):
                    return self.too_large("body is over")
            except ClientDisconnect:
                log.info("intake request %s: the client went away before sending its whole body", upload.request_id)
                return Response(status_code=HTTPStatus.BAD_REQUEST)  # nobody reads it
            return await self.store(upload)

    async def spool(self, request: Request, spool: IO[bytes]) -> bool:
        """The body into `spool`; False as soon as it passes max_body_bytes."""
        size = 0
        async for block in request.stream():
            size += len(block)
            if size > self.config.max_body_bytes:
                return False
            spool.write(block)
        return True

    async def store(self, upload: Upload) -> Response:
        if self.workers is None:
            self.workers = anyio.CapacityLimiter(self.config.ingest_threads)
        tally = Tally()
        try:
            await anyio.to_thread.run_sync(self.intake.store, upload, tally, limiter=self.workers)
        except TooManyRecords as refused:
            return self.too_many_records(refused.records)
        except Stopping:
            body = {"error": "intake is stopping; retry", "request": upload.request_id, **tally.body()}
            return reply(HTTPStatus.SERVICE_UNAVAILABLE, body, retry_after=RETRY_AFTER_S)
        except Exception as error:
            return self.failed(upload.request_id, tally, error)
        self.on_stored()
        return reply(HTTPStatus.OK, {"request": upload.request_id, **tally.body()})

    def too_many_records(self, records: int) -> Response:
        limit = self.config.max_records_per_request
        body = {
            "error": f"{records} records, over the limit of {limit} a request "
            "(intake.http.max_records_per_request): nothing stored; split the request",
            "records": records,
            "limit": limit,
        }
        return reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, body)

    def failed(self, request_id: str, tally: Tally, error: Exception) -> Response:
        """507 for a full disk, 422 for data the database refuses for good, 503 for a database that does
        not answer, 500 for anything else (a bug: logged with its traceback)."""
        stored = {"request": request_id, **tally.body()}
        if is_disk_full(error):
            problem = f"no space left on the database's disk ({describe(error)})"
            log.error("intake request %s: %s", request_id, problem)
            self.on_disk_full(problem)
            body = {"error": "no space left to store samples: intake is paused; retry later", **stored}
            return reply(HTTPStatus.INSUFFICIENT_STORAGE, body, retry_after=DISK_FULL_RETRY_AFTER_S)
        if is_permanent_database_error(error):
            reason = permanent_reason(error)
            log.error("intake request %s: %s", request_id, reason)
            body = {"error": f"{reason}; retrying the same records will not help", **stored}
            return reply(HTTPStatus.UNPROCESSABLE_ENTITY, body)
        if is_database_unreachable(error):
            log.error("intake request %s not stored: database unavailable (%s)", request_id, type(error).__name__)
            return reply(
                HTTPStatus.SERVICE_UNAVAILABLE, {"error": "database unavailable; retry", **stored}, RETRY_AFTER_S
            )
        log.error("intake request %s failed", request_id, exc_info=error)
        return reply(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error; see the server's log", **stored})


class IntakeHTTPServer:
    """POST /v1/samples (and GET /healthz) on config.host:config.port, from a thread of its own."""

    def __init__(
        self,
        config: HttpIntakeConfig,
        pipeline: IntakePipeline,
        token: Secret | None,
        on_disk_full: Callable[[str], object] = lambda problem: None,
        on_stored: Callable[[], object] = lambda: None,
    ) -> None:
        """`on_disk_full(problem)` is told when a request could not be stored for lack of space,
        `on_stored()` after every request that was; the daemon pauses and resumes intake with them.
        Raises ExposedWithoutToken for a non-loopback bind without a token, OSError when the address
        cannot be bound."""
        if not config.is_loopback and token is None:
            raise ExposedWithoutToken(
                f"refusing to serve intake on {config.host} (not loopback) without a bearer token: "
                f"set {config.token.describe()} (intake.http.token), or bind intake.http.host to 127.0.0.1"
            )
        self.config = config
        self.intake = Intake(config, pipeline)
        app = IntakeApp(config, self.intake, token, on_disk_full, on_stored)
        self.server = ThreadedServer(
            app, config.host, config.port, name="intake-http", request_timeout_s=config.request_timeout_s
        )

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> None:
        self.server.start()
        log.info("intake listening on %s%s", self.url, SAMPLES_PATH)

    def stop(self) -> None:
        """Stops taking requests; a request being stored stops after its current chunk (503)."""
        self.intake.stopping.set()
        self.server.stop()
