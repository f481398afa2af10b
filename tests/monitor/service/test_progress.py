"""Progress of long work: log lines with step/steps, elapsed and ETA when stderr is not a terminal (a real
small build-reference), a tqdm bar with ETA on a terminal (the real `specwatch ingest` under a
pseudo-terminal, and a real build)."""

from __future__ import annotations

import fcntl
import io
import logging
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from decoder.reference import REFERENCE_SPECS, ReferenceSpec, build_reference
from monitor.service.progress import ProgressDisplay, eta_seconds, format_duration
from tests.monitor.intake.traffic import line

ROOT = Path(__file__).resolve().parents[3]
LOGGER = "monitor.service.progress"
BAR_WITH_ETA = re.compile(r"(\d+)%\|[^|]*\| *([\d.]+k?)/([\d.]+k?) \[\d\d:\d\d<(\d\d:\d\d)")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == LOGGER]


def test_log_lines_every_interval_with_eta_from_this_runs_rate(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    display = ProgressDisplay(io.StringIO(), every_s=10, clock=clock)
    assert not display.interactive
    with caplog.at_level(logging.INFO, logger=LOGGER), display:
        display.start("train", 200, done=40)  # resumed at 40: only this run's steps make the rate
        for done, at in [(60, 2.0), (90, 5.0), (140, 10.0), (150, 11.0), (180, 20.5)]:
            clock.now = 1000.0 + at
            display.advance(done, note=f"loss {done / 100:.2f}")
        clock.now = 1022.0
        display.advance(200)
    assert messages(caplog) == [
        "train: 140/200 steps (70%), 00:10 elapsed, ETA 00:06 [loss 1.40]",
        "train: 180/200 steps (90%), 00:20 elapsed, ETA 00:02 [loss 1.80]",  # 20 left at 140 per 20.5 s
        "train: 200/200 steps (100%) in 00:22",
    ]


def test_bytes_and_work_that_stops_early(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    display = ProgressDisplay(io.StringIO(), every_s=0, clock=clock)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        display.start("ingest", 10 * 1024 * 1024, unit="B")
        clock.now += 4
        display.advance(2 * 1024 * 1024, note="app.log: 900 records")
        clock.now += 1
        display.finish()
    assert messages(caplog) == [
        "ingest: 2.00MB/10.0MB (20%), 00:04 elapsed, ETA 00:16 [app.log: 900 records]",
        "ingest: 2.00MB/10.0MB (20%) stopped after 00:05",
    ]


def test_eta_and_durations() -> None:
    assert eta_seconds(30, 120, 40.0, first_done=10) == pytest.approx(180.0)
    assert eta_seconds(10, 120, 40.0, first_done=10) is None  # nothing done in this run yet
    assert (format_duration(175.9), format_duration(3723), format_duration(None)) == ("02:55", "1:02:03", "?")


@pytest.fixture(scope="module")
def micro_spec() -> ReferenceSpec:
    """A reference build of a few steps per stage: seconds, on real text."""
    return REFERENCE_SPECS["tiny"].model_copy(
        update={
            "languages": ("en",),
            "code_bytes": 10_000,
            "vocab_size": 300,
            "hidden_size": 16,
            "num_heads": 2,
            "num_kv_heads": 1,
            "intermediate_size": 32,
            "context_length": 64,
            "sequence_length": 16,
            "target_batch_size": 2,
            "target_steps": 4,
            "draft_batch_size": 2,
            "draft_steps": 2,
            "draft_model_hidden_size": 16,
            "answer_prompts": 8,
            "answer_tokens": 4,
            "chat_tuning_steps": 3,
            "eval_prompts": 2,
            "eval_new_tokens": 2,
        }
    )


@pytest.mark.usefixtures("one_torch_thread")
def test_build_reference_off_a_terminal_logs_its_steps(
    micro_spec: ReferenceSpec, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger=LOGGER), ProgressDisplay(io.StringIO(), every_s=0) as progress:
        build_reference("tiny", tmp_path / "ref", seed=0, spec=micro_spec, progress=progress)
    kinds = sorted(path.name for path in (tmp_path / "ref" / "drafts").iterdir())
    total = micro_spec.target_steps + micro_spec.chat_tuning_steps + len(kinds) * micro_spec.draft_steps
    lines = messages(caplog)
    assert lines[-1].startswith(f"build-reference: {total}/{total} steps (100%) in ")
    pattern = re.compile(rf"build-reference: (\d+)/{total} steps \(\d+%\), \d\d:\d\d elapsed, ETA (\S+) \[(.+)\]")
    reports = [match.groups() for match in map(pattern.fullmatch, lines[:-1])]
    assert all(reports), lines
    steps = [int(done) for done, _, _ in reports]
    assert steps == sorted(steps) and steps[-1] == total - 1
    notes = [note for _, _, note in reports]
    assert notes.index("target") < notes.index("chat tuning") < notes.index(f"draft {kinds[0]}")
    assert {f"draft {kind}" for kind in kinds} <= set(notes)
    assert re.fullmatch(r"\d\d:\d\d", reports[-1][1]), "an ETA once steps are done"


@pytest.mark.usefixtures("one_torch_thread")
def test_build_reference_on_a_terminal_draws_a_bar_with_eta(micro_spec: ReferenceSpec, tmp_path: Path) -> None:
    terminal = Terminal()
    with ProgressDisplay(terminal) as progress:
        build_reference("tiny", tmp_path / "ref", seed=0, spec=micro_spec, progress=progress)
    frames = BAR_WITH_ETA.findall(terminal.getvalue())
    kinds = len(list((tmp_path / "ref" / "drafts").iterdir()))
    total = str(micro_spec.target_steps + micro_spec.chat_tuning_steps + kinds * micro_spec.draft_steps)
    assert frames and all(frame[2] == total for frame in frames)
    assert frames[-1][:2] == ("100", total) and frames[-1][3] == "00:00"
    assert terminal.getvalue().startswith("\rbuild-reference:")


def run_in_terminal(*args: str, timeout: float = 60) -> tuple[int, str]:
    """Runs `specwatch ARGS` with stdin, stdout and stderr on a pseudo-terminal (120 columns); its output."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "SPECWATCH_HASH_SALT": "salt", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "monitor", *args], stdin=terminal, stdout=terminal, stderr=terminal, env=environment
    )
    os.close(terminal)
    output, deadline = b"", time.monotonic() + timeout
    try:
        while select.select([controller], [], [], max(0.0, deadline - time.monotonic()))[0]:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(controller)
        if process.poll() is None and time.monotonic() >= deadline:
            process.kill()
    return process.wait(timeout=30), output.decode(errors="replace")


def test_ingest_on_a_terminal_draws_a_bar_with_eta(tmp_path: Path) -> None:
    log = tmp_path / "app.jsonl"
    log.write_bytes(b"".join(line(index) for index in range(1500)))
    config = tmp_path / "config.toml"
    config.write_text(
        f'[storage]\ndata_dir = "{tmp_path / "data"}"\n[intake.follow]\nbatch_lines = 100\n', encoding="utf-8"
    )
    code, output = run_in_terminal("ingest", "--config", str(config), str(log))
    assert code == 0, output
    frames = BAR_WITH_ETA.findall(output)
    size_k = f"{log.stat().st_size / 1024:.0f}k"
    assert len(frames) >= 2 and all(frame[2] == size_k for frame in frames), output
    assert frames[-1][:2] == ("100", size_k)
    assert "\ringest:" in output and "1500 records: 1500 stored" in output
