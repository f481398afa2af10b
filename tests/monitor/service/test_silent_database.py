"""A PostgreSQL peer that stops answering: through a real proxy in front of the real server, frozen (it stops
forwarding without closing), a call fails within storage.answer_timeout_s instead of hanging; the server's
statement and idle-in-transaction timeouts apply (but not to migrations); `specwatch run` answers /readyz 503
naming the stalled job, recovers, and stops on SIGTERM; `specwatch intake serve` stops on SIGTERM.

    SPECWATCH_TEST_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test \\
        .venv/bin/pytest tests/monitor/service/test_silent_database.py
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from monitor.base.config import StorageConfig
from monitor.base.db import Sample, create_db_engine, current_revision, upgrade
from monitor.base.db_timeouts import without_time_limits
from monitor.base.failures import is_database_unreachable
from monitor.service.demo import free_port
from monitor.service.demo_traffic import traffic, write_jsonl
from tests.conftest import POSTGRES_URL, fresh_postgres_schema
from tests.monitor.service.daemon_process import (
    ROOT,
    STARTUP_S,
    config_value,
    count,
    http_get,
    start_daemon,
    wait_until,
    write_config,
)
from tests.monitor.service.silent_peer import FreezableProxy

MIX = {"en": 0.5, "code": 0.5}
FAST = StorageConfig(statement_timeout_s=1, idle_in_transaction_timeout_s=1, answer_timeout_s=2, ping_timeout_s=1)


@pytest.fixture
def schema_url() -> Iterator[str]:
    if not POSTGRES_URL:
        pytest.skip("SPECWATCH_TEST_DATABASE_URL not set")
    with fresh_postgres_schema() as url:
        yield url


@pytest.fixture
def proxy() -> Iterator[FreezableProxy]:
    assert POSTGRES_URL
    upstream = make_url(POSTGRES_URL)
    with FreezableProxy(upstream.host or "127.0.0.1", upstream.port or 5432) as running:
        yield running
        running.thaw()  # a call a failing test left hanging gets its answer


def through(proxy: FreezableProxy, url: str, **query: str) -> str:
    return make_url(url).set(port=proxy.port).update_query_dict(query).render_as_string(hide_password=False)


def run_in_thread(work: Any, wait_s: float) -> tuple[bool, list[BaseException], float]:
    """Runs `work` on a daemon thread for at most `wait_s`: (still running, what it raised, seconds taken)."""
    failures: list[BaseException] = []

    def attempt() -> None:
        try:
            work()
        except BaseException as error:  # the outcome under test, handed back to the test's thread
            failures.append(error)

    started = time.monotonic()
    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(wait_s)
    return thread.is_alive(), failures, time.monotonic() - started


@pytest.mark.postgres
def test_keepalives_user_timeout_and_server_timeouts_are_set(schema_url: str, proxy: FreezableProxy) -> None:
    engine = create_db_engine(through(proxy, schema_url), storage=StorageConfig())
    with engine.connect() as connection:
        settings = connection.execute(
            text("SELECT current_setting('statement_timeout'), current_setting('idle_in_transaction_session_timeout')")
        ).one()
        assert tuple(settings) == ("5min", "5min")
        schema = str(make_url(schema_url).query["options"]).split("=")[-1]
        assert connection.execute(text("SELECT current_schema()")).scalar() == schema, "the URL's options are kept"
        fd = connection.connection.dbapi_connection.pgconn.socket  # type: ignore[union-attr]
        with socket.socket(fileno=os.dup(fd)) as sock:
            options = [
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
            ]
    engine.dispose()
    assert options == [1, 30, 10, 3, 30_000]


@pytest.mark.postgres
def test_a_call_through_a_frozen_connection_fails_within_the_answer_timeout(
    schema_url: str, proxy: FreezableProxy
) -> None:
    engine = create_db_engine(through(proxy, schema_url), storage=FAST)
    connection = engine.connect()
    assert connection.execute(text("SELECT 1")).scalar() == 1
    proxy.freeze()
    hung, failures, took = run_in_thread(lambda: connection.execute(text("SELECT 1")), wait_s=30)
    assert not hung, "the call through the silent connection hung"
    assert len(failures) == 1 and isinstance(failures[0], OperationalError), failures
    assert is_database_unreachable(failures[0]) and failures[0].connection_invalidated
    assert "did not answer in time (limit 2s)" in str(failures[0])
    assert 1.9 < took < 6
    connection.close()
    hung, failures, took = run_in_thread(lambda: engine.connect().close(), wait_s=30)
    assert not hung and len(failures) == 1 and is_database_unreachable(failures[0]), "a new connection, too, gives up"
    proxy.thaw()
    with engine.connect() as fresh:
        assert fresh.execute(text("SELECT 2")).scalar() == 2
    engine.dispose()


def sessions_idle_in_transaction(application_name: str) -> int:
    assert POSTGRES_URL
    admin = create_engine(POSTGRES_URL)
    with admin.connect() as connection:
        query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = :name AND state LIKE 'idle in%'"
        found = int(connection.execute(text(query), {"name": application_name}).scalar() or 0)
    admin.dispose()
    return found


@pytest.mark.postgres
def test_the_server_ends_long_statements_and_abandoned_transactions_but_not_migrations(
    schema_url: str, proxy: FreezableProxy
) -> None:
    name = f"specwatch-test-{uuid.uuid4().hex[:8]}"
    engine = create_db_engine(through(proxy, schema_url, application_name=name), storage=FAST)
    with engine.connect() as connection, pytest.raises(OperationalError, match="statement timeout"):
        connection.execute(text("SELECT pg_sleep(3)"))
    with engine.begin() as connection, without_time_limits(connection):
        connection.execute(text("SELECT pg_sleep(2.5)"))  # over both limits: as a long migration step would
    upgrade(engine)
    assert current_revision(engine) is not None
    abandoned = engine.connect()
    abandoned.execute(text("SELECT 1"))  # a transaction is open now; then the client goes silent
    proxy.freeze()
    deadline = time.monotonic() + 20
    while sessions_idle_in_transaction(name) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sessions_idle_in_transaction(name) == 0, "a silent client's session stayed idle in transaction"
    proxy.thaw()
    abandoned.invalidate()
    engine.dispose()


def samples(url: str) -> int:
    engine = create_db_engine(url)
    try:
        return count(engine, select(func.count()).select_from(Sample))
    finally:
        engine.dispose()


@pytest.mark.slow
@pytest.mark.postgres
def test_daemon_on_a_silent_database_is_not_ready_names_the_stalled_job_recovers_and_stops(
    tmp_path: Path, schema_url: str, proxy: FreezableProxy, reference_models: Path, daemons: list[Any]
) -> None:
    config = write_config(
        tmp_path,
        through(proxy, schema_url),
        reference_models,
        storage="statement_timeout_s = 2\nanswer_timeout_s = 5\nping_timeout_s = 1\nconnect_timeout_s = 1",
        daemon="job_stall_after_s = 1.5\nstop_timeout_s = 8",
    )
    log_file = tmp_path / "logs" / "traffic.jsonl"
    lines = write_jsonl(log_file, traffic(4, MIX, seed=11))
    health = f"http://127.0.0.1:{config_value(config, 'metrics', 'port')}"
    out = tmp_path / "daemon.log"
    process = start_daemon(config, out)
    daemons.append(process)
    wait_until("/readyz 200", lambda: http_get(f"{health}/readyz")[0] == 200, process, out, STARTUP_S)

    proxy.freeze()
    lines += write_jsonl(log_file, traffic(3, MIX, seed=12, first_index=100))
    stalled: list[str] = []

    def a_stalled_job() -> bool:
        status, body = http_get(f"{health}/readyz")
        stalled[:] = [problem for problem in body.get("problems", []) if " stalled: " in problem]
        return status == 503 and bool(stalled)

    wait_until("/readyz 503 naming a stalled job", a_stalled_job, process, out, 60)
    assert stalled[0].startswith("job ") and "daemon.job_stall_after_s = 1.5" in stalled[0]

    proxy.thaw()
    wait_until("every line stored", lambda: samples(schema_url) == lines, process, out, 120)
    wait_until("/readyz 200 again", lambda: http_get(f"{health}/readyz")[0] == 200, process, out, 120)

    proxy.freeze()
    time.sleep(2)  # the jobs are waiting on the silent database now
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0, out.read_text()[-4000:]
    assert "specwatch daemon stopped" in out.read_text()


@pytest.mark.slow
@pytest.mark.postgres
def test_intake_serve_stops_on_sigterm_while_the_database_is_silent(
    tmp_path: Path, schema_url: str, proxy: FreezableProxy
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    config = tmp_path / "config.toml"
    config.write_text(
        f'[storage]\ndata_dir = "{tmp_path / "data"}"\ndatabase_url = "{through(proxy, schema_url)}"\n'
        "statement_timeout_s = 60\nanswer_timeout_s = 120\n"
        f'[intake.follow]\npaths = ["{logs}"]\npoll_interval_s = 0.2\n'
        f"[intake.http]\nport = {free_port()}\n[daemon]\nstop_timeout_s = 4\n"
    )
    out = tmp_path / "serve.log"
    with out.open("ab") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "monitor", "intake", "serve", "--config", str(config)],
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "SPECWATCH_HASH_SALT": "test-salt"},
            cwd=ROOT,
        )
    try:
        wait_until("listening", lambda: "intake listening" in out.read_text(), process, out, 60)
        lines = write_jsonl(logs / "traffic.jsonl", traffic(3, MIX, seed=21))
        wait_until("the log stored", lambda: samples(schema_url) == lines, process, out, 60)
        proxy.freeze()
        write_jsonl(logs / "traffic.jsonl", traffic(3, MIX, seed=22, first_index=100))
        time.sleep(1.5)  # the follower waits on the silent database now
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, out.read_text()[-4000:]
        assert time.monotonic() - started < 15
        assert "stopping: abandoned 1 database call(s) still waiting for an answer" in out.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
