"""The daemon's log lines on stdout (journald keeps them): text or JSON, APScheduler's busy skips dropped."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

TEXT_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message (and the traceback, when there is one)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class QuietBusySkips(logging.Filter):
    """The replay and intake jobs drain their backlog in one run, so a run outlasts its interval by
    design; APScheduler then warns at every tick that the next run was skipped (max_instances=1)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "maximum number of running instances reached" not in record.getMessage()


def configure_logging(log_format: str) -> None:
    """Log lines to stdout (journald keeps them), as text or JSON, at the level already set."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    if root.level > logging.DEBUG:
        logging.getLogger("apscheduler.executors").setLevel(logging.WARNING)  # "Running job ..." every tick
    logging.getLogger("apscheduler.scheduler").addFilter(QuietBusySkips())
