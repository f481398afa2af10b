"""How a command shows the progress of its long work (a `decoder.progress.Progress`) on stderr:
a tqdm bar with ETA on a terminal, else a `logging` line every `every_s` seconds and one at the end.

    with ProgressDisplay() as progress:
        build_reference(size, out, progress=progress)

    # not a terminal (a pipe, a log file, the daemon's retrain process):
    # ... INFO monitor.service.progress: build-reference: 120/720 steps (17%), 00:31 elapsed, ETA 02:35 [target]
    # ... INFO monitor.service.progress: build-reference: 720/720 steps (100%) in 03:06

While a bar shows, log records bound for the console are written above it (tqdm.write). `eta_seconds`
and `format_duration` are also how `specwatch retrain status` states a job's ETA.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import TextIO

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

log = logging.getLogger(__name__)

LOG_EVERY_S = 10.0


def eta_seconds(done: int, total: int, elapsed: float, first_done: int = 0) -> float | None:
    """Seconds until `total` at the rate since `first_done` (None before any unit of this run)."""
    made = done - first_done
    if made <= 0 or elapsed <= 0:
        return None
    return elapsed / made * max(0, total - done)


def format_duration(seconds: float | None) -> str:
    """ "01:05", "1:02:03" (as the bar shows times); "?" when unknown."""
    return "?" if seconds is None else str(tqdm.format_interval(max(0.0, seconds)))


def format_amount(count: float, unit: str) -> str:
    """Bytes with a binary prefix ("11.8MB"), other units as a count."""
    return str(tqdm.format_sizeof(count, "B", 1024)) if unit == "B" else f"{count:.0f}"


@dataclass
class _Work:
    what: str
    total: int
    unit: str
    first_done: int
    started: float
    done: int
    note: str = ""
    logged_at: float = 0.0

    def line(self, now: float, final: bool = False) -> str:
        elapsed = now - self.started
        units = "" if self.unit == "B" else f" {self.unit}s"
        percent = f"{100 * self.done / self.total:.0f}%" if self.total else "-"
        head = f"{self.what}: {format_amount(self.done, self.unit)}/{format_amount(self.total, self.unit)}{units}"
        head += f" ({percent})"
        if final:
            ended = "in" if self.done >= self.total else "stopped after"
            return f"{head} {ended} {format_duration(elapsed)}"
        eta = format_duration(eta_seconds(self.done, self.total, elapsed, self.first_done))
        note = f" [{self.note}]" if self.note else ""
        return f"{head}, {format_duration(elapsed)} elapsed, ETA {eta}{note}"


class ProgressDisplay:
    """A `Progress` on `stream` (default stderr): a bar when it is a terminal, else log lines."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        every_s: float = LOG_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty()
        self.every_s = every_s
        self.clock = clock
        self._work: _Work | None = None
        self._bar: tqdm | None = None
        self._redirect: AbstractContextManager[None] | None = None

    def start(self, what: str, total: int, *, unit: str = "step", done: int = 0) -> None:
        self.finish()
        now = self.clock()
        self._work = _Work(what, max(0, total), unit, done, now, done, logged_at=now)
        if self.interactive:
            self._bar = tqdm(
                total=total,
                initial=done,
                desc=what,
                unit=unit,
                unit_scale=unit == "B",
                unit_divisor=1024 if unit == "B" else 1000,
                file=self.stream,
                dynamic_ncols=True,
            )

    def advance(self, done: int, note: str = "") -> None:
        work = self._work
        if work is None:
            return
        work.done, work.note = min(max(done, 0), work.total), note
        if self._bar is not None:
            if note:
                self._bar.set_postfix_str(note, refresh=False)
            self._bar.update(work.done - self._bar.n)
            return
        now = self.clock()
        if now - work.logged_at >= self.every_s and work.done < work.total:
            work.logged_at = now
            log.info("%s", work.line(now))

    def finish(self) -> None:
        work, self._work = self._work, None
        if work is None:
            return
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        else:
            log.info("%s", work.line(self.clock(), final=True))

    def __enter__(self) -> ProgressDisplay:
        if self.interactive:
            self._redirect = logging_redirect_tqdm()
            self._redirect.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.finish()
        if self._redirect is not None:
            self._redirect.__exit__(exc_type, exc, traceback)
            self._redirect = None
