"""HTTP intake: `POST /v1/samples` with a JSON object, a JSON array or NDJSON.

Bound to 127.0.0.1 by default; a bearer token is required whenever one is configured, and
configuration refuses a non-loopback bind without one. Every record in a request is either
stored, recognised as a duplicate or sampled out, or quarantined with its reason; the reply
says which. A database failure answers 503 and stores nothing, so the client can retry; a full
disk answers 507 (Insufficient Storage) and tells the daemon, which pauses file intake and alerts.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import uuid
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from monitor.config import HttpIntakeConfig, Secret
from monitor.failures import describe, is_disk_full
from monitor.intake.pipeline import IngestReport, IntakePipeline, RawRecord

log = logging.getLogger(__name__)

SAMPLES_PATH = "/v1/samples"
SOURCE = "http"
DISK_FULL_RETRY_AFTER_S = 60


def split_body(body: bytes, request_id: str) -> list[RawRecord]:
    """A request body -> raw records: one JSON value (object or array), else NDJSON lines."""
    try:
        value = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return [
            RawRecord(position=f"request {request_id} line {number}", data=line)
            for number, line in enumerate(body.splitlines(), start=1)
            if line.strip()
        ]
    items = value if isinstance(value, list) else [value]
    return [RawRecord(position=f"request {request_id} item {index}", value=item) for index, item in enumerate(items)]


def report_body(report: IngestReport) -> dict[str, Any]:
    return {
        "records": report.records,
        "stored": report.stored,
        "duplicates": report.duplicates,
        "sampled_out": report.sampled_out,
        "quarantined": report.quarantined,
        "problems": [{"position": position, "reason": reason} for position, reason in report.problems],
    }


class IntakeHandler(BaseHTTPRequestHandler):
    server: IntakeHTTPServer
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] != SAMPLES_PATH:
            self._reply(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint; POST {SAMPLES_PATH}"})
            return
        if not self._authorised():
            self._reply(HTTPStatus.UNAUTHORIZED, {"error": "missing or wrong bearer token"})
            return
        body = self._read_body()
        if body is None:
            return
        request_id = uuid.uuid4().hex[:12]
        try:
            report = self.server.pipeline.ingest(SOURCE, split_body(body, request_id))
        except SQLAlchemyError as exc:
            if is_disk_full(exc):
                self._disk_full(request_id, exc)
                return
            log.error("intake request %s not stored: database error %s", request_id, type(exc).__name__)
            self._reply(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "database unavailable; retry"}, retry_after=5)
            return
        self.server.on_stored()
        self._reply(HTTPStatus.OK, {"request": request_id, **report_body(report)})

    def _disk_full(self, request_id: str, error: SQLAlchemyError) -> None:
        problem = f"no space left on the database's disk ({describe(error)})"
        log.error("intake request %s not stored: %s", request_id, problem)
        self.server.on_disk_full(problem)
        body = {"error": "no space left to store samples: intake is paused; retry later", "stored": 0}
        self._reply(HTTPStatus.INSUFFICIENT_STORAGE, body, retry_after=DISK_FULL_RETRY_AFTER_S)

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._reply(HTTPStatus.OK, {"status": "ok"})
        else:
            self._reply(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint; POST {SAMPLES_PATH}"})

    def _authorised(self) -> bool:
        token = self.server.token
        if token is None:
            return True
        header = self.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), token.reveal().encode())

    def _read_body(self) -> bytes | None:
        length_header = self.headers.get("Content-Length")
        if length_header is None or not length_header.isdigit():
            self._reply(HTTPStatus.LENGTH_REQUIRED, {"error": "Content-Length required"})
            return None
        length = int(length_header)
        if length > self.server.config.max_body_bytes:
            self.close_connection = True
            self._reply(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                {"error": f"body is {length} bytes, over the {self.server.config.max_body_bytes}-byte limit"},
            )
            return None
        return self.rfile.read(length)

    def _reply(self, status: HTTPStatus, body: dict[str, Any], retry_after: int | None = None) -> None:
        payload = json.dumps(body, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        if retry_after is not None:
            self.send_header("Retry-After", str(retry_after))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % tuple(str(arg) for arg in args))


class IntakeHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        config: HttpIntakeConfig,
        pipeline: IntakePipeline,
        token: Secret | None,
        on_disk_full: Callable[[str], object] = lambda problem: None,
        on_stored: Callable[[], object] = lambda: None,
    ) -> None:
        """`on_disk_full(problem)` is told when a request could not be stored for lack of space,
        `on_stored()` after every request that was; the daemon pauses and resumes intake with them."""
        if not config.is_loopback and token is None:
            raise ValueError(f"refusing to serve intake on {config.host} without a bearer token")
        self.config = config
        self.pipeline = pipeline
        self.token = token
        self.on_disk_full, self.on_stored = on_disk_full, on_stored
        super().__init__((config.host, config.port), IntakeHandler)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name="intake-http", daemon=True)
        self._thread.start()
        log.info("intake listening on %s%s", self.url, SAMPLES_PATH)

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread:
            self._thread.join(timeout=5)
