"""Time limits on PostgreSQL connections, so that a database peer that stops answering cannot freeze a
caller: libpq's TCP keepalives and tcp_user_timeout, the server's statement_timeout and
idle_in_transaction_session_timeout, and a deadline on every call the client makes.

The deadline covers what the kernel cannot see: a peer whose host still acknowledges packets but never
answers (a hung proxy or pooler, a stopped server process). A call (one round trip: a statement, a fetch,
a commit) that has not been answered by its deadline has its socket shut down; libpq then sees the
connection end and the call raises OperationalError, and the pool discards the connection.

    engine = create_db_engine(url, storage=storage)  # monitor.base.db builds its PostgreSQL engines with these
    abort_database_calls()                        # on a stop request: every call in flight fails now
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from sqlalchemy import Connection
from sqlalchemy.exc import DisconnectionError

if TYPE_CHECKING:
    from psycopg.abc import PQGen

    from monitor.base.config import StorageConfig

log = logging.getLogger(__name__)

RV = TypeVar("RV")


@dataclass
class Call:
    """One call in flight on a connection's socket."""

    fd: int
    inode: int  # the socket's identity: the descriptor number could be reused once libpq closes it
    deadline: float
    ended_by: str | None = None  # why its socket was shut down: the deadline passed, or a stop abandoned it


class CallDeadlines:
    """The calls in flight, watched by one thread that sleeps until the earliest deadline."""

    def __init__(self) -> None:
        self._calls: dict[int, Call] = {}
        self._ids = itertools.count()
        self._changed = threading.Condition()
        self._watcher: threading.Thread | None = None

    def begin(self, fd: int, limit_s: float) -> tuple[int, Call]:
        """Registers a call on socket `fd` that must be answered within `limit_s` (math.inf: no limit)."""
        call = Call(fd, os.fstat(fd).st_ino, time.monotonic() + limit_s)
        with self._changed:
            key = next(self._ids)
            self._calls[key] = call
            if self._watcher is None:
                self._watcher = threading.Thread(target=self._watch, name="db-call-deadlines", daemon=True)
                self._watcher.start()
            self._changed.notify()
        return key, call

    def end(self, key: int) -> None:
        with self._changed:
            self._calls.pop(key, None)

    def abort_all(self) -> int:
        """Ends every call in flight now; returns how many."""
        with self._changed:
            live = [call for call in self._calls.values() if call.ended_by is None]
            for call in live:
                _shut(call, "abandoned: the process is stopping")
        return len(live)

    def _watch(self) -> None:
        with self._changed:
            while True:
                now = time.monotonic()
                for call in self._calls.values():
                    if call.ended_by is None and call.deadline <= now:
                        _shut(call, "the database server did not answer in time")
                waiting = [call.deadline for call in self._calls.values() if call.ended_by is None]
                earliest = min(waiting, default=math.inf)
                self._changed.wait(timeout=None if earliest == math.inf else max(0.0, earliest - now))


def _shut(call: Call, reason: str) -> None:
    """Shuts the call's socket down (its connection still owns the descriptor and closes it)."""
    call.ended_by = reason
    try:
        if os.fstat(call.fd).st_ino != call.inode:
            return  # libpq closed it meanwhile: the call is ending on its own
        with socket.socket(fileno=os.dup(call.fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        return


CALLS = CallDeadlines()


def abort_database_calls() -> None:
    """Fails every PostgreSQL call of this process that is waiting for an answer (their transactions roll
    back): a stop request does not wait on a database that does not answer."""
    aborted = CALLS.abort_all()
    if aborted:
        log.warning("stopping: abandoned %d database call(s) still waiting for an answer", aborted)


def abort_database_calls_after(seconds: float) -> threading.Timer:
    """abort_database_calls() in `seconds`, from a daemon thread (cancel the timer once stopped)."""
    timer = threading.Timer(seconds, abort_database_calls)
    timer.daemon = True
    timer.start()
    return timer


class DeadlineConnection(psycopg.Connection[Any]):
    """A psycopg connection whose every wait for the server is bounded by `answer_timeout_s` (None: unbounded).
    All of psycopg's round trips (execute, fetch, commit, rollback) go through `wait`."""

    answer_timeout_s: float | None = None

    def wait(self, gen: PQGen[RV], *args: Any, **kwargs: Any) -> RV:
        limit = self.answer_timeout_s
        key, call = CALLS.begin(self.pgconn.socket, limit or math.inf)  # unbounded calls can still be aborted
        try:
            return super().wait(gen, *args, **kwargs)
        except psycopg.OperationalError as error:
            if call.ended_by is not None:
                raise psycopg.OperationalError(
                    f"{call.ended_by} (limit {limit or math.inf:g}s); connection closed"
                ) from error
            raise
        finally:
            CALLS.end(key)


def libpq_parameters(storage: StorageConfig, url_query: dict[str, Any]) -> dict[str, Any]:
    """Connection parameters for libpq: connect timeout, keepalives, tcp_user_timeout, and the server's
    timeouts in `options`. A parameter the URL sets itself is left to the URL; options are merged."""
    parameters: dict[str, Any] = {
        "connect_timeout": max(1, round(storage.connect_timeout_s)),
        "keepalives": 1,
        "keepalives_idle": storage.tcp_keepalive_idle_s,
        "keepalives_interval": storage.tcp_keepalive_interval_s,
        "keepalives_count": storage.tcp_keepalive_count,
    }
    if storage.tcp_user_timeout_s:
        parameters["tcp_user_timeout"] = _ms(storage.tcp_user_timeout_s)
    parameters = {key: value for key, value in parameters.items() if key not in url_query}
    server = _server_options(storage)
    if server:
        parameters["options"] = " ".join([server, str(url_query.get("options", ""))]).strip()
    return parameters


def _server_options(storage: StorageConfig) -> str:
    """The server's timeouts as `-c name=ms` (a later -c in the URL's own options wins)."""
    settings = {
        "statement_timeout": storage.statement_timeout_s,
        "idle_in_transaction_session_timeout": storage.idle_in_transaction_timeout_s,
    }
    return " ".join(f"-c {name}={_ms(seconds)}" for name, seconds in settings.items() if seconds)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def connect_with_deadlines(answer_timeout_s: float) -> Any:
    """A `do_connect` listener: the engine's connections are DeadlineConnections."""

    def connect(_dialect: Any, _record: Any, cargs: Any, cparams: dict[str, Any]) -> DeadlineConnection:
        connection = DeadlineConnection.connect(*cargs, **cparams)
        connection.answer_timeout_s = answer_timeout_s or None
        return connection

    return connect


def ping_within(ping_timeout_s: float) -> Any:
    """A pool `checkout` listener: the connection answers a ping within `ping_timeout_s`, else the pool
    discards it and takes a new one (the pre-ping, with a time limit of its own)."""

    def ping(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        if not isinstance(dbapi_connection, DeadlineConnection):
            return
        with _answer_limit(dbapi_connection, ping_timeout_s):
            try:
                dbapi_connection.execute("SELECT 1")
            except psycopg.Error as error:
                raise DisconnectionError(f"pooled connection did not answer a ping: {error}") from error

    return ping


@contextmanager
def _answer_limit(connection: DeadlineConnection, limit_s: float | None) -> Iterator[None]:
    previous = connection.answer_timeout_s
    connection.answer_timeout_s = limit_s
    try:
        yield
    finally:
        connection.answer_timeout_s = previous


@contextmanager
def without_time_limits(connection: Connection) -> Iterator[None]:
    """Inside a transaction on `connection`: no statement timeout and no answer deadline (migrations)."""
    dbapi_connection = connection.connection.dbapi_connection
    if connection.dialect.name != "postgresql" or not isinstance(dbapi_connection, DeadlineConnection):
        yield
        return
    connection.exec_driver_sql("SET LOCAL statement_timeout = 0")
    with _answer_limit(dbapi_connection, None):
        yield
