"""`specwatch alerts list|show|silence|unsilence|silences|test|dispatch`: the alert lifecycle by hand."""

from __future__ import annotations

import argparse
import getpass
import re
import sys
from datetime import datetime, timedelta
from typing import Any

from monitor.service.commands.common import CommandError, add_config_argument, load_config, open_database, print_json

STATE_COLOURS = {"critical": "\033[31m", "warning": "\033[33m", "resolved": "\033[32m"}
RESET = "\033[0m"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("alerts", help="alerts: list, show, silence, test the notification route")
    commands = parser.add_subparsers(dest="alerts_command", metavar="ACTION", required=True)

    listing = commands.add_parser("list", help="firing alerts (muted ones marked)")
    listing.add_argument("--all", action="store_true", help="also alerts resolved in the last 24 hours")
    listing.set_defaults(handler=list_command)

    show = commands.add_parser("show", help="one alert: labels, evidence, notifications")
    show.add_argument("fingerprint", help="fingerprint or a unique prefix of it")
    show.set_defaults(handler=show_command)

    silence = commands.add_parser("silence", help="mute alerts matching label matchers until a time")
    silence.add_argument(
        "matchers", nargs="+", help='label matchers, all must match: segment=lang=zh "alertname=~Acceptance.*"'
    )
    until = silence.add_mutually_exclusive_group(required=True)
    until.add_argument("--duration", help="how long, e.g. 30m, 2h, 1d")
    until.add_argument("--until", help="end time, ISO 8601 (UTC unless it has an offset)")
    silence.add_argument("--comment", required=True, help="why (shown with the silence)")
    silence.add_argument("--author", default=None, help="who (default: the current user)")
    silence.set_defaults(handler=silence_command)

    unsilence = commands.add_parser("unsilence", help="end a silence now")
    unsilence.add_argument("silence_id", type=int)
    unsilence.set_defaults(handler=unsilence_command)

    silences = commands.add_parser("silences", help="active silences")
    silences.add_argument("--all", action="store_true", help="also expired ones")
    silences.set_defaults(handler=silences_command)

    test = commands.add_parser("test", help="send a sample alert through a receiver to check the wiring")
    test.add_argument("--receiver", default=None, help="receiver name (default: alerts.default_receiver)")
    test.set_defaults(handler=test_command)

    dispatch = commands.add_parser("dispatch", help="send pending notifications now")
    dispatch.set_defaults(handler=dispatch_command)

    for sub in (listing, show, silence, unsilence, silences, test, dispatch):
        add_config_argument(sub)
        sub.add_argument("--json", action="store_true", help="machine-readable output")


def list_command(args: argparse.Namespace) -> int:
    from alerts.queries import alert_views
    from monitor.base.db import utcnow

    config = load_config(args)
    engine = open_database(config)
    since = utcnow() - timedelta(hours=24) if args.all else None
    views = alert_views(config.alerts, engine, include_resolved_since=since)
    engine.dispose()
    if args.json:
        print_json([view.to_dict() for view in views])
        return 0
    if not views:
        print("no alerts firing")
        return 0
    colour = sys.stdout.isatty()
    print(f"{'FINGERPRINT':<17} {'ALERT':<25} {'SEGMENT':<30} {'SEVERITY':<9} {'STATE':<9} SINCE")
    for view in views:
        alert = view.alert
        severity = alert.labels.get("severity", "")
        state = alert.status if view.muted_by is None else "muted"
        line = (
            f"{alert.fingerprint:<17} {alert.name:<25} {alert.labels.get('segment', ''):<30} {severity:<9} "
            f"{state:<9} {alert.starts_at:%Y-%m-%d %H:%M}"
        )
        if view.muted_by:
            line += f"  ({view.muted_by})"
        key = "resolved" if alert.status == "resolved" else severity
        print(f"{STATE_COLOURS.get(key, '')}{line}{RESET}" if colour and key in STATE_COLOURS else line)
    return 0


def show_command(args: argparse.Namespace) -> int:
    from alerts.lifecycle import as_alert
    from alerts.queries import find_alert, notifications_about

    config = load_config(args)
    engine = open_database(config)
    try:
        row = find_alert(engine, args.fingerprint)
    except LookupError as error:
        raise CommandError(str(error)) from None
    if row is None:
        raise CommandError(f"no alert with fingerprint {args.fingerprint!r}; see `specwatch alerts list --all`")
    alert = as_alert(row)
    detail: dict[str, Any] = {**alert.to_dict(), "notifications": notifications_about(engine, row.fingerprint)}
    engine.dispose()
    if args.json:
        print_json(detail)
        return 0
    print(f"{alert.name} [{alert.labels.get('severity')}] {alert.status} since {alert.starts_at:%Y-%m-%d %H:%M} UTC")
    print(f"  fingerprint {alert.fingerprint}; labels {alert.labels}")
    print(f"  {alert.annotations.get('summary', '')}")
    for key, value in alert.annotations.get("evidence", {}).items():
        print(f"    {key}: {value}")
    for note in detail["notifications"]:
        state = f"sent {note['sent_at']:%H:%M:%S}" if note["sent_at"] else f"pending ({note['last_error'] or 'queued'})"
        print(f"  notification {note['id']} -> {note['receiver']} {note['kind']}: {state}")
    return 0


def parse_end(args: argparse.Namespace) -> datetime:
    from monitor.base.config import DURATION_PATTERN, window_length
    from monitor.base.db import as_utc, utcnow

    if args.duration:
        if not re.fullmatch(DURATION_PATTERN, args.duration):
            raise CommandError(f"--duration {args.duration!r}: expected a number and a unit, e.g. 30m, 2h, 1d")
        return utcnow() + window_length(args.duration)
    try:
        return as_utc(datetime.fromisoformat(args.until))
    except ValueError:
        raise CommandError(f"--until {args.until!r}: not an ISO 8601 time") from None


def silence_command(args: argparse.Namespace) -> int:
    from alerts.matchers import MatcherError
    from alerts.queries import add_silence

    config = load_config(args)
    ends_at = parse_end(args)
    engine = open_database(config)
    try:
        silence_id = add_silence(engine, args.matchers, ends_at, args.comment, args.author or getpass.getuser())
    except (MatcherError, ValueError) as error:
        raise CommandError(str(error)) from None
    finally:
        engine.dispose()
    if args.json:
        print_json({"id": silence_id, "ends_at": ends_at})
    else:
        print(f"silence {silence_id} until {ends_at:%Y-%m-%d %H:%M} UTC: {' '.join(args.matchers)}")
    return 0


def unsilence_command(args: argparse.Namespace) -> int:
    from alerts.queries import expire_silence

    config = load_config(args)
    engine = open_database(config)
    ended = expire_silence(engine, args.silence_id)
    engine.dispose()
    if not ended:
        raise CommandError(f"no active silence {args.silence_id}; see `specwatch alerts silences`")
    print_json({"id": args.silence_id, "ended": True}) if args.json else print(f"silence {args.silence_id} ended")
    return 0


def silences_command(args: argparse.Namespace) -> int:
    from alerts.queries import silence_rows

    config = load_config(args)
    engine = open_database(config)
    rows = silence_rows(engine, include_expired=args.all)
    engine.dispose()
    if args.json:
        print_json(rows)
        return 0
    for row in rows:
        state = "active" if row["active"] else "expired"
        print(
            f"{row['id']:>4} {state:<8} until {row['ends_at']:%Y-%m-%d %H:%M} {' '.join(row['matchers'])}"
            f"  by {row['created_by']}: {row['comment']}"
        )
    if not rows:
        print("no silences")
    return 0


def test_command(args: argparse.Namespace) -> int:
    from alerts.outbox import dispatch
    from alerts.queries import outbox_row, queue_test_notification

    config = load_config(args)
    receiver = args.receiver or config.alerts.default_receiver
    if receiver not in config.alerts.receivers:
        raise CommandError(f"no receiver {receiver!r}; configured: {', '.join(sorted(config.alerts.receivers))}")
    engine = open_database(config)
    message_id = queue_test_notification(config.alerts, engine, receiver)
    report = dispatch(config.alerts, engine)
    row = outbox_row(engine, message_id)
    engine.dispose()
    delivered = row is not None and row.sent_at is not None
    busy = receiver in report.busy
    result = {
        "receiver": receiver,
        "notification": message_id,
        "delivered": delivered,
        "sent_by_another_dispatcher": busy,
        "errors": report.errors,
    }
    if args.json:
        print_json(result)
    elif delivered:
        print(f"test notification {message_id} delivered to {receiver}")
    elif busy:
        print(f"test notification {message_id} queued: another dispatcher is sending to {receiver} and will send it")
    else:
        print(f"test notification {message_id} NOT delivered to {receiver}; it stays queued", file=sys.stderr)
        for error in report.errors:
            print(f"  {error}", file=sys.stderr)
    return 0 if delivered or busy else 1


def dispatch_command(args: argparse.Namespace) -> int:
    from alerts.outbox import dispatch, pending_count

    config = load_config(args)
    engine = open_database(config)
    report = dispatch(config.alerts, engine)
    pending = pending_count(engine)
    engine.dispose()
    summary = {"sent": report.sent, "recovered": report.recovered, "failed": report.failed, "pending": pending}
    if args.json:
        print_json({**summary, "busy": report.busy, "errors": report.errors})
    else:
        print(", ".join(f"{key} {value}" for key, value in summary.items()))
        for receiver in report.busy:
            print(f"  {receiver}: another dispatcher is sending its queue")
        for error in report.errors:
            print(f"  {error}", file=sys.stderr)
    return 0 if not report.failed else 1
