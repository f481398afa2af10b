"""A one-line progress display on stderr: redrawn in place on a terminal, else a line every few seconds."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, stream: TextIO | None = None, every_s: float = 5.0) -> None:
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty()
        self.every_s = every_s
        self.started = time.monotonic()
        self._last = 0.0

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def update(self, text: str, force: bool = False) -> None:
        now = time.monotonic()
        if self.interactive:
            self.stream.write("\r\x1b[2K" + text)
            self.stream.flush()
        elif force or now - self._last >= self.every_s:
            self.stream.write(text + "\n")
            self.stream.flush()
            self._last = now

    def finish(self, text: str) -> None:
        if self.interactive:
            self.stream.write("\r\x1b[2K")
        self.stream.write(text + "\n")
        self.stream.flush()
