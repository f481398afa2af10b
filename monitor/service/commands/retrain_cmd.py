"""`specwatch retrain [--now] [--kind K] [--trainer internal|external] [--detach]`, `retrain status`,
`heads list|import|export`, `rollback [VERSION]`: retraining and the head registry by hand.

A retrain in the foreground and `heads export` show their progress (monitor.service.progress): a bar with
ETA on a terminal, else a log line every 10 s (so the daemon's retrain process logs its steps too).
`retrain status` states a training job's step, steps and ETA from its row.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monitor.service.commands.common import CommandError, add_config_argument, load_config, open_database, print_json
from monitor.service.progress import ProgressDisplay, eta_seconds, format_duration

if TYPE_CHECKING:
    from retrain.jobs import JobView


def draft_kind_argument(kind: str) -> str:
    """--kind: "live" or a registered draft kind (checked against decoder's registry)."""
    from monitor.base.config import check_draft_kind

    try:
        return check_draft_kind(kind)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    retrain = subparsers.add_parser(
        "retrain", help="retrain the draft head: resume an interrupted job, run a due one, or --now"
    )
    add_config_argument(retrain)
    retrain.add_argument("--now", action="store_true", help="retrain now even if none is due")
    retrain.add_argument(
        "--kind",
        type=draft_kind_argument,
        default=None,
        metavar="KIND",
        help="live or a registered draft kind (default: retrain.training.kind)",
    )
    retrain.add_argument(
        "--trainer",
        choices=("internal", "external"),
        default=None,
        help="internal (this process) or external (retrain.external.command, e.g. speculators under torchrun); "
        "default: retrain.training.trainer",
    )
    retrain.add_argument("--detach", action="store_true", help="run the job in the background; print its id")
    retrain.add_argument("--json", action="store_true", help="machine-readable output")
    retrain.set_defaults(handler=retrain_command)
    actions = retrain.add_subparsers(dest="retrain_command", metavar="ACTION")
    status = actions.add_parser("status", help="recent retrain jobs: state, stage, progress, heartbeat, decision")
    status.add_argument("--limit", type=int, default=10)
    status.set_defaults(handler=status_command)
    run_job = actions.add_parser("run-job", help="run one queued or interrupted job (used by the scheduler)")
    run_job.add_argument("job_id", type=int)
    run_job.set_defaults(handler=run_job_command)
    watch = actions.add_parser("watch", help="judge the latest deploy against the head it replaced; roll back")
    watch.set_defaults(handler=watch_command)
    for action in (status, run_job, watch):
        add_config_argument(action)
        action.add_argument("--json", action="store_true", help="machine-readable output")

    heads = subparsers.add_parser("heads", help="the head registry: versions, the live one, import, export")
    head_actions = heads.add_subparsers(dest="heads_command", metavar="ACTION", required=True)
    listing = head_actions.add_parser("list", help="registered heads, newest first; the live one marked")
    listing.set_defaults(handler=heads_list_command)
    importing = head_actions.add_parser(
        "import", help="register a head as an engine serves it (speculators, SGLang, vLLM MEDUSA, MTP, causal LM)"
    )
    importing.add_argument(
        "directory", type=Path, help="the head's directory, or 'mtp': the MTP layers of models.target"
    )
    importing.add_argument("--live", action="store_true", help="make it the live head (replay measures it; no hook)")
    importing.set_defaults(handler=heads_import_command)
    export = head_actions.add_parser("export", help="write a head in a serving engine's format")
    export.add_argument("version", help="version or unique prefix (default: the live head)", nargs="?")
    export.add_argument("--out", required=True, type=Path, help="output directory (new or empty)")
    export.add_argument(
        "--format",
        dest="head_format",
        default="auto",
        help="speculators, sglang, vllm-medusa, mtp, causal-lm (default: what a deploy would hand the engine)",
    )
    export.set_defaults(handler=heads_export_command)
    for action in (listing, importing, export):
        add_config_argument(action)
        action.add_argument("--json", action="store_true", help="machine-readable output")

    rollback = subparsers.add_parser("rollback", help="make an earlier head live again (default: the previous one)")
    rollback.add_argument("version", nargs="?", help="version or unique prefix")
    rollback.add_argument("--reason", default="by hand", help="recorded with the rollback")
    add_config_argument(rollback)
    rollback.add_argument("--json", action="store_true", help="machine-readable output")
    rollback.set_defaults(handler=rollback_command)


def config_path(args: argparse.Namespace) -> Path:
    from monitor.base.config import default_config_path

    return (Path(args.config) if args.config else default_config_path()).resolve()


def retrain_command(args: argparse.Namespace) -> int:
    from retrain.jobs import mark_dead_jobs, resumable_job
    from retrain.schedule import queue_job, recapture_due

    config = load_config(args)
    engine = open_database(config)
    mark_dead_jobs(engine, config.retrain.stale_after_s)
    job = resumable_job(engine)
    if job is None:
        reason = "by hand (--now)" if args.now else recapture_due(config, engine)
        if reason is None:
            engine.dispose()
            print("no retrain due: no breach or drop alert has fired long enough (or in cooldown); use --now")
            return 0
        trigger = "manual" if args.now else "recapture"
        try:
            job = queue_job(config, engine, trigger=trigger, reason=reason, kind=args.kind, trainer=args.trainer)
        except ValueError as error:
            engine.dispose()
            raise CommandError(str(error)) from None
        if job is None:
            engine.dispose()
            raise CommandError("a retrain is already queued or running; see `specwatch retrain status`")
    else:
        print(f"resuming interrupted retrain job {job.id} from {job.work_dir}", file=sys.stderr if args.json else None)
    return launch(args, config, engine, job)


def launch(args: argparse.Namespace, config: Any, engine: Any, job: Any) -> int:
    from monitor.service.gate_notice import gate_decision_notifier
    from retrain.jobs import LockBusy
    from retrain.pipeline import execute_job
    from retrain.schedule import spawn_job

    if args.detach:
        process = spawn_job(config_path(args), job)
        engine.dispose()
        result = {"job": job.id, "pid": process.pid, "log": str(job.work_dir / "job.log")}
        print_json(result) if args.json else print(f"retrain job {job.id} started (pid {process.pid}): {result['log']}")
        return 0
    try:
        with ProgressDisplay() as progress:
            outcome = execute_job(
                config, engine, job, announce=gate_decision_notifier(config, engine), progress=progress
            )
    except LockBusy as busy:
        raise CommandError(str(busy)) from None
    finally:
        engine.dispose()
    if args.json:
        print_json(outcome.to_dict())
    else:
        print(f"retrain job {outcome.job_id} {outcome.state}: {outcome.summary}")
    return 0 if outcome.state in ("succeeded", "refused") else 1


def run_job_command(args: argparse.Namespace) -> int:
    from retrain.jobs import get_job

    config = load_config(args)
    engine = open_database(config)
    job = get_job(engine, args.job_id)
    if job is None:
        raise CommandError(f"no retrain job {args.job_id}")
    if job.state not in ("queued", "interrupted", "running"):
        raise CommandError(f"retrain job {job.id} is {job.state}; nothing to run")
    args.detach = False
    return launch(args, config, engine, job)


def status_command(args: argparse.Namespace) -> int:
    from monitor.base.db import utcnow
    from retrain.jobs import mark_dead_jobs, recent_jobs

    config = load_config(args)
    engine = open_database(config)
    mark_dead_jobs(engine, config.retrain.stale_after_s)
    jobs = recent_jobs(engine, args.limit)
    engine.dispose()
    now = utcnow()
    if args.json:
        print_json([{**job.to_dict(), "eta_s": training_eta(job, now)} for job in jobs])
        return 0
    if not jobs:
        print("no retrain jobs yet")
    for job in jobs:
        progress = job.progress
        stage = progress.get("stage", "-")
        if stage == "train" and progress.get("steps"):
            stage = f"train step {progress.get('step', 0)}/{progress['steps']}"
            if job.state == "running":
                stage += f", ETA {format_duration(training_eta(job, now))}"
            stage += f", loss {progress.get('loss', '-')}"
        beat = ""
        if job.state == "running" and job.heartbeat_at is not None:
            beat = f", heartbeat {(now - job.heartbeat_at).total_seconds():.0f}s ago"
        print(f"job {job.id:>4} {job.state:<11} {job.trigger:<9} {job.kind:<11} {stage}{beat}")
        detail = job.error or job.reason  # the stored decision has no summary line (GateDecision.summary())
        print(f"          {str(detail)[:160]}")
    return 0


def training_eta(job: JobView, now: datetime) -> float | None:
    """Seconds of training left for a running job in its train stage, from its
    stored progress: the rate from the first step this attempt reported to its last report, less the time
    since that report; None otherwise, or when the row cannot tell."""
    progress = job.progress
    if job.state != "running" or progress.get("stage") != "train":
        return None
    try:
        started = datetime.fromisoformat(progress["train_started_at"])
        updated = datetime.fromisoformat(progress["updated_at"])
        step, steps, first = int(progress["step"]), int(progress["steps"]), int(progress["first_step"])
    except (KeyError, TypeError, ValueError):
        return None
    left = eta_seconds(step, steps, (updated - started).total_seconds(), first)
    return None if left is None else max(0.0, left - (now - updated).total_seconds())


def watch_command(args: argparse.Namespace) -> int:
    from retrain.watch import watch_latest_deploy

    config = load_config(args)
    engine = open_database(config)
    verdict = watch_latest_deploy(config, engine)
    engine.dispose()
    if verdict is None:
        print("no deploy under watch")
        return 0
    print_json(verdict.to_dict()) if args.json else print(verdict.summary)
    return 0


def registry(config: Any) -> Any:
    from retrain.registry import HeadRegistry

    return HeadRegistry(config.heads_dir)


def gate_line(stored: dict[str, Any] | None) -> str:
    """The gate's one-line summary of a head's stored decision; empty for a head without one (the seed)."""
    from retrain.gate_decision import GateDecision

    return GateDecision.from_dict(stored).summary() if stored else ""


def heads_list_command(args: argparse.Namespace) -> int:
    config = load_config(args)
    heads = registry(config).list()
    if args.json:
        print_json([head.model_dump(mode="json") for head in heads])
        return 0
    if not heads:
        print(f"no heads registered under {config.heads_dir} (the first retrain registers models.draft as the seed)")
    for head in heads:
        marker = "*" if head.state == "live" else " "
        gate = gate_line(head.gate)
        print(
            f"{marker} {head.version} {head.kind:<11} {head.state:<11} {head.created_at:%Y-%m-%d %H:%M} "
            f"parent {head.parent or '-':<16} {head.source}"
        )
        if gate:
            print(f"    gate: {gate[:160]}")
    return 0


def heads_import_command(args: argparse.Namespace) -> int:
    from decoder import DecoderError, load_target
    from retrain.registry import RegistryError
    from retrain.serving import import_head

    config = load_config(args)
    if config.models.target is None:
        raise CommandError("models.target is not set: a head is imported for the target it drafts for")
    heads = registry(config)
    try:
        target = load_target(config.models.target, device=config.models.device)
        head = import_head(heads, draft_source(config, args.directory), target)
        if args.live:
            heads.switch(head.version, reason=f"imported by hand from {args.directory}")
    except (DecoderError, RegistryError, OSError) as error:
        raise CommandError(str(error)) from None
    result = {"version": head.version, "kind": head.kind, "source": head.source, "live": bool(args.live)}
    print_json(result) if args.json else print(
        f"imported {head.kind} head {head.version}{' (live)' if args.live else ''}"
    )
    return 0


def draft_source(config: Any, directory: Path) -> Path:
    """The directory to import: 'mtp' names the MTP layers carried by models.target."""
    return config.models.target if str(directory) == "mtp" else directory


def heads_export_command(args: argparse.Namespace) -> int:
    from decoder import DecoderError, load_target
    from monitor.base.config import DeployConfig, check_head_format
    from retrain.registry import RegistryError
    from retrain.serving import export_head, serving_format

    config = load_config(args)
    heads = registry(config)
    try:
        head = heads.get(args.version) if args.version else heads.live()
        if head is None or config.models.target is None:
            raise CommandError("no live head and no version given (or models.target unset)")
        target_dir, device = config.models.target, config.models.device
        head_format = serving_format(DeployConfig(format=check_head_format(args.head_format)), heads, head.version)
        with ProgressDisplay() as progress:
            exported = export_head(
                heads, head.version, head_format, args.out, lambda: load_target(target_dir, device=device), progress
            )
    except (DecoderError, RegistryError, ValueError, OSError) as error:
        raise CommandError(str(error)) from None
    loadable = dict(exported.engine_loadable)
    result = {"version": head.version, "format": head_format, "out": str(args.out), "engine_loadable": loadable}
    if args.json:
        print_json(result | {"details": exported.details})
        return 0
    print(f"exported {head.version} as {head_format} to {args.out}")
    for engine, proven in loadable.items():
        print(f"  {engine}: {'proven to load it' if proven else 'not proven'}")
    for key, reasons in exported.details.items():
        if key.endswith("_reasons"):
            for reason in reasons:
                print(f"  - {reason}")
    return 0


def rollback_command(args: argparse.Namespace) -> int:
    from retrain.registry import RegistryError
    from retrain.watch import roll_back

    config = load_config(args)
    engine = open_database(config)
    try:
        result = roll_back(config, engine, args.version, reason=args.reason)
    except RegistryError as error:
        raise CommandError(str(error)) from None
    finally:
        engine.dispose()
    print_json(result) if args.json else print(f"live head is {result['live']} again (was {result['was']})")
    if not result["hook"]["ok"]:
        print(f"deploy hook failed: {result['hook']['detail']}", file=sys.stderr)
        return 1
    return 0
