"""`specwatch report`: write the self-contained HTML report and print where it went."""

from __future__ import annotations

import argparse
from pathlib import Path

from monitor.service.commands.common import CommandError, add_config_argument, load_config, open_database


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "report", help="one self-contained HTML page: alpha over time per segment, findings, drift reports"
    )
    add_config_argument(parser)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="FILE",
        help="file to write (default: <data_dir>/reports/specwatch-report-<UTC>.html)",
    )
    parser.add_argument(
        "--top", type=int, default=6, metavar="N", help="segments shown besides all traffic, busiest first"
    )
    parser.add_argument("--days", type=float, default=14.0, metavar="D", help="days of traffic charted")
    parser.add_argument(
        "--window", default=None, metavar="W", help="window of the current numbers (default: the longest configured)"
    )
    parser.set_defaults(handler=report_command)


def report_command(args: argparse.Namespace) -> int:
    from monitor.replay.live_models import ModelsUnavailable, live_draft_dir
    from monitor.service.report import build_report, write_report
    from retrain.registry import head_version

    config = load_config(args)
    if args.window is not None and args.window not in config.stats.windows:
        raise CommandError(f"--window {args.window}: not one of the configured windows {config.stats.windows}")
    if args.top < 0 or args.days <= 0:
        raise CommandError("--top must be >= 0 and --days > 0")
    try:
        draft = live_draft_dir(config)
    except ModelsUnavailable as error:
        raise CommandError(str(error)) from None
    live = head_version(draft) if draft is not None and draft.is_dir() else None
    engine = open_database(config)
    try:
        data = build_report(config, engine, live_draft=live, top=args.top, days=args.days, window=args.window)
    finally:
        engine.dispose()
    print(write_report(config, data, args.out))
    return 0
