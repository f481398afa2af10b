"""sd_notify and the watchdog interval systemd asks for (Type=notify, WatchdogSec)."""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping

import sdnotify


def watchdog_interval_s(environ: Mapping[str, str]) -> float | None:
    """Half of WATCHDOG_USEC when systemd asks this process for watchdog pings, else None."""
    usec, pid = environ.get("WATCHDOG_USEC", ""), environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


class Systemd:
    """sd_notify through the `sdnotify` package; does nothing when NOTIFY_SOCKET is unset. The
    variables are taken out of the environment, so retrain processes started later do not see them."""

    def __init__(self, environ: MutableMapping[str, str] = os.environ) -> None:
        self.watchdog_interval_s = watchdog_interval_s(environ)
        self._notifier = sdnotify.SystemdNotifier() if environ.get("NOTIFY_SOCKET") else None
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            environ.pop(name, None)

    def notify(self, *assignments: str) -> None:
        if self._notifier is not None:
            message = "\n".join(assignments).encode("ascii", "replace").decode("ascii")
            self._notifier.notify(message)
