"""Training on an external trainer (speculators under torchrun, SpecForge, a Kubernetes Job or Slurm
script the operator wraps): files in, a checkpoint in an engine's format out.

    values = placeholder_values(target=..., aux_layer_ids=(2, 14, 29), draft_vocab_size=32000,
                                corpus_dir=job_dir / "corpus", live_head=None, output_dir=paths.output, gpus=8)
    checkpoint = run_external_trainer(config.retrain.external, engine, job.id, paths, values)

`retrain.external.command` is rendered with the values and run in its own process group (its own
session), wrapped by /bin/sh so that its exit status lands in a file: stdout and stderr go to
<job>/external/trainer.log, the checkpoint to <job>/external/output. The wrapper's pid and its start
time (/proc/<pid>/stat field 22) go to the job's progress JSON (`external`), and every
`heartbeat_s` the child's liveness and the tail of its log. A non-zero exit or a run past `timeout`
(the process group is ended) raises RetrainFailed.

specwatch killed mid-run leaves the trainer running: the next attempt finds the recorded pid with the
same start time alive and waits for it (adopts it); a trainer that finished meanwhile is taken by its
exit status; otherwise what is left of its process group is ended and the command runs again with the
same output directory, which a trainer resumes from. Never two trainers for one job.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from decoder.formats import detect_format
from monitor.base.config import EXTERNAL_PLACEHOLDERS, ExternalTrainerConfig, window_length
from monitor.base.db import utcnow
from retrain.jobs import RetrainFailed, get_job, set_progress
from retrain.trainer_corpus import TrainerCorpus

log = logging.getLogger(__name__)

TAIL_LINES = 20
TAIL_BYTES = 16_384
LINE_CHARS = 300
POLL_S = 0.2
STOP_GRACE_S = 10.0
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|ACCESS_KEY|CREDENTIAL", re.IGNORECASE)
WRAPPER = 'rm -f "$0.tmp"; "$@"; status=$?; echo "$status" > "$0.tmp" && mv "$0.tmp" "$0"; exit "$status"'
"""/bin/sh -c WRAPPER STATUS_FILE COMMAND...: runs the command, then writes its exit status atomically."""


@dataclass(frozen=True)
class ExternalPaths:
    """Where a job's external run lives: <job>/external/{corpus, output, trainer.log, exit_status}."""

    root: Path

    @classmethod
    def of(cls, job_dir: Path) -> ExternalPaths:
        return cls(job_dir / "external")

    @property
    def corpus(self) -> Path:
        """The train side of the corpus, the trainer's input (no holdout)."""
        return self.root / "corpus"

    @property
    def output(self) -> Path:
        return self.root / "output"

    @property
    def log(self) -> Path:
        return self.root / "trainer.log"

    @property
    def status(self) -> Path:
        return self.root / "exit_status"


def placeholder_values(
    *,
    target: Path,
    aux_layer_ids: Sequence[int],
    draft_vocab_size: int,
    corpus: TrainerCorpus,
    live_head: Path | None,
    output_dir: Path,
    gpus: int,
) -> dict[str, str]:
    """The value of each command placeholder (monitor.base.config.EXTERNAL_PLACEHOLDERS names them)."""
    values = {
        "target": str(target),
        "aux_layer_ids": ",".join(str(layer) for layer in aux_layer_ids),
        "draft_vocab_size": str(draft_vocab_size),
        "corpus_dir": str(corpus.manifest.parent),
        "train_jsonl": str(corpus.manifest.parent / "train.jsonl"),
        "conversations_jsonl": str(corpus.speculators),
        "sharegpt_jsonl": str(corpus.sharegpt),
        "trainer_manifest": str(corpus.manifest),
        "live_head": "" if live_head is None else str(live_head),
        "output_dir": str(output_dir),
        "gpus": str(gpus),
    }
    assert set(values) == set(EXTERNAL_PLACEHOLDERS), "every placeholder has a value"
    return values


def render_command(template: Sequence[str], values: Mapping[str, str]) -> list[str]:
    return [argument.format_map(values) for argument in template]


def process_start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22); None when it
    does not exist or is a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # fields 3.. (the name in parentheses may hold spaces)
    return None if fields[0] == "Z" else int(fields[19])


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def end_group(pgid: int, grace_s: float = STOP_GRACE_S, reap: Callable[[], object] | None = None) -> None:
    """SIGTERM to the process group, SIGKILL to what is left after `grace_s`; `reap` collects our own
    child meanwhile (a zombie still counts as a member of its group)."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if reap is not None:
                reap()
            if not group_alive(pgid):
                return
            time.sleep(POLL_S)


@dataclass(frozen=True)
class TrainerRecord:
    """The run a job stores under progress["external"]: whose pid, started when, which attempt."""

    pid: int
    start_ticks: int
    started_at: str
    runs: int

    @classmethod
    def from_progress(cls, progress: Mapping[str, Any]) -> TrainerRecord | None:
        stored = progress.get("external")
        if not isinstance(stored, Mapping) or "pid" not in stored:
            return None
        return cls(int(stored["pid"]), int(stored["start_ticks"]), str(stored["started_at"]), int(stored["runs"]))

    @property
    def started(self) -> datetime:
        return datetime.fromisoformat(self.started_at)


class TrainerProcess:
    """A running trainer: our own child (`popen`), or one adopted from a killed attempt."""

    def __init__(self, record: TrainerRecord, popen: subprocess.Popen[bytes] | None = None) -> None:
        self.record, self.popen = record, popen

    def running(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return process_start_ticks(self.record.pid) == self.record.start_ticks

    def wait(self, seconds: float) -> bool:
        """Waits up to `seconds` for the process to end; whether it has."""
        deadline = time.monotonic() + seconds
        while self.running():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(POLL_S, left))
        return True


def secret_values(extra: Mapping[str, str]) -> list[str]:
    """Values of environment variables whose names say they are secrets (the child's environment)."""
    environment = {**os.environ, **extra}
    return [value for name, value in environment.items() if SECRET_NAME.search(name) and len(value) >= 4]


def log_tail(path: Path, secrets: Sequence[str], lines: int = TAIL_LINES) -> list[str]:
    """The last lines of the trainer's log, secret values masked, each cut to LINE_CHARS."""
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - TAIL_BYTES))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    tail = [line for line in re.split(r"[\r\n]+", text) if line.strip()][-lines:]
    for secret in secrets:
        tail = [line.replace(secret, "****") for line in tail]
    return [line[:LINE_CHARS] for line in tail]


def exit_status(paths: ExternalPaths) -> int | None:
    try:
        return int(paths.status.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None


def launch(settings: ExternalTrainerConfig, command: list[str], paths: ExternalPaths, runs: int) -> TrainerProcess:
    paths.output.mkdir(parents=True, exist_ok=True)
    paths.status.unlink(missing_ok=True)
    working_dir = settings.working_dir or paths.root
    environment = {**os.environ, **settings.env}
    with paths.log.open("ab") as output:
        output.write(f"--- specwatch: external trainer run {runs} at {utcnow().isoformat()}\n".encode())
        output.flush()
        popen = subprocess.Popen(
            ["/bin/sh", "-c", WRAPPER, str(paths.status), *command],
            cwd=working_dir,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    ticks = process_start_ticks(popen.pid)
    record = TrainerRecord(popen.pid, ticks if ticks is not None else -1, utcnow().isoformat(), runs)
    log.info("external trainer started (pid %d, run %d), log %s", popen.pid, runs, paths.log)
    return TrainerProcess(record, popen)


def store(engine: Engine, job_id: int, process: TrainerProcess, paths: ExternalPaths, secrets: Sequence[str]) -> None:
    """The job's heartbeat of the external stage: the run, whether it lives, the tail of its log."""
    now = utcnow().isoformat()
    external = {**asdict(process.record), "alive": process.running(), "checked_at": now}
    external["log_tail"] = log_tail(paths.log, secrets)
    set_progress(engine, job_id, stage="train", updated_at=now, external=external)


def supervise(
    settings: ExternalTrainerConfig, engine: Engine, job_id: int, process: TrainerProcess, paths: ExternalPaths
) -> int | None:
    """Heartbeats until the trainer ends; its exit status (None when it left none). RetrainFailed
    after the timeout, counted from the run's start, with its process group ended."""
    secrets = secret_values(settings.env)
    deadline = process.record.started + window_length(settings.timeout)
    while True:
        store(engine, job_id, process, paths, secrets)
        left = (deadline - utcnow()).total_seconds()
        if process.wait(max(0.0, min(settings.heartbeat_s, left))):
            break
        if utcnow() >= deadline:
            end_group(process.record.pid, reap=process.running)
            store(engine, job_id, process, paths, secrets)
            raise RetrainFailed(
                f"external trainer ran past retrain.external.timeout = {settings.timeout} and was stopped; "
                f"log {paths.log}"
            )
    store(engine, job_id, process, paths, secrets)
    status = exit_status(paths)
    if status is None and process.popen is not None:
        status = process.popen.returncode
    return status


def resume_or_launch(
    settings: ExternalTrainerConfig, command: list[str], paths: ExternalPaths, record: TrainerRecord | None
) -> TrainerProcess | None:
    """The trainer to wait for: the recorded one while it lives, else a new run; None when the recorded
    run finished with status 0 while nobody watched (its checkpoint is there)."""
    if record is None:
        return launch(settings, command, paths, runs=1)
    adopted = TrainerProcess(record)
    if adopted.running():
        log.info("adopting the external trainer still running (pid %d, run %d)", record.pid, record.runs)
        return adopted
    if exit_status(paths) == 0:
        log.info("the external trainer (pid %d) finished while specwatch was down", record.pid)
        return None
    if group_alive(record.pid):
        log.warning("ending what is left of the external trainer's process group %d", record.pid)
        end_group(record.pid)
    return launch(settings, command, paths, runs=record.runs + 1)


def run_external_trainer(
    settings: ExternalTrainerConfig, engine: Engine, job_id: int, paths: ExternalPaths, values: Mapping[str, str]
) -> Path:
    """Runs (or adopts, see the module docstring) the job's external trainer to its end and returns
    the checkpoint directory it wrote; RetrainFailed when it fails, times out or writes none."""
    job = get_job(engine, job_id)
    assert job is not None
    process = resume_or_launch(
        settings, render_command(settings.command, values), paths, TrainerRecord.from_progress(job.progress)
    )
    if process is not None:
        set_progress(engine, job_id, external={**asdict(process.record), "alive": True, "log_tail": []})
        status = supervise(settings, engine, job_id, process, paths)
        if status != 0:
            tail = "\n".join(log_tail(paths.log, secret_values(settings.env), lines=8))
            ended = "without an exit status" if status is None else f"with exit status {status}"
            raise RetrainFailed(f"external trainer exited {ended}; log {paths.log}, last lines:\n{tail}")
    return find_checkpoint(paths.output, settings.checkpoint_subdir)


def is_engine_head(directory: Path) -> bool:
    """Whether a directory holds a head in an engine's format (not a plain causal LM: any model is one)."""
    head_format = detect_format(directory)
    return head_format is not None and not head_format.fallback


def find_checkpoint(output_dir: Path, subdir: str = "") -> Path:
    """The head the trainer wrote: `output_dir/subdir` when given, else `output_dir` when it holds one,
    else the newest directory under it (by its config.json's time) that does."""
    if subdir:
        chosen = output_dir / subdir
        if not is_engine_head(chosen):
            raise RetrainFailed(f"{chosen} (retrain.external.checkpoint_subdir) holds no head in an engine format")
        return chosen
    if is_engine_head(output_dir):
        return output_dir
    heads = [config.parent for config in output_dir.rglob("config.json") if is_engine_head(config.parent)]
    if not heads:
        raise RetrainFailed(f"the external trainer wrote no checkpoint in an engine format under {output_dir}")
    return max(heads, key=lambda head: (head / "config.json").stat().st_mtime_ns)
