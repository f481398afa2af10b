"""Failures told apart: a full disk, an unreachable database, a lost GPU, and everything else (a bug)."""

from __future__ import annotations

import errno
import sqlite3

import pytest
import torch
from sqlalchemy.exc import OperationalError

from monitor.base.failures import gpu_unavailable, is_database_unreachable, is_device_lost, is_disk_full


def sqlite_error(message: str) -> OperationalError:
    return OperationalError("INSERT ...", {}, sqlite3.OperationalError(message))


def test_disk_full_and_unreachable_database_are_told_apart() -> None:
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(sqlite_error("database or disk is full"))
    assert not is_database_unreachable(sqlite_error("database or disk is full"))
    assert is_database_unreachable(sqlite_error("unable to open database file"))
    assert not is_database_unreachable(ValueError("a bug"))
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as error:
            raise RuntimeError("while writing") from error
    except RuntimeError as wrapped:
        assert is_disk_full(wrapped)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a usable GPU")
def test_torch_asked_for_a_gpu_that_is_not_there_is_a_lost_device() -> None:
    with pytest.raises(BaseException) as raised:
        torch.zeros(1, device="cuda")
    assert is_device_lost(raised.value)
    assert gpu_unavailable("cuda") is not None and gpu_unavailable("cuda:1") is not None


def test_device_errors_are_not_confused_with_bugs() -> None:
    assert is_device_lost(RuntimeError("CUDA error: unspecified launch failure"))
    assert is_device_lost(RuntimeError("No CUDA GPUs are available"))
    try:
        try:
            raise RuntimeError("CUDA error: an illegal instruction was encountered")
        except RuntimeError as error:
            raise ValueError("replay round failed") from error
    except ValueError as wrapped:
        assert is_device_lost(wrapped)
    assert not is_device_lost(RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x8 and 16x8)"))
    assert not is_device_lost(ValueError("CUDA error in a user's prompt is just text"))
    assert gpu_unavailable("cpu") is None and gpu_unavailable("auto") is None


def test_data_the_database_refuses_is_permanent_not_an_outage() -> None:
    """Real SQLite errors: a broken constraint and too many bind parameters are the data's fault (a
    retry fails the same way), an unopenable database is an outage; the reason never quotes values."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import DBAPIError

    from monitor.base.failures import is_permanent_database_error, permanent_reason

    engine = create_engine("sqlite://")
    refused: list[DBAPIError] = []
    with engine.connect() as connection:
        sqlite = connection.connection.driver_connection
        assert sqlite is not None
        sqlite.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 100)  # as a driver's bound, lower
        connection.execute(text("CREATE TABLE t (key TEXT PRIMARY KEY)"))
        connection.execute(text("INSERT INTO t VALUES ('secret-value')"))
        for statement, parameters in [
            ("INSERT INTO t VALUES (:key)", {"key": "secret-value"}),
            (
                "SELECT 1 WHERE 'x' IN (" + ", ".join(f":p{i}" for i in range(200)) + ")",
                {f"p{i}": "secret-value" for i in range(200)},
            ),
        ]:
            with pytest.raises(DBAPIError) as raised:
                connection.execute(text(statement), parameters)
            refused.append(raised.value)
    for error in refused:
        assert is_permanent_database_error(error) and not is_database_unreachable(error)
        assert "secret-value" not in permanent_reason(error)
    assert "too many values" in permanent_reason(refused[1])
    outage = sqlite_error("unable to open database file")
    assert is_database_unreachable(outage) and not is_permanent_database_error(outage)
    assert not is_permanent_database_error(sqlite_error("database or disk is full"))
