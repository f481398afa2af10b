import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select
from sqlalchemy.orm import Session

from monitor.config import Config, HttpIntakeConfig, Secret
from monitor.db import QuarantinedRecord, Sample
from monitor.intake.http import IntakeHTTPServer
from monitor.intake.pipeline import IntakePipeline
from tests.monitor.intake.traffic import line, record

TOKEN = Secret("ingest-token-123")


@pytest.fixture
def server(config: Config, engine: Engine) -> Iterator[IntakeHTTPServer]:
    http = HttpIntakeConfig(port=0, max_body_bytes=64 * 1024)
    intake = IntakeHTTPServer(http, IntakePipeline(config, engine, Secret("salt")), TOKEN)
    intake.start()
    yield intake
    intake.stop()


def post(server: IntakeHTTPServer, body: bytes, token: str | None = TOKEN.reveal()) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(f"{server.url}/v1/samples", data=body, method="POST")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def count(engine: Engine, table: type) -> int:
    with Session(engine) as session:
        return session.scalar(select(func.count()).select_from(table)) or 0


def test_object_array_and_ndjson(server: IntakeHTTPServer, engine: Engine) -> None:
    status, body = post(server, json.dumps(record(1)).encode())
    assert (status, body["stored"]) == (200, 1)
    status, body = post(server, json.dumps([record(2), record(3, "zh")]).encode())
    assert (status, body["stored"]) == (200, 2)
    status, body = post(server, line(4) + line(5, "code") + b"{broken\n" + line(1))
    assert status == 200
    assert (body["records"], body["stored"], body["duplicates"], body["quarantined"]) == (4, 2, 1, 1)
    assert body["problems"][0]["position"].endswith("line 3")
    assert count(engine, Sample) == 5 and count(engine, QuarantinedRecord) == 1


def test_bad_items_in_an_array_are_quarantined(server: IntakeHTTPServer, engine: Engine) -> None:
    status, body = post(server, json.dumps([record(1), {"completion": ""}, "nonsense"]).encode())
    assert status == 200
    assert (body["stored"], body["quarantined"]) == (1, 2)
    assert [p["position"].split()[-1] for p in body["problems"]] == ["1", "2"]


def test_token_is_required(server: IntakeHTTPServer, engine: Engine) -> None:
    assert post(server, json.dumps(record(1)).encode(), token=None)[0] == 401
    assert post(server, json.dumps(record(1)).encode(), token="wrong")[0] == 401
    assert count(engine, Sample) == 0


def test_body_over_limit_is_refused(server: IntakeHTTPServer) -> None:
    status, body = post(server, b"[" + b" " * 70_000 + b"]")
    assert status == 413 and "limit" in body["error"]


def test_unknown_path(server: IntakeHTTPServer) -> None:
    request = urllib.request.Request(f"{server.url}/v2/other", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=5)
    assert caught.value.code == 404


def test_database_down_answers_503_and_stores_nothing(config: Config, tmp_path: Any) -> None:
    from monitor.db import create_db_engine

    missing = create_db_engine(f"sqlite:///{tmp_path / 'never-migrated.db'}")
    http = HttpIntakeConfig(port=0)
    intake = IntakeHTTPServer(http, IntakePipeline(config, missing, Secret("salt")), None)
    intake.start()
    try:
        status, body = post(intake, json.dumps(record(1)).encode(), token=None)
    finally:
        intake.stop()
    assert status == 503 and "retry" in body["error"]


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
    from monitor.db import create_db_engine, upgrade

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
    exposed = HttpIntakeConfig.model_construct(**{**HttpIntakeConfig().model_dump(), "host": "0.0.0.0", "port": 0})
    with pytest.raises(ValueError, match="without a bearer token"):
        IntakeHTTPServer(exposed, IntakePipeline(config, engine, Secret("salt")), None)
