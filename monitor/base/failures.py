"""What went wrong, told apart: the database is unreachable, a disk is full, the GPU is gone, or
something else (a bug to report). The daemon's reaction to each is different: wait and retry, pause
intake, fall back to the CPU or pause replay, or log the traceback.

    is_disk_full(error) / is_database_unreachable(error) / is_device_lost(error) / gpu_unavailable("cuda")
    is_permanent_database_error(error) -> the data itself was refused: permanent_reason(error) says why
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Iterator

from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)

POSTGRES_DISK_FULL = "53100"
# SQLSTATE classes of errors in the data or the statement, which no retry fixes: data exception,
# integrity constraint violation, program limit exceeded
POSTGRES_PERMANENT_CLASSES = ("22", "23", "54")
TOO_MANY_PARAMETERS_SIGNS = (  # a statement with more bind parameters than the driver or database takes
    "number of parameters must be between",  # psycopg: 65,535 at most
    "too many sql variables",  # SQLite
)
DEVICE_LOST_SIGNS = (  # lower case: matched against the lower-cased message
    "cuda error",
    "cuda driver",
    "no cuda gpus are available",
    "found no nvidia driver",
    "cuda-capable device",
    "torch not compiled with cuda enabled",
)


def causes(error: BaseException) -> Iterator[BaseException]:
    """The error, the driver error it wraps, and the errors it was raised from."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending += [getattr(current, "orig", None), current.__cause__, current.__context__]


def is_disk_full(error: BaseException) -> bool:
    """No space left: ENOSPC/EDQUOT, SQLite's 'database or disk is full', PostgreSQL's disk_full."""
    for cause in causes(error):
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "database or disk is full" in str(cause) or getattr(cause, "sqlstate", None) == POSTGRES_DISK_FULL:
            return True
    return False


def is_database_unreachable(error: BaseException) -> bool:
    """The database did not answer (refused, timed out, lost the connection), as opposed to a bug."""
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    if not isinstance(error, OperationalError | InterfaceError):
        return False
    return not is_disk_full(error) and not is_permanent_database_error(error)


def is_permanent_database_error(error: BaseException) -> bool:
    """The database refused the data or the statement, so sending it again fails again: a value too long
    or out of range, a character it cannot store (DataError), a broken constraint (IntegrityError), a
    statement with too many bind parameters. Not a full disk, not an outage."""
    if is_disk_full(error):
        return False
    for cause in causes(error):
        if isinstance(cause, DataError | IntegrityError):
            return True
        sqlstate = getattr(cause, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate[:2] in POSTGRES_PERMANENT_CLASSES:
            return True
        if too_many_parameters(cause):
            return True
    return False


def too_many_parameters(cause: BaseException) -> bool:
    """The driver's own error (not SQLAlchemy's wrapper, whose text holds the statement's parameters)."""
    if isinstance(cause, SQLAlchemyError):
        return False
    return any(sign in str(cause).lower() for sign in TOO_MANY_PARAMETERS_SIGNS)


def permanent_reason(error: BaseException) -> str:
    """Why the database refused the data, naming the error class and SQLSTATE, never the values (a
    database's message quotes them)."""
    sqlstate = next(filter(None, (getattr(cause, "sqlstate", None) for cause in causes(error))), None)
    kind = type(error).__name__ + (f", SQLSTATE {sqlstate}" if sqlstate else "")
    if any(too_many_parameters(cause) for cause in causes(error)):
        return f"too many values for one database statement ({kind})"
    return f"the database refused the records as they are ({kind}): a value too long, out of range or not storable"


def retry_at_startup(error: BaseException) -> bool:
    """Worth waiting out before the first connection: the database is down, its disk is full, or the
    data directory cannot be used yet (a mount not there yet); anything else is a bug to report."""
    return isinstance(error, OSError) or is_database_unreachable(error) or is_disk_full(error)


def describe(error: BaseException) -> str:
    """One line, without SQLAlchemy's statement and background-link trailers."""
    text = str(getattr(error, "orig", None) or error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:300]


def is_device_lost(error: BaseException) -> bool:
    """The accelerator failed or is not there (a driver or device error), as opposed to a bug in the
    models or the data. torch raises these as RuntimeError/AcceleratorError (or, on a CPU-only build,
    AssertionError) with the cause in the message."""
    torch = sys.modules.get("torch")
    accelerator_error = getattr(torch, "AcceleratorError", None) if torch is not None else None
    for cause in causes(error):
        if accelerator_error is not None and isinstance(cause, accelerator_error):
            return True
        message = str(cause).lower()
        if isinstance(cause, RuntimeError | AssertionError) and any(sign in message for sign in DEVICE_LOST_SIGNS):
            return True
    return False


def gpu_unavailable(device: str) -> str | None:
    """Why `models.device` cannot be used now, or None ("cpu" and "auto" always can)."""
    if not device.startswith("cuda"):
        return None
    import torch

    if not torch.cuda.is_available():
        return f"models.device = {device}, but no CUDA GPU is available"
    index = torch.device(device).index
    if index is not None and index >= torch.cuda.device_count():
        return f"models.device = {device}, but only {torch.cuda.device_count()} CUDA GPU(s) are present"
    return None
