"""The retrain lock and job states on a real database: one job at a time, a dead holder's lock frees."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, update
from sqlalchemy.orm import Session

from monitor.base.db import RetrainJob, RetrainLock, utcnow
from retrain.gate_decision import GateDecision
from retrain.jobs import JobLock, LockBusy, create_job, finish, get_job, mark_dead_jobs, resumable_job, set_progress
from tests.retrain.stored_decision import STORED_BEFORE_TYPING


def new_job(engine: Engine, tmp_path: Path) -> int:
    return create_job(engine, trigger="manual", reason="test", kind="eagle", work_root=tmp_path).id


def test_one_job_at_a_time(engine: Engine, tmp_path: Path) -> None:
    first, second = new_job(engine, tmp_path), new_job(engine, tmp_path)
    with JobLock(engine, first, stale_after_s=60, heartbeat_s=0.1):
        with pytest.raises(LockBusy, match=f"job {first}"):
            JobLock(engine, second, stale_after_s=60, heartbeat_s=0.1).acquire()
        job = get_job(engine, first)
        assert job is not None and job.state == "running" and job.attempts == 1
    with JobLock(engine, second, stale_after_s=60, heartbeat_s=0.1):
        pass


def test_heartbeat_keeps_the_lock_fresh(engine: Engine, tmp_path: Path) -> None:
    job_id = new_job(engine, tmp_path)
    with JobLock(engine, job_id, stale_after_s=60, heartbeat_s=0.05):
        before = get_job(engine, job_id)
        import time

        time.sleep(0.3)
        after = get_job(engine, job_id)
        assert before and after and before.heartbeat_at and after.heartbeat_at
        assert after.heartbeat_at > before.heartbeat_at


def test_a_dead_holder_frees_the_lock_and_its_job_is_resumable(engine: Engine, tmp_path: Path) -> None:
    dead = new_job(engine, tmp_path)
    lock = JobLock(engine, dead, stale_after_s=60, heartbeat_s=30)
    lock.acquire()
    lock._stop.set()  # the process died: no more heartbeats, no release
    long_ago = utcnow() - timedelta(minutes=5)
    with Session(engine) as session, session.begin():
        session.execute(update(RetrainLock).values(heartbeat_at=long_ago))
        session.execute(update(RetrainJob).where(RetrainJob.id == dead).values(heartbeat_at=long_ago))
    set_progress(engine, dead, stage="train", step=50)
    assert mark_dead_jobs(engine, stale_after_s=60) == [dead]
    job = resumable_job(engine)
    assert job is not None and job.id == dead and job.progress == {"stage": "train", "step": 50}
    with JobLock(engine, dead, stale_after_s=60, heartbeat_s=0.1):  # resumed: the same job takes the lock
        assert get_job(engine, dead).attempts == 2  # type: ignore[union-attr]
    finish(engine, dead, "succeeded")
    assert resumable_job(engine) is None


def test_finish_records_state_and_error(engine: Engine, tmp_path: Path) -> None:
    job_id = new_job(engine, tmp_path)
    finish(engine, job_id, "failed", error="RuntimeError: boom")
    job = get_job(engine, job_id)
    assert job is not None and (job.state, job.error) == ("failed", "RuntimeError: boom") and job.finished_at
    assert job.work_dir == tmp_path / f"job-{job_id}" and job.work_dir.is_dir()


def test_a_finished_job_stores_the_decision_as_json_and_reads_it_typed(engine: Engine, tmp_path: Path) -> None:
    job_id = new_job(engine, tmp_path)
    decision = GateDecision.from_dict(STORED_BEFORE_TYPING)
    finish(engine, job_id, "succeeded", decision=decision)
    with Session(engine) as session:
        row = session.get(RetrainJob, job_id)
        assert row is not None and row.decision == STORED_BEFORE_TYPING
    job = get_job(engine, job_id)
    assert job is not None and job.decision == decision
    assert job.to_dict()["decision"] == STORED_BEFORE_TYPING
