"""Retrain jobs in the database: one at a time, with a heartbeat, so a crash frees the lock and
an interrupted job can be resumed.

    job = create_job(engine, trigger="manual", reason="by hand", kind="eagle", work_root=data_dir / "retrain")
    with JobLock(engine, job.id, stale_after_s=120, heartbeat_s=10):   # LockBusy if another runs
        set_progress(engine, job.id, stage="train", step=10, steps=300)
        finish(engine, job.id, "succeeded", decision=gate_decision)   # a retrain.gate.GateDecision

The lock is one row (`retrain_lock`): it is taken by a conditional UPDATE that succeeds only when
nobody holds it or the holder's heartbeat is older than `stale_after_s`, which is atomic on SQLite
and PostgreSQL alike. While held, a thread refreshes the heartbeat (and the job's). A SIGKILLed
job stops beating: the next run takes the lock and marks that job `interrupted`; its work
directory (corpus, checkpoints) lets it resume.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, cast

from sqlalchemy import CursorResult, Engine, or_, select, update
from sqlalchemy.orm import Session

from monitor.base.db import RetrainJob, RetrainLock, utcnow
from retrain.gate_decision import GateDecision

log = logging.getLogger(__name__)

LOCK_NAME = "retrain"
ACTIVE = ("queued", "running")
FINISHED = ("succeeded", "refused", "failed")


class LockBusy(Exception):
    """Another retrain holds the lock and is alive."""


class RetrainFailed(Exception):
    """A job's training did not produce a candidate: the external trainer exited non-zero, ran past its
    timeout, or wrote no checkpoint that loads. The live head is untouched."""


def owner_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class JobView:
    id: int
    trigger: str
    reason: str
    kind: str
    state: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    owner: str | None
    work_dir: Path
    progress: dict[str, Any]
    corpus_hash: str | None
    candidate_version: str | None
    decision: GateDecision | None
    error: str | None
    attempts: int

    @classmethod
    def of(cls, row: RetrainJob) -> JobView:
        return cls(
            row.id,
            row.trigger,
            row.reason,
            row.kind,
            row.state,
            row.created_at,
            row.started_at,
            row.finished_at,
            row.heartbeat_at,
            row.owner,
            Path(row.work_dir),
            dict(row.progress or {}),
            row.corpus_hash,
            row.candidate_version,
            GateDecision.from_dict(row.decision) if row.decision else None,
            row.error,
            row.attempts,
        )

    def to_dict(self) -> dict[str, Any]:
        decision = self.decision.to_dict() if self.decision else None
        return {**self.__dict__, "work_dir": str(self.work_dir), "decision": decision}


def create_job(engine: Engine, *, trigger: str, reason: str, kind: str, work_root: Path) -> JobView:
    with Session(engine, expire_on_commit=False) as session, session.begin():
        row = RetrainJob(
            trigger=trigger,
            reason=reason,
            kind=kind,
            state="queued",
            created_at=utcnow(),
            work_dir="",
            progress={},
            attempts=0,
        )
        session.add(row)
        session.flush()
        row.work_dir = str(work_root / f"job-{row.id}")
    Path(row.work_dir).mkdir(parents=True, exist_ok=True)
    return JobView.of(row)


def get_job(engine: Engine, job_id: int) -> JobView | None:
    with Session(engine) as session:
        row = session.get(RetrainJob, job_id)
        return JobView.of(row) if row else None


def recent_jobs(engine: Engine, limit: int = 20) -> list[JobView]:
    with Session(engine) as session:
        rows = session.scalars(select(RetrainJob).order_by(RetrainJob.id.desc()).limit(limit))
        return [JobView.of(row) for row in rows]


def mark_dead_jobs(engine: Engine, stale_after_s: float, now: datetime | None = None) -> list[int]:
    """Jobs that claim to run but whose heartbeat stopped: marked interrupted (resumable). Jobs
    queued that long ago and never started: marked failed (their process died before the lock)."""
    now = now or utcnow()
    stale = now - timedelta(seconds=stale_after_s)
    with Session(engine) as session, session.begin():
        running = select(RetrainJob).where(
            RetrainJob.state == "running", or_(RetrainJob.heartbeat_at.is_(None), RetrainJob.heartbeat_at < stale)
        )
        dead = list(session.scalars(running))
        for row in dead:
            row.state = "interrupted"
            row.error = f"no heartbeat since {row.heartbeat_at}: the job's process died"
            log.warning("retrain job %d was interrupted (no heartbeat since %s)", row.id, row.heartbeat_at)
        never = select(RetrainJob).where(RetrainJob.state == "queued", RetrainJob.created_at < stale)
        for row in session.scalars(never):
            row.state, row.finished_at = "failed", now
            row.error = f"queued at {row.created_at} and never started; see {row.work_dir}/process.log"
            log.warning("retrain job %d never started", row.id)
        return [row.id for row in dead]


def resumable_job(engine: Engine) -> JobView | None:
    """The newest interrupted job, if any: its work directory holds the corpus and checkpoints."""
    with Session(engine) as session:
        row = session.scalars(
            select(RetrainJob).where(RetrainJob.state == "interrupted").order_by(RetrainJob.id.desc()).limit(1)
        ).first()
        return JobView.of(row) if row else None


def set_progress(engine: Engine, job_id: int, **progress: Any) -> None:
    with Session(engine) as session, session.begin():
        row = session.get(RetrainJob, job_id)
        if row is not None:
            row.progress = {**(row.progress or {}), **progress}


def update_job(engine: Engine, job_id: int, **fields: Any) -> None:
    with Session(engine) as session, session.begin():
        session.execute(update(RetrainJob).where(RetrainJob.id == job_id).values(**fields))


def finish(
    engine: Engine, job_id: int, state: str, *, decision: GateDecision | None = None, error: str | None = None
) -> None:
    assert state in FINISHED, state
    stored = decision.to_dict() if decision else None
    update_job(engine, job_id, state=state, finished_at=utcnow(), decision=stored, error=error)


class JobLock:
    """Holds the retrain lock for one job, beating its heartbeat from a thread."""

    def __init__(self, engine: Engine, job_id: int, *, stale_after_s: float, heartbeat_s: float) -> None:
        self.engine = engine
        self.job_id = job_id
        self.stale_after_s = stale_after_s
        self.heartbeat_s = heartbeat_s
        self.owner = f"{owner_name()}:job-{job_id}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        now = utcnow()
        stale = now - timedelta(seconds=self.stale_after_s)
        with Session(self.engine) as session, session.begin():
            result = session.execute(
                update(RetrainLock)
                .where(
                    RetrainLock.name == LOCK_NAME,
                    or_(RetrainLock.owner.is_(None), RetrainLock.heartbeat_at < stale),
                )
                .values(owner=self.owner, job_id=self.job_id, heartbeat_at=now)
            )
            if not cast(CursorResult[Any], result).rowcount:
                holder = session.get(RetrainLock, LOCK_NAME)
                busy = f"job {holder.job_id} ({holder.owner})" if holder else "unknown"
                raise LockBusy(f"another retrain is running: {busy}")
            job = session.get(RetrainJob, self.job_id)
            assert job is not None
            job.state, job.owner, job.heartbeat_at = "running", owner_name(), now
            job.started_at = job.started_at or now
            job.attempts += 1
        self._thread = threading.Thread(target=self._beat, name=f"retrain-heartbeat-{self.job_id}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.beat()
            except Exception:  # a database hiccup must not kill the job; the next beat retries
                log.exception("retrain heartbeat failed")

    def beat(self) -> None:
        now = utcnow()
        with Session(self.engine) as session, session.begin():
            session.execute(
                update(RetrainLock)
                .where(RetrainLock.name == LOCK_NAME, RetrainLock.owner == self.owner)
                .values(heartbeat_at=now)
            )
            session.execute(update(RetrainJob).where(RetrainJob.id == self.job_id).values(heartbeat_at=now))

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.heartbeat_s + 5)
        with Session(self.engine) as session, session.begin():
            session.execute(
                update(RetrainLock)
                .where(RetrainLock.name == LOCK_NAME, RetrainLock.owner == self.owner)
                .values(owner=None, job_id=None, heartbeat_at=None)
            )

    def __enter__(self) -> JobLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.release()
