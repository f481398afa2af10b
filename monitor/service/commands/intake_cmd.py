"""`specwatch ingest` (one-shot import) and `specwatch intake errors|stats|serve|purge`."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from sqlalchemy import select
from sqlalchemy.orm import Session

from monitor.base.config import Config, SecretUnavailable
from monitor.base.db import IntakeCounter, QuarantinedRecord
from monitor.base.db_timeouts import abort_database_calls_after
from monitor.intake.follow import FileFollower, import_logs
from monitor.intake.http import ExposedWithoutToken, IntakeHTTPServer
from monitor.intake.pipeline import IntakePipeline, IntakeRefused
from monitor.intake.retention import purge_expired
from monitor.service.commands.common import CommandError, add_config_argument, load_config, open_database, print_json
from monitor.service.progress import ProgressDisplay


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ingest = subparsers.add_parser(
        "ingest", help="import JSONL traffic logs once (files, directories, .gz), with a progress bar on a terminal"
    )
    add_config_argument(ingest)
    ingest.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="log file or directory")
    ingest.add_argument("--format", choices=["auto", "specwatch", "openai"], help="record format (default: config)")
    ingest.set_defaults(handler=ingest_command)

    parser = subparsers.add_parser("intake", help="intake errors, counters, the HTTP endpoint, retention")
    commands = parser.add_subparsers(dest="intake_command", metavar="ACTION", required=True)
    errors = commands.add_parser("errors", help="list quarantined records with their reason and position")
    add_config_argument(errors)
    errors.add_argument("--json", action="store_true", help="machine-readable output")
    errors.add_argument("--limit", type=int, default=50, help="newest N records (default 50)")
    errors.set_defaults(handler=errors_command)
    stats = commands.add_parser(
        "stats", help="records, stored, duplicates, sampled out, quarantined, engine counts (live) per source"
    )
    add_config_argument(stats)
    stats.add_argument("--json", action="store_true", help="machine-readable output")
    stats.set_defaults(handler=stats_command)
    serve = commands.add_parser(
        "serve", help="serve POST /v1/samples and follow the configured logs until SIGTERM (intake only)"
    )
    add_config_argument(serve)
    serve.set_defaults(handler=serve_command)
    purge = commands.add_parser("purge", help="delete samples and quarantined records past retention")
    add_config_argument(purge)
    purge.set_defaults(handler=purge_command)


def with_format(config: Config, record_format: str | None) -> Config:
    if record_format is None:
        return config
    return config.model_copy(update={"intake": config.intake.model_copy(update={"format": record_format})})


def ingest_command(args: argparse.Namespace) -> int:
    missing = [str(path) for path in args.paths if not path.exists()]
    if missing:
        raise CommandError(f"no such file or directory: {', '.join(missing)}")
    config = with_format(load_config(args), args.format)
    engine = open_database(config)
    try:
        with ProgressDisplay() as progress:
            total = import_logs(config, engine, args.paths, progress)
    except IntakeRefused as refused:  # the database refuses even the quarantine: a retry cannot help
        raise CommandError(f"{refused}; nothing more was read") from None
    finally:
        engine.dispose()
    if total.quarantined:
        print("see them with: specwatch intake errors", file=sys.stderr)
    return 0


def errors_command(args: argparse.Namespace) -> int:
    engine = open_database(load_config(args))
    with Session(engine) as session:
        query = select(QuarantinedRecord).order_by(QuarantinedRecord.id.desc()).limit(args.limit)
        rows = list(session.scalars(query))
    items = [
        {
            "id": row.id,
            "received_at": row.received_at.isoformat(),
            "source": row.source,
            "position": row.position,
            "reason": row.reason,
            "bytes": row.record_bytes,
            "sha256": row.record_sha256,
            "excerpt": row.excerpt,
        }
        for row in rows
    ]
    if args.json:
        print_json(items)
    elif not items:
        print("no quarantined records")
    else:
        for row in rows:
            print(f"{row.received_at:%Y-%m-%d %H:%M:%S}  {row.source}  {row.position}\n    {row.reason}")
    engine.dispose()
    return 0


def stats_command(args: argparse.Namespace) -> int:
    engine = open_database(load_config(args))
    with Session(engine) as session:
        rows = list(session.scalars(select(IntakeCounter).order_by(IntakeCounter.source)))
    fields = ["records", "stored", "duplicates", "sampled_out", "quarantined", "live", "live_refused"]
    items = [{"source": row.source, **{name: getattr(row, name) for name in fields}} for row in rows]
    if args.json:
        print_json(items)
    else:
        print(f"{'source':50} " + " ".join(f"{name:>12}" for name in fields))
        for item in items:
            print(f"{item['source'][-50:]:50} " + " ".join(f"{item[name]:>12}" for name in fields))
    engine.dispose()
    return 0


def serve_command(args: argparse.Namespace) -> int:
    config = load_config(args)
    engine = open_database(config)
    pipeline = IntakePipeline(config, engine)
    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        if not stop.is_set():  # a database call still unanswered halfway to the stop timeout then fails
            abort_database_calls_after(config.daemon.stop_timeout_s / 2)
        stop.set()

    server = http_intake(config, pipeline) if config.intake.http.enabled else None
    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    if server is not None:
        server.start()
        print(f"intake listening on {server.url}/v1/samples", flush=True)
    follower = FileFollower(pipeline, engine, config.intake.follow)
    try:
        follower.run(stop)
    finally:
        if server:
            server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        engine.dispose()
    return 0


def http_intake(config: Config, pipeline: IntakePipeline) -> IntakeHTTPServer:
    """The HTTP endpoint, or CommandError (exit 2, no traceback) when it cannot be served as configured."""
    http = config.intake.http
    try:
        return IntakeHTTPServer(http, pipeline, http.token.read())
    except (ExposedWithoutToken, SecretUnavailable) as error:
        raise CommandError(str(error)) from None
    except OSError as error:
        raise CommandError(f"cannot serve intake on {http.host}:{http.port}: {error.strerror}") from None


def purge_command(args: argparse.Namespace) -> int:
    config = load_config(args)
    engine = open_database(config)
    report = purge_expired(engine, config.retention)
    print(
        f"purged {report.samples} samples, {report.live_results} engine-reported counts, "
        f"{report.quarantined} quarantined records, {report.engine_scrapes} engine scrapes"
    )
    engine.dispose()
    return 0
