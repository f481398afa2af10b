"""HTTP intake over real HTTP on 127.0.0.1 (uvicorn in a thread), on SQLite and PostgreSQL: formats,
token, content types, limits (body, records, concurrency, slow clients), database failures told apart
(507 full disk, 422 refused data, 503 unreachable), and `intake serve` refusing an exposed bind."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select, text
from sqlalchemy.orm import Session

from monitor.base.config import Config, HttpIntakeConfig, Secret
from monitor.base.db import QuarantinedRecord, Sample
from monitor.intake.http import ExposedWithoutToken, IntakeHTTPServer
from monitor.intake.pipeline import IntakePipeline
from tests.monitor.intake.traffic import line, record

TOKEN = Secret("ingest-token-123")
JSON, NDJSON = "application/json", "application/x-ndjson"


def serve(config: Config, engine: Engine, token: Secret | None = TOKEN, **settings: Any) -> IntakeHTTPServer:
    http = HttpIntakeConfig(port=0, **{"max_body_bytes": 64 * 1024, **settings})
    intake = IntakeHTTPServer(http, IntakePipeline(config, engine, Secret("salt")), token)
    intake.start()
    return intake


@pytest.fixture
def server(config: Config, engine: Engine) -> Iterator[IntakeHTTPServer]:
    intake = serve(config, engine)
    yield intake
    intake.stop()


def post(
    server: IntakeHTTPServer,
    body: bytes,
    token: str | None = TOKEN.reveal(),
    content_type: str | None = JSON,
) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(f"{server.url}/v1/samples", data=body, method="POST")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    if content_type is not None:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def raw_exchange(server: IntakeHTTPServer, request: bytes, timeout: float = 10.0) -> bytes:
    """Sends bytes as they are and reads until the server closes the connection."""
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as connection:
        connection.sendall(request)
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
        return received


def count(engine: Engine, table: type) -> int:
    with Session(engine) as session:
        return session.scalar(select(func.count()).select_from(table)) or 0


def test_object_array_and_ndjson(server: IntakeHTTPServer, engine: Engine) -> None:
    status, body = post(server, json.dumps(record(1)).encode())
    assert (status, body["stored"]) == (200, 1)
    two = json.dumps([record(2), record(3, "zh")]).encode()
    status, body = post(server, two, content_type=f"{JSON}; charset=utf-8")
    assert (status, body["stored"]) == (200, 2)
    status, body = post(server, line(4) + line(5, "code") + b"{broken\n" + line(1), content_type=NDJSON)
    assert status == 200
    assert (body["records"], body["stored"], body["duplicates"], body["quarantined"]) == (4, 2, 1, 1)
    assert body["problems"][0]["position"].endswith("line 3")
    assert count(engine, Sample) == 5 and count(engine, QuarantinedRecord) == 1


def test_ndjson_sent_as_json_is_still_read_line_by_line(server: IntakeHTTPServer, engine: Engine) -> None:
    status, body = post(server, line(1) + b"{broken\n" + line(2))
    assert (status, body["stored"], body["quarantined"]) == (200, 2, 1)


def test_bad_items_in_an_array_are_quarantined(server: IntakeHTTPServer, engine: Engine) -> None:
    status, body = post(server, json.dumps([record(1), {"completion": ""}, "nonsense"]).encode())
    assert status == 200
    assert (body["stored"], body["quarantined"]) == (1, 2)
    assert [p["position"].split()[-1] for p in body["problems"]] == ["1", "2"]


def test_a_malformed_item_does_not_stop_the_items_after_it(server: IntakeHTTPServer, engine: Engine) -> None:
    items = [json.dumps(record(1)), '{"id": "x", "completion": }', json.dumps(record(2)), "1" + "0" * 5000]
    status, body = post(server, ("[" + ", ".join(items) + "]").encode())
    assert (status, body["records"], body["stored"], body["quarantined"]) == (200, 4, 2, 2)
    assert count(engine, Sample) == 2


def test_token_is_required(server: IntakeHTTPServer, engine: Engine) -> None:
    assert post(server, json.dumps(record(1)).encode(), token=None)[0] == 401
    assert post(server, json.dumps(record(1)).encode(), token="wrong")[0] == 401
    assert count(engine, Sample) == 0


def test_only_json_and_ndjson_are_accepted(server: IntakeHTTPServer, engine: Engine) -> None:
    body = json.dumps(record(1)).encode()
    for content_type in ("text/plain", None, "application/x-www-form-urlencoded", f"{JSON}; charset=latin-1"):
        status, reply = post(server, body, content_type=content_type)
        assert status == 415, content_type
        assert JSON in reply["error"] or "utf-8" in reply["error"]
    assert count(engine, Sample) == 0
    assert post(server, body, content_type="Application/JSON; charset=UTF-8")[0] == 200


def test_body_over_limit_is_refused(server: IntakeHTTPServer) -> None:
    status, body = post(server, b"[" + b" " * 70_000 + b"]")
    assert status == 413 and "limit" in body["error"] and body["limit"] == 64 * 1024


def test_chunked_body_over_limit_is_refused(server: IntakeHTTPServer) -> None:
    blocks = [b"[" + b" " * 40_000, b" " * 40_000 + b"]"]
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(block), block) for block in blocks) + b"0\r\n\r\n"
    head = (
        b"POST /v1/samples HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + TOKEN.reveal().encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    assert raw_exchange(server, head + chunked).startswith(b"HTTP/1.1 413")


def test_too_many_records_is_413_with_the_limit_and_stores_nothing(config: Config, engine: Engine) -> None:
    intake = serve(config, engine, max_records_per_request=3)
    try:
        status, body = post(intake, json.dumps([record(i) for i in range(4)]).encode())
        assert (status, body["limit"], body["records"]) == (413, 3, 4)
        assert "3" in body["error"] and count(engine, Sample) == 0
        status, body = post(intake, b"".join(line(i) for i in range(4)), content_type=NDJSON)
        assert (status, body["limit"]) == (413, 3)
        assert post(intake, json.dumps([record(i) for i in range(3)]).encode())[0] == 200
    finally:
        intake.stop()
    assert count(engine, Sample) == 3


def test_records_are_committed_in_chunks_and_problems_are_capped(config: Config, engine: Engine) -> None:
    intake = serve(config, engine, max_body_bytes=4 * 1024 * 1024, records_per_commit=250)
    try:
        good = [record(i) for i in range(700)]
        bad = [{"completion": ""}] * 1100
        status, body = post(intake, json.dumps(good + bad).encode())
    finally:
        intake.stop()
    assert (status, body["records"], body["stored"], body["quarantined"]) == (200, 1800, 700, 1100)
    assert (len(body["problems"]), body["problems_omitted"]) == (1000, 100)
    assert count(engine, Sample) == 700


def test_unknown_path(server: IntakeHTTPServer) -> None:
    request = urllib.request.Request(f"{server.url}/v2/other", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=5)
    assert caught.value.code == 404


@pytest.mark.parametrize("length", [b"1\xc2\xb2", b"\xd9\xa1\xd9\xa2", b"12abc", b"-1"])
def test_bad_content_length_is_a_clean_400_and_the_server_goes_on(
    server: IntakeHTTPServer, engine: Engine, length: bytes
) -> None:
    request = b"POST /v1/samples HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
    assert raw_exchange(server, request + length + b"\r\n\r\n{}").startswith(b"HTTP/1.1 400")
    assert post(server, json.dumps(record(1)).encode())[0] == 200


@pytest.mark.parametrize("sent", [b"POST /v1/samples HTTP/1.1\r\nHost: x\r\n", b"", b"BODY"])
def test_a_slow_client_is_cut_off_after_the_request_timeout(config: Config, engine: Engine, sent: bytes) -> None:
    """Headers never finished, nothing sent at all, or a body that stops short of its Content-Length."""
    intake = serve(config, engine, token=None, request_timeout_s=1.0)
    if sent == b"BODY":
        sent = b"POST /v1/samples HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        sent += b"Content-Length: 100\r\n\r\n[{"
    try:
        started = time.monotonic()
        received = raw_exchange(intake, sent, timeout=10)
        waited = time.monotonic() - started
        assert 0.9 < waited < 5, waited
        if not sent.endswith(b"[{"):
            assert received.startswith(b"HTTP/1.1 408")
        assert post(intake, json.dumps(record(1)).encode(), token=None)[0] == 200
    finally:
        intake.stop()
    assert count(engine, Sample) == 1


def test_requests_over_the_concurrency_cap_get_429(config: Config, engine: Engine) -> None:
    intake = serve(config, engine, token=None, max_concurrent_requests=1)
    host, port = intake.url.removeprefix("http://").rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=10) as held:
            held.sendall(
                b"POST /v1/samples HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000\r\n\r\n["
            )
            time.sleep(0.3)  # its body is being received: it holds the only slot
            status, body = post(intake, json.dumps(record(1)).encode(), token=None)
            assert status == 429 and "max_concurrent_requests" in body["error"]
        time.sleep(0.3)
        assert post(intake, json.dumps(record(1)).encode(), token=None)[0] == 200
    finally:
        intake.stop()


def test_retry_after_on_the_concurrency_cap(config: Config, engine: Engine) -> None:
    intake = serve(config, engine, token=None, max_concurrent_requests=1)
    host, port = intake.url.removeprefix("http://").rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=10) as held:
            held.sendall(b"POST /v1/samples HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
            held.sendall(b"Content-Length: 10\r\n\r\n[")
            time.sleep(0.3)
            request = urllib.request.Request(
                f"{intake.url}/v1/samples", data=b"{}", method="POST", headers={"Content-Type": JSON}
            )
            with pytest.raises(urllib.error.HTTPError) as caught:
                urllib.request.urlopen(request, timeout=10)
            assert caught.value.code == 429 and caught.value.headers["Retry-After"]
    finally:
        intake.stop()


def test_database_down_answers_503_and_stores_nothing(config: Config, tmp_path: Any) -> None:
    from monitor.base.db import create_db_engine

    missing = create_db_engine(f"sqlite:///{tmp_path / 'never-migrated.db'}")
    intake = serve(config, missing, token=None)
    try:
        status, body = post(intake, json.dumps(record(1)).encode(), token=None)
    finally:
        intake.stop()
    assert status == 503 and "retry" in body["error"] and body["stored"] == 0


def refuse_counter_writes(engine: Engine) -> None:
    """A trigger that makes the database refuse every intake counter write for good, as a value it
    cannot store would: IntegrityError on SQLite, DataError (SQLSTATE 22001) on PostgreSQL."""
    with engine.begin() as connection:
        if engine.dialect.name == "sqlite":
            for action in ("INSERT", "UPDATE"):
                connection.execute(
                    text(
                        f"CREATE TRIGGER refuse_{action.lower()} BEFORE {action} ON intake_counters "
                        "BEGIN SELECT RAISE(ABORT, 'refused'); END"
                    )
                )
            return
        connection.execute(
            text(
                "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN "
                "RAISE EXCEPTION 'value too long' USING ERRCODE = '22001'; END $$ LANGUAGE plpgsql"
            )
        )
        trigger = "CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON intake_counters FOR EACH ROW"
        connection.execute(text(f"{trigger} EXECUTE FUNCTION refuse()"))


def test_data_the_database_refuses_for_good_is_422_not_503(config: Config, engine: Engine) -> None:
    refuse_counter_writes(engine)
    intake = serve(config, engine, token=None)
    try:
        secret_value = "do-not-echo-this-value"
        status, body = post(intake, json.dumps([record(1, tenant=secret_value)]).encode(), token=None)
    finally:
        intake.stop()
    assert status == 422, body
    assert "will not help" in body["error"] and "retry;" not in body["error"]
    assert secret_value not in json.dumps(body) and "refused" in body["error"]


class PageLimit:
    """SQLite's max_page_count on every new connection: a real 'database or disk is full' once the file
    reaches `pages` (None: no limit), as on a data dir whose disk filled up."""

    def __init__(self, engine: Engine) -> None:
        self.pages: int | None = None
        event.listen(engine, "connect", self.apply)

    def apply(self, dbapi_connection: Any, _record: Any) -> None:
        if self.pages is not None:
            dbapi_connection.execute(f"PRAGMA max_page_count = {self.pages}")


def test_full_disk_answers_507_stores_nothing_then_resumes(config: Config, tmp_path: Any) -> None:
    from monitor.base.db import create_db_engine, upgrade

    engine = create_db_engine(f"sqlite:///{tmp_path / 'small.db'}")
    upgrade(engine)
    limit = PageLimit(engine)
    with engine.connect() as connection:
        limit.pages = int(connection.exec_driver_sql("PRAGMA page_count").scalar_one()) + 1
    engine.dispose()
    told: list[str] = []
    intake = IntakeHTTPServer(
        HttpIntakeConfig(port=0, max_body_bytes=4 * 1024 * 1024),
        IntakePipeline(config, engine, Secret("salt")),
        None,
        on_disk_full=told.append,
        on_stored=lambda: told.append("stored"),
    )
    intake.start()
    try:
        big = [{**record(i), "completion": f"answer {i} " + "x" * 4000} for i in range(40)]
        status, body = post(intake, json.dumps(big).encode(), token=None)
        assert status == 507 and "intake is paused" in body["error"] and body["stored"] == 0
        assert len(told) == 1 and "no space left" in told[0]
        assert count(engine, Sample) == 0
        limit.pages = None
        engine.dispose()  # new connections, without the limit: space is back
        status, body = post(intake, json.dumps(big).encode(), token=None)
    finally:
        intake.stop()
    assert (status, body["stored"], told[-1]) == (200, 40, "stored")
    assert count(engine, Sample) == 40


def test_default_bind_is_loopback() -> None:
    assert HttpIntakeConfig().host == "127.0.0.1"


def test_refuses_exposed_bind_without_token(config: Config, engine: Engine) -> None:
    exposed = HttpIntakeConfig().model_copy(update={"host": "0.0.0.0", "port": 0})
    with pytest.raises(ExposedWithoutToken, match="without a bearer token"):
        IntakeHTTPServer(exposed, IntakePipeline(config, engine, Secret("salt")), None)


def test_intake_serve_refuses_an_exposed_bind_without_token_with_exit_2(tmp_path: Path, database_url: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[storage]\ndata_dir = "{tmp_path / "data"}"\ndatabase_url = "{database_url}"\n'
        '[intake.http]\nhost = "0.0.0.0"\nport = 0\n'
    )
    environment = {name: value for name, value in os.environ.items() if name != "SPECWATCH_INGEST_TOKEN"}
    done = subprocess.run(
        [sys.executable, "-m", "monitor", "intake", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**environment, "SPECWATCH_HASH_SALT": "serve-test"},
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "0.0.0.0" in done.stderr and "SPECWATCH_INGEST_TOKEN" in done.stderr


def test_engine_payloads_posted_over_http_are_stored_or_refused_with_the_sample_kept(
    server: IntakeHTTPServer, engine: Engine
) -> None:
    from monitor.base.db import LiveResult
    from tests.monitor.intake.test_live_intake import with_engine_counts

    broken = with_engine_counts(2)
    broken["engine_acceptance"]["acceptance_histogram"] = [1, 1]  # does not sum to the steps
    status, body = post(server, json.dumps([with_engine_counts(1), broken]).encode())
    assert status == 200
    assert (body["stored"], body["quarantined"], body["live"], body["live_refused"]) == (2, 0, 1, 1)
    assert body["problems"][0]["position"].endswith("(engine_acceptance)")
    assert count(engine, LiveResult) == 1 and count(engine, Sample) == 2
