"""How long work says how far it got, leaving how that is shown to its caller.

A function that runs long takes `progress: Progress = NO_PROGRESS`, names its work with
`start(what, total)`, reports `advance(done)` as units complete and calls `finish()` at the end.
`done` counts the units complete so far (not an increment), so a report may be skipped or repeated;
`start(..., done=n)` resumes at n (a rate, and so an ETA, counts only what this run did). The caller
decides what a report becomes: a terminal bar or log lines (monitor.service.progress), a row in the
database (a retrain job's), or nothing.

    def train(batches, progress: Progress = NO_PROGRESS) -> None:
        progress.start("train", total=len(batches))
        for done, batch in enumerate(batches, 1):
            step(batch)
            progress.advance(done, note=f"loss {loss:.3f}")
        progress.finish()
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def start(self, what: str, total: int, *, unit: str = "step", done: int = 0) -> None:
        """Work named `what` of `total` units (`unit`: "step", "B" for bytes, ...) begins, `done` of them done."""

    def advance(self, done: int, note: str = "") -> None:
        """`done` units are complete; `note` says what is under way (a stage, a loss)."""

    def finish(self) -> None:
        """The work ended (complete or not)."""


class NoProgress:
    """Reports nowhere."""

    def start(self, what: str, total: int, *, unit: str = "step", done: int = 0) -> None:
        pass

    def advance(self, done: int, note: str = "") -> None:
        pass

    def finish(self) -> None:
        pass


NO_PROGRESS: Progress = NoProgress()
