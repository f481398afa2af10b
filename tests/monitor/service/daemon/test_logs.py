"""The daemon's JSON log lines."""

from __future__ import annotations

import json
import logging

from monitor.service.daemon.logs import JsonFormatter


def test_json_log_lines() -> None:
    record = logging.LogRecord("monitor.service.daemon", logging.INFO, __file__, 1, "ready in %ds", (3,), None)
    entry = json.loads(JsonFormatter().format(record))
    assert (entry["level"], entry["logger"], entry["message"]) == ("INFO", "monitor.service.daemon", "ready in 3s")
