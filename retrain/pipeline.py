"""One retrain, start to finish: corpus -> candidate head -> gate -> register -> deploy (or refuse).

    outcome = execute_job(config, engine, job, announce=announce)   # takes the lock, beats the heartbeat,
                                                                     # logs to <work_dir>/job.log

`announce` receives the gate's decision (a `GateAnnouncement`); the service layer passes one that sends
it as a notification (monitor.service.gate_notice), so retrain/ needs nothing of alerts/. Training
steps go to the job's row (step, steps, loss, and when and at which step this attempt's training
started, from which `retrain status` states an ETA) and to `progress=` (a decoder.progress.Progress:
the command's bar or log lines).

Training is specwatch's own (`train_internal`) or an external trainer's (`train_external`,
retrain.external: a command such as speculators under torchrun, its checkpoint imported); the job's
trainer is the one it was queued with. Both hand a `Candidate` to `judge_and_deploy`.

Every stage leaves its output in the job's work directory (corpus/, train/checkpoint.pt,
candidate/), so a job killed halfway resumes where it stopped: the corpus is reused, training
continues from its last checkpoint. The live head is touched only by the atomic pointer switch
after the gate passed; a deploy hook that fails switches the pointer back.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from decoder import DecoderError, Draft, Eagle3Head, TargetModel, load_draft, load_target
from decoder.drafts.eagle3 import default_aux_layer_ids
from decoder.progress import NO_PROGRESS, Progress
from monitor.base.config import Config, DeployConfig
from monitor.base.db import HeadEvent, utcnow
from monitor.base.groups import Grouping
from monitor.base.results import load_result_columns
from monitor.base.stats import group_rows
from retrain.corpus import Corpus, build_corpus, load_corpus
from retrain.deploy import run_deploy_hook
from retrain.external import ExternalPaths, placeholder_values, run_external_trainer
from retrain.gate import GateOptions, run_gate
from retrain.gate_decision import GateDecision, OverallResult
from retrain.jobs import JobLock, JobView, RetrainFailed, finish, mark_dead_jobs, set_progress, update_job
from retrain.registry import HeadManifest, HeadRegistry
from retrain.serving import prepare_served_head
from retrain.trainer import save_candidate, train_head
from retrain.trainer_corpus import write_trainer_corpora

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


class TrainingProgress:
    """A job's training steps (train_head's `progress`): stored in its row at most every PROGRESS_EVERY_S
    seconds and at the last step, with `first_step` and `train_started_at` (the first step this attempt
    reported, and when) and `updated_at`, so a rate and an ETA follow from the row alone; each step
    also goes to `progress`."""

    def __init__(self, engine: Engine, job_id: int, progress: Progress = NO_PROGRESS) -> None:
        self.engine, self.job_id, self.progress = engine, job_id, progress
        self._first: dict[str, Any] | None = None
        self._stored_at = 0.0

    def __call__(self, step: int, steps: int, loss: float) -> None:
        if self._first is None:
            self._first = {"first_step": step, "train_started_at": utcnow().isoformat()}
            self.progress.start(f"retrain job {self.job_id}", steps, done=step)
        self.progress.advance(step, f"loss {loss:.4f}")
        now = time.monotonic()
        if now - self._stored_at >= PROGRESS_EVERY_S or step == steps:
            self._stored_at = now
            stored = {"step": step, "steps": steps, "loss": round(loss, 4), "updated_at": utcnow().isoformat()}
            set_progress(self.engine, self.job_id, stage="train", **stored, **self._first)


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


@dataclass(frozen=True)
class JobContext:
    """What every stage of a job reads: the registry, the live head, the target, the kind to train."""

    config: Config
    engine: Engine
    job: JobView
    registry: HeadRegistry
    live: HeadManifest
    live_dir: Path
    live_draft: Draft
    target: TargetModel
    kind: str


@dataclass(frozen=True)
class Candidate:
    """A trained head, loaded for the target, and the directory the registry takes it from."""

    draft: Draft
    directory: Path
    source: str


def job_trainer(config: Config, job: JobView) -> str:
    """internal or external: as the job was queued (`specwatch retrain --trainer`), else the config's."""
    return str(job.progress.get("trainer") or config.retrain.training.trainer)


def train_internal(context: JobContext, corpus: Corpus, progress: Progress) -> Candidate:
    """specwatch's own trainer, in this process."""
    job = context.job
    try:
        result = train_head(
            context.target,
            corpus,
            kind=context.kind,
            warm_start=context.live_dir if context.kind == context.live_draft.kind else None,
            settings=context.config.retrain.training,
            work_dir=job.work_dir / "train",
            progress=TrainingProgress(context.engine, job.id, progress),
        )
    finally:
        progress.finish()
    directory = save_candidate(result, job.work_dir / "candidate", corpus)
    return Candidate(result.draft, directory, f"retrain job {job.id}")


def external_values(context: JobContext, corpus: Corpus, corpus_dir: Path, paths: ExternalPaths) -> dict[str, str]:
    """The external command's placeholders for this job: aux layers and draft vocabulary of the live
    eagle3 head (the target's defaults for another kind), the live head as a speculators checkpoint,
    and the train side of the corpus in specwatch's and the trainers' formats, in a directory of its
    own (the holdout stays in `corpus_dir`: it never leaves specwatch)."""
    config, target = context.config, context.target
    assert config.models.target is not None
    live_eagle3 = context.live_draft if isinstance(context.live_draft, Eagle3Head) else None
    if live_eagle3 is not None:
        aux_layer_ids = tuple(live_eagle3.eagle3_config.aux_layer_ids)
        vocab_size = live_eagle3.eagle3_config.draft_vocab_size
        served = prepare_served_head(
            DeployConfig(format="speculators"), context.registry, context.live.version, lambda: target
        )
        live_head: Path | None = served.export_dir
    else:
        aux_layer_ids, vocab_size, live_head = default_aux_layer_ids(target.num_layers), target.vocab_size, None
    paths.corpus.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(corpus_dir / "train.jsonl", paths.corpus / "train.jsonl")
    files = write_trainer_corpora(
        corpus,
        paths.corpus,
        target=str(config.models.target),
        aux_layer_ids=aux_layer_ids,
        draft_vocab_size=vocab_size,
        seed=config.retrain.training.seed,
    )
    return placeholder_values(
        target=config.models.target,
        aux_layer_ids=aux_layer_ids,
        draft_vocab_size=vocab_size,
        corpus=files,
        live_head=live_head,
        output_dir=paths.output,
        gpus=config.retrain.external.gpus,
    )


def train_external(context: JobContext, corpus: Corpus, corpus_dir: Path) -> Candidate:
    """retrain.external.command (retrain.external): files in, an EAGLE-3 checkpoint out, imported."""
    if context.kind != "eagle3":
        raise RetrainFailed(f"the external trainer trains eagle3 heads, not {context.kind}: retrain --kind eagle3")
    paths = ExternalPaths.of(context.job.work_dir)
    set_progress(context.engine, context.job.id, stage="train", trainer="external")
    values = external_values(context, corpus, corpus_dir, paths)
    checkpoint = run_external_trainer(context.config.retrain.external, context.engine, context.job.id, paths, values)
    try:
        draft = load_draft(checkpoint, context.target)
    except DecoderError as error:
        raise RetrainFailed(f"the external trainer's checkpoint {checkpoint} does not load: {error}") from error
    if draft.kind != context.kind:
        raise RetrainFailed(f"the external trainer wrote a {draft.kind} head in {checkpoint}, not {context.kind}")
    log.info("imported the external trainer's %s head from %s", draft.kind, checkpoint)
    return Candidate(draft, checkpoint, f"retrain job {context.job.id} (external trainer)")


def run_job(
    config: Config, engine: Engine, job: JobView, *, announce: Announce, progress: Progress = NO_PROGRESS
) -> JobOutcome:
    """The stages of one retrain (the caller holds the lock); `progress` hears of the training steps."""
    if config.models.target is None or config.models.draft is None:
        raise ValueError("models.target and models.draft must be set to retrain")
    registry = HeadRegistry(config.heads_dir)
    live = registry.ensure_seed(config.models.draft)
    live_dir = registry.live_path()
    assert live_dir is not None
    target = load_target(config.models.target, device=config.retrain.training.device)
    live_draft = load_draft(live_dir, target)
    kind = live_draft.kind if job.kind == "live" else job.kind
    context = JobContext(config, engine, job, registry, live, live_dir, live_draft, target, kind)

    set_progress(engine, job.id, stage="corpus")
    corpus = prepare_corpus(config, engine, job, live.version, target)
    update_job(engine, job.id, corpus_hash=corpus.manifest.content_hash)

    set_progress(engine, job.id, stage="train", first_step=None, train_started_at=None)
    if job_trainer(config, job) == "external":
        candidate = train_external(context, corpus, job.work_dir / "corpus")
    else:
        candidate = train_internal(context, corpus, progress)
    return judge_and_deploy(context, corpus, candidate, announce)


def judge_and_deploy(context: JobContext, corpus: Corpus, candidate: Candidate, announce: Announce) -> JobOutcome:
    """What follows training, whoever trained: gate on the holdout, register, announce, deploy or refuse."""
    config, engine, job, registry, live = context.config, context.engine, context.job, context.registry, context.live
    set_progress(engine, job.id, stage="gate")
    decision = run_gate(
        context.target, context.live_draft, candidate.draft, corpus.holdout, GateOptions.from_config(config)
    )
    manifest = corpus.manifest.model_dump(mode="json")
    corpus_info = {key: manifest[key] for key in ("content_hash", "counts", "since", "until")}
    registered = registry.register(
        candidate.directory,
        parent=live.version,
        source=candidate.source,
        corpus=corpus_info,
        metrics=decision.overall.to_dict(),
    )
    registry.update(registered.version, gate=decision.to_dict())
    update_job(engine, job.id, candidate_version=registered.version)
    announce(GateAnnouncement(job, registered.version, decision.promote, decision.summary(), decision.overall))
    if not decision.promote:
        registry.update(registered.version, state="refused")
        record_event(
            engine, "refused", registered.version, live.version, decision.summary(), decision.to_dict(), job.id
        )
        return JobOutcome(job.id, "refused", decision.summary(), registered.version, decision)
    target = context.target
    return deploy(config, engine, registry, registered.version, job.id, decision, decision.summary(), lambda: target)


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


def execute_job(
    config: Config, engine: Engine, job: JobView, *, announce: Announce, progress: Progress = NO_PROGRESS
) -> JobOutcome:
    """Runs a job under the retrain lock (LockBusy if another one is alive); never leaves it
    'running': it ends succeeded, refused or failed (with the error). `progress` hears of the training steps."""
    mark_dead_jobs(engine, config.retrain.stale_after_s)
    settings = config.retrain
    lock = JobLock(engine, job.id, stale_after_s=settings.stale_after_s, heartbeat_s=settings.heartbeat_s)
    with lock, job_log(job.work_dir / "job.log"):
        log.info("retrain job %d (%s: %s) starts, attempt %d", job.id, job.trigger, job.reason, job.attempts + 1)
        try:
            outcome = run_job(config, engine, job, announce=announce, progress=progress)
        except Exception as error:
            log.exception("retrain job %d failed", job.id)
            finish(engine, job.id, "failed", error=f"{type(error).__name__}: {error}")
            return JobOutcome(job.id, "failed", f"{type(error).__name__}: {error}")
        set_progress(engine, job.id, stage="done")
        finish(engine, job.id, outcome.state, decision=outcome.decision)
        log.info("retrain job %d %s: %s", job.id, outcome.state, outcome.summary)
    return outcome
