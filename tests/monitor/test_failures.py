"""Failures told apart: a full disk, an unreachable database, a lost GPU, and everything else (a bug)."""

from __future__ import annotations

import errno
import sqlite3

import pytest
import torch
from sqlalchemy.exc import OperationalError

from monitor.failures import gpu_unavailable, is_database_unreachable, is_device_lost, is_disk_full


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
