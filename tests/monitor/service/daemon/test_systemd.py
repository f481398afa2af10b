"""The daemon's systemd environment (NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID)."""

from __future__ import annotations

import os

from monitor.service.daemon.systemd import Systemd


def test_systemd_environment_is_read_once_and_removed() -> None:
    environ = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid()), "OTHER": "kept"}
    systemd = Systemd(environ)
    assert systemd.watchdog_interval_s == 1.0 and environ == {"OTHER": "kept"}
    systemd.notify("READY=1")  # no NOTIFY_SOCKET: nothing to send, nothing raised
    assert Systemd({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}).watchdog_interval_s is None
