"""A dispatcher's lease on one receiver's outbox queue: while it holds the lease, no other dispatcher
(another thread, a manual `specwatch alerts dispatch`, a second daemon) sends that receiver's messages.

    with ReceiverLease(engine, "oncall") as lease:
        if lease.held:
            ...                                   # before each send: lease.renew(session) in its transaction

Taken by a conditional UPDATE (free, expired, or ours) whose row count says who won: PostgreSQL
re-checks the condition on the row it waited for, SQLite runs one writer at a time, so exactly one
claimant succeeds on both. A heartbeat thread renews the lease while a send is in flight. A lease is
free again when released, when it expires (`ttl` after the last renewal), or at once when its owner
was a process of this machine that no longer runs (a SIGKILLed dispatcher, a crashed daemon).
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import uuid
from datetime import timedelta
from pathlib import Path

from sqlalchemy import ColumnElement, Connection, Engine, Update, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from monitor.base.db import OutboxLease, utcnow

log = logging.getLogger(__name__)

LEASE_TTL = timedelta(seconds=60)


class ReceiverLease:
    """This dispatcher's claim on one receiver's queue (see the module docstring)."""

    def __init__(self, engine: Engine, receiver: str, ttl: timedelta = LEASE_TTL) -> None:
        self.engine = engine
        self.receiver = receiver
        self.ttl = ttl
        self.owner = uuid.uuid4().hex
        self.held = False
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def __enter__(self) -> ReceiverLease:
        self.held = self.acquire()
        if self.held:
            self._heartbeat = threading.Thread(target=self._beat, name=f"lease-{self.receiver}", daemon=True)
            self._heartbeat.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        if self.held:
            self.release()

    def acquire(self) -> bool:
        """Takes the lease if it is free, expired or left by a dead process of this machine."""
        with self.engine.begin() as connection:
            _ensure_row(connection, self.receiver)
            if self._take(connection, free=self._free_condition()):
                return True
            holder = connection.execute(select(OutboxLease).where(OutboxLease.receiver == self.receiver)).one()
            if holder.host == this_machine() and holder.pid is not None and process_gone(holder.pid):
                log.info("outbox %s: taking over the lease of process %d, which is gone", self.receiver, holder.pid)
                return self._take(connection, free=OutboxLease.owner == holder.owner)
        return False

    def renew(self, session: Session) -> bool:
        """Extends the lease inside the caller's transaction; False when it is no longer ours (the
        caller must then roll back and stop)."""
        held = _rowcount(session.execute(self._extend())) == 1
        if not held:
            self.held = False
            log.warning("outbox %s: lease lost to another dispatcher; stopping", self.receiver)
        return held

    def release(self) -> None:
        """Frees the lease (only if still ours)."""
        statement = (
            update(OutboxLease)
            .where(OutboxLease.receiver == self.receiver, OutboxLease.owner == self.owner)
            .values(owner=None, host=None, pid=None, expires_at=None)
        )
        try:
            with self.engine.begin() as connection:
                connection.execute(statement)
        except SQLAlchemyError as error:
            log.warning("outbox %s: could not release the lease (it expires by itself): %s", self.receiver, error)
        self.held = False

    def _free_condition(self) -> ColumnElement[bool]:
        return or_(OutboxLease.owner.is_(None), OutboxLease.expires_at < utcnow(), OutboxLease.owner == self.owner)

    def _take(self, connection: Connection, free: ColumnElement[bool]) -> bool:
        statement = (
            update(OutboxLease)
            .where(OutboxLease.receiver == self.receiver, free)
            .values(owner=self.owner, host=this_machine(), pid=os.getpid(), expires_at=utcnow() + self.ttl)
        )
        return _rowcount(connection.execute(statement)) == 1

    def _extend(self) -> Update:
        return (
            update(OutboxLease)
            .where(OutboxLease.receiver == self.receiver, OutboxLease.owner == self.owner)
            .values(expires_at=utcnow() + self.ttl)
        )

    def _beat(self) -> None:
        """Renews the lease every quarter of its ttl until released or lost."""
        while not self._stop.wait(self.ttl.total_seconds() / 4):
            try:
                with Session(self.engine) as session, session.begin():
                    if not self.renew(session):
                        return
            except SQLAlchemyError as error:
                log.warning("outbox %s: lease renewal failed, retrying: %s", self.receiver, error)


def _ensure_row(connection: Connection, receiver: str) -> None:
    """The receiver's lease row, created free if it does not exist yet (concurrent creators are fine)."""
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    statement = (
        dialect.insert(OutboxLease).values(receiver=receiver).on_conflict_do_nothing(index_elements=["receiver"])
    )
    connection.execute(statement)


def _rowcount(result: object) -> int:
    return int(getattr(result, "rowcount", 0))


@functools.cache
def this_machine() -> str:
    """Where a pid names one process: the host name, the kernel's boot id and the pid namespace."""
    parts = [socket.gethostname()]
    try:
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
        parts.append(os.readlink("/proc/self/ns/pid"))
    except OSError:
        pass
    return "/".join(parts)[:255]


def process_gone(pid: int) -> bool:
    """True when no process `pid` runs on this machine (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state == "Z"
