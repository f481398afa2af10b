"""The daemon's intake part: the file follower pauses on a full disk and resumes; other failures go to the
job runner; HTTP intake exposed without a token refuses to start."""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from monitor.base.config import Config
from monitor.service.daemon.health import Backoff
from monitor.service.daemon.intake import FollowJob
from monitor.service.daemon.systemd import Systemd


def sqlite_error(message: str) -> OperationalError:
    return OperationalError("INSERT ...", {}, sqlite3.OperationalError(message))


class FullDisk:
    """A file follower whose database has no space left until `space` is set."""

    def __init__(self) -> None:
        self.polls = 0
        self.space = False

    def poll_once(self) -> None:
        self.polls += 1
        if not self.space:
            raise sqlite_error("database or disk is full")


def test_intake_pauses_while_the_disk_is_full_then_resumes(caplog: pytest.LogCaptureFixture) -> None:
    follower = FullDisk()
    paused = Backoff(0.05, 1.0)
    job = FollowJob(follower, paused)  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger="monitor.service.daemon"):
        job.poll()
        job.poll()  # within the backoff: not tried
        assert follower.polls == 1 and paused.problem and "no space left" in paused.problem
        time.sleep(0.06)
        follower.space = True
        job.poll()
    assert follower.polls == 2 and paused.problem is None
    assert "intake paused" in caplog.text and "intake resumed" in caplog.text


class Buggy:
    def poll_once(self) -> None:
        raise ValueError("a bug")


def test_other_intake_failures_are_left_to_the_job_runner() -> None:
    paused = Backoff(1.0, 1.0)
    with pytest.raises(ValueError):
        FollowJob(Buggy(), paused).poll()  # type: ignore[arg-type]
    assert paused.problem is None


def test_exposed_intake_without_a_token_refuses_to_start(
    config: Config, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from monitor.base.config import HttpIntakeConfig
    from monitor.service.daemon import Daemon, StartupRefused

    monkeypatch.delenv("SPECWATCH_INGEST_TOKEN", raising=False)
    monkeypatch.setenv("SPECWATCH_HASH_SALT", "daemon-test")
    exposed = config.intake.model_copy(update={"http": HttpIntakeConfig(host="0.0.0.0", port=0)})
    daemon = Daemon(config.model_copy(update={"intake": exposed}), tmp_path / "config.toml", Systemd({}))
    daemon.engine = engine
    with pytest.raises(StartupRefused, match="without a bearer token") as refused:
        daemon.intake.start()
    assert "SPECWATCH_INGEST_TOKEN" in str(refused.value)
