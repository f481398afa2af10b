"""One retrain, start to finish: corpus -> candidate head -> gate -> register -> deploy (or refuse).

    outcome = execute_job(config, engine, job, announce=announce)   # takes the lock, beats the heartbeat,
                                                                     # logs to <work_dir>/job.log

`announce` receives the gate's decision (a `GateAnnouncement`); the service layer passes one that sends
it as a notification (monitor.service.gate_notice), so retrain/ needs nothing of alerts/.

Every stage leaves its output in the job's work directory (corpus/, train/checkpoint.pt,
candidate/), so a job killed halfway resumes where it stopped: the corpus is reused, training
continues from its last checkpoint. The live head is touched only by the atomic pointer switch
after the gate passed; a deploy hook that fails switches the pointer back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from decoder import TargetModel, load_draft, load_target
from monitor.base.config import Config
from monitor.base.db import HeadEvent, utcnow
from monitor.base.groups import Grouping
from monitor.base.results import load_result_columns
from monitor.base.stats import group_rows
from retrain.corpus import Corpus, build_corpus, load_corpus
from retrain.deploy import run_deploy_hook
from retrain.gate import GateOptions, run_gate
from retrain.gate_decision import GateDecision, OverallResult
from retrain.jobs import JobLock, JobView, finish, mark_dead_jobs, set_progress, update_job
from retrain.registry import HeadRegistry
from retrain.serving import prepare_served_head
from retrain.trainer import save_candidate, train_head

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 2.0


@dataclass(frozen=True)
class JobOutcome:
    job_id: int
    state: str  # succeeded | refused | failed
    summary: str
    candidate_version: str | None = None
    decision: GateDecision | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, the decision in its stored shape (`specwatch retrain --json`)."""
        return {**self.__dict__, "decision": self.decision.to_dict() if self.decision else None}


def live_segment_alphas(
    engine: Engine, version: str, since: datetime, rollups: Sequence[Sequence[str]] = ()
) -> dict[str, float]:
    """Each group's alpha under the live head since `since` (segments and roll-ups, as evaluation groups
    them): low-alpha segments, and the segments of low-alpha roll-ups, weigh more."""
    columns = load_result_columns(engine, version, since)
    grouping = Grouping.of(columns.segments, rollups)
    alphas = {grouping.names[group]: columns.counts(rows).alpha for group, rows in group_rows(columns, grouping)}
    return {group: alpha for group, alpha in alphas.items() if alpha is not None}


def record_event(
    engine: Engine,
    event: str,
    version: str,
    previous: str | None,
    reason: str,
    details: dict[str, Any],
    job_id: int | None = None,
) -> None:
    with Session(engine) as session, session.begin():
        session.add(
            HeadEvent(
                at=utcnow(),
                event=event,
                version=version,
                previous_version=previous,
                job_id=job_id,
                reason=reason,
                details=details,
            )
        )


@dataclass(frozen=True)
class GateAnnouncement:
    """What the gate decided about a job's candidate, handed to the `announce` callback."""

    job: JobView
    version: str
    promote: bool
    summary: str
    overall: OverallResult


Announce = Callable[[GateAnnouncement], None]


class ProgressReporter:
    """Stores training progress in the job row, at most every PROGRESS_EVERY_S seconds."""

    def __init__(self, engine: Engine, job_id: int) -> None:
        self.engine, self.job_id, self._last = engine, job_id, 0.0

    def __call__(self, step: int, steps: int, loss: float) -> None:
        now = time.monotonic()
        if now - self._last >= PROGRESS_EVERY_S or step == steps:
            self._last = now
            set_progress(self.engine, self.job_id, stage="train", step=step, steps=steps, loss=round(loss, 4))
            log.info("train step %d/%d loss %.4f", step, steps, loss)


def prepare_corpus(config: Config, engine: Engine, job: JobView, live_version: str, target: Any) -> Corpus:
    directory = job.work_dir / "corpus"
    if (directory / "manifest.json").is_file():
        log.info("reusing the corpus in %s", directory)
        return load_corpus(directory)
    settings = config.retrain.corpus
    now = utcnow()
    return build_corpus(
        engine,
        settings,
        out_dir=directory,
        segment_alpha=live_segment_alphas(
            engine, live_version, now - timedelta(days=settings.days), config.stats.rollups
        ),
        drift=config.drift,
        seed=config.retrain.training.seed,
        now=now,
        target=target if settings.regenerate_responses else None,
    )


def run_job(config: Config, engine: Engine, job: JobView, *, announce: Announce) -> JobOutcome:
    """The stages of one retrain (the caller holds the lock)."""
    if config.models.target is None or config.models.draft is None:
        raise ValueError("models.target and models.draft must be set to retrain")
    registry = HeadRegistry(config.heads_dir)
    live = registry.ensure_seed(config.models.draft)
    live_dir = registry.live_path()
    assert live_dir is not None
    training = config.retrain.training
    target = load_target(config.models.target, device=training.device)
    live_draft = load_draft(live_dir, target)
    kind = live_draft.kind if job.kind == "live" else job.kind

    set_progress(engine, job.id, stage="corpus")
    corpus = prepare_corpus(config, engine, job, live.version, target)
    update_job(engine, job.id, corpus_hash=corpus.manifest.content_hash)

    set_progress(engine, job.id, stage="train")
    result = train_head(
        target,
        corpus,
        kind=kind,
        warm_start=live_dir if kind == live_draft.kind else None,
        settings=training,
        work_dir=job.work_dir / "train",
        progress=ProgressReporter(engine, job.id),
    )
    candidate_dir = save_candidate(result, job.work_dir / "candidate", corpus)

    set_progress(engine, job.id, stage="gate")
    decision = run_gate(target, live_draft, result.draft, corpus.holdout, GateOptions.from_config(config))
    manifest = corpus.manifest.model_dump(mode="json")
    corpus_info = {key: manifest[key] for key in ("content_hash", "counts", "since", "until")}
    candidate = registry.register(
        candidate_dir,
        parent=live.version,
        source=f"retrain job {job.id}",
        corpus=corpus_info,
        metrics=decision.overall.to_dict(),
    )
    registry.update(candidate.version, gate=decision.to_dict())
    update_job(engine, job.id, candidate_version=candidate.version)
    announce(GateAnnouncement(job, candidate.version, decision.promote, decision.summary(), decision.overall))
    if not decision.promote:
        registry.update(candidate.version, state="refused")
        record_event(engine, "refused", candidate.version, live.version, decision.summary(), decision.to_dict(), job.id)
        return JobOutcome(job.id, "refused", decision.summary(), candidate.version, decision)
    return deploy(config, engine, registry, candidate.version, job.id, decision, decision.summary(), lambda: target)


def deploy(
    config: Config,
    engine: Engine,
    registry: HeadRegistry,
    version: str,
    job_id: int | None,
    decision: GateDecision | None,
    summary: str,
    target: Callable[[], TargetModel],
) -> JobOutcome:
    """Prepares the head in the engine's format (retrain.serving; `target` is called only to export),
    switches the live pointer, runs the deploy hook, and switches back if the hook fails. `decision` is
    the gate's (None for a deploy without one); the head event stores it as `gate`."""
    if job_id is not None:
        set_progress(engine, job_id, stage="deploy")
    served = prepare_served_head(config.retrain.deploy, registry, version, target)
    previous = registry.switch(version, reason=f"gate passed: {summary}")
    hook = run_deploy_hook(config.retrain.deploy, served)
    details = {"gate": decision.to_dict() if decision else None, "hook": hook.to_dict(), "served": served.to_dict()}
    if hook.ok:
        record_event(engine, "deployed", version, previous, summary, details, job_id)
        return JobOutcome(job_id or 0, "succeeded", f"deployed {version}: {summary}", version, decision)
    if previous is not None:
        registry.switch(previous, reason=f"deploy hook failed for {version}", previous_state="refused")
    record_event(engine, "deploy_failed", version, previous, f"deploy hook failed: {hook.detail}", details, job_id)
    raise DeployFailed(f"deploy hook failed for {version}, live head kept at {previous}: {hook.detail}")


class DeployFailed(Exception):
    """The deploy hook failed; the previous head is live again."""


@contextmanager
def job_log(path: Path) -> Iterator[None]:
    """Copies this process's log records to the job's own log file while the job runs."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    previous_level = root.level
    root.setLevel(min(previous_level, logging.INFO) if previous_level else logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous_level)
        handler.close()


def execute_job(config: Config, engine: Engine, job: JobView, *, announce: Announce) -> JobOutcome:
    """Runs a job under the retrain lock (LockBusy if another one is alive); never leaves it
    'running': it ends succeeded, refused or failed (with the error)."""
    mark_dead_jobs(engine, config.retrain.stale_after_s)
    settings = config.retrain
    lock = JobLock(engine, job.id, stale_after_s=settings.stale_after_s, heartbeat_s=settings.heartbeat_s)
    with lock, job_log(job.work_dir / "job.log"):
        log.info("retrain job %d (%s: %s) starts, attempt %d", job.id, job.trigger, job.reason, job.attempts + 1)
        try:
            outcome = run_job(config, engine, job, announce=announce)
        except Exception as error:
            log.exception("retrain job %d failed", job.id)
            finish(engine, job.id, "failed", error=f"{type(error).__name__}: {error}")
            return JobOutcome(job.id, "failed", f"{type(error).__name__}: {error}")
        set_progress(engine, job.id, stage="done")
        finish(engine, job.id, outcome.state, decision=outcome.decision)
        log.info("retrain job %d %s: %s", job.id, outcome.state, outcome.summary)
    return outcome
