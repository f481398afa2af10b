"""`specwatch evaluate`, `specwatch status` and `specwatch findings`: the numbers and what they mean."""

from __future__ import annotations

import argparse
import sys

from monitor.base.config import Config
from monitor.service.commands.common import CommandError, add_config_argument, load_config, open_database, print_json


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    evaluate = subparsers.add_parser(
        "evaluate", help="compute per-segment statistics, run the detectors, raise and send alerts"
    )
    add_config_argument(evaluate)
    evaluate.add_argument("--json", action="store_true", help="machine-readable output")
    evaluate.set_defaults(handler=evaluate_command)

    status = subparsers.add_parser(
        "status",
        help="per segment, shadow and live side by side: alpha with interval, tau, A/D, samples, paired; trend, state",
    )
    add_config_argument(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--window", default=None, help="window to show (default: the longest configured)")
    status.set_defaults(handler=status_command)

    findings = subparsers.add_parser(
        "findings",
        help="the detectors' latest findings with their evidence, each once: first and last seen, times seen, resolved",
    )
    add_config_argument(findings)
    findings.add_argument("--json", action="store_true", help="machine-readable output")
    findings.add_argument("--limit", type=int, default=20, help="the N most recently seen findings")
    findings.set_defaults(handler=findings_command)


def live_draft_version(config: Config) -> str:
    """The live head's version: the one replay measures and findings are filed under. In GPU-free mode
    (no replay) the head registry's live version when there is one, else ENGINE_VERSION: models.draft is
    not needed there."""
    from monitor.replay.live_models import ModelsUnavailable, live_draft_dir, version_without_models
    from retrain.registry import head_version

    try:
        if not config.replays:
            return version_without_models(config)
        draft = live_draft_dir(config)
    except ModelsUnavailable as error:
        raise CommandError(str(error)) from None
    if draft is None or not draft.is_dir():
        raise CommandError(f"models.draft = {draft}: not a directory; the live draft names the results")
    return head_version(draft)


def evaluate_command(args: argparse.Namespace) -> int:
    from alerts.outbox import dispatch
    from monitor.evaluation.evaluate import evaluate

    config = load_config(args)
    draft_version = live_draft_version(config)
    engine = open_database(config)
    evaluation = evaluate(config, engine, draft_version)
    dispatch(config.alerts, engine)
    engine.dispose()
    if args.json:
        print_json({"findings": [f.to_dict() for f in evaluation.findings]})
    else:
        evaluated = len(evaluation.stats_of(evaluation.primary))
        print(
            f"{evaluated} segment windows evaluated on {evaluation.primary} counts, {len(evaluation.findings)} findings"
        )
        for finding in evaluation.findings:
            print(f"  [{finding.severity}] {finding.detector}: {finding.summary}")
    return 0


def status_command(args: argparse.Namespace) -> int:
    from monitor.base.config import window_length
    from monitor.base.db import utcnow
    from monitor.base.results import live_without_alpha
    from monitor.evaluation.evaluate import measure
    from monitor.evaluation.status import render_table, segment_statuses, source_line, table_notes

    config = load_config(args)
    windows = {name: window_length(name) for name in config.stats.windows}
    window = args.window or max(windows, key=lambda name: windows[name])
    if window not in windows:
        raise CommandError(f"--window {window}: not one of the configured windows {list(windows)}")
    trend_window = min(windows, key=lambda name: windows[name])
    draft_version = live_draft_version(config)
    engine = open_database(config)
    now = utcnow()
    try:
        measured = measure(config, engine, draft_version, now)
        without_alpha = live_without_alpha(engine, now - windows[window])
    finally:
        engine.dispose()
    statuses = segment_statuses(measured.stats, window, trend_window, config.drift, measured.primary)
    if args.json:
        print_json([status.to_dict() for status in statuses])
        return 0
    print(source_line(measured.primary, config.replays, draft_version))
    if not statuses:
        print(f"no replayed samples or engine reports in the last {window}")
    else:
        print(f"window {window}, trend against {trend_window}, threshold {config.drift.threshold}")
        print(render_table(statuses, colour=sys.stdout.isatty()))
    for note in table_notes(statuses, without_alpha, window):
        print(note)
    return 0


def findings_command(args: argparse.Namespace) -> int:
    from monitor.evaluation.findings_store import latest_findings

    engine = open_database(load_config(args))
    rows = latest_findings(engine, args.limit)
    engine.dispose()
    items = [
        {
            "created_at": row.created_at.isoformat(),
            "last_seen_at": row.last_seen_at.isoformat(),
            "times_seen": row.times_seen,
            "resolved_at": row.resolved_at.isoformat() if row.resolved_at else None,
            "draft_version": row.draft_version,
            "detector": row.detector,
            "segment": row.segment,
            "window": row.window,
            "severity": row.severity,
            "summary": row.summary,
            "evidence": row.evidence,
        }
        for row in rows
    ]
    if args.json:
        print_json(items)
    elif not items:
        print("no findings")
    else:
        for row in rows:
            resolved = f", resolved {row.resolved_at:%Y-%m-%d %H:%M:%S}" if row.resolved_at else ""
            print(
                f"{row.created_at:%Y-%m-%d %H:%M:%S} .. {row.last_seen_at:%Y-%m-%d %H:%M:%S} "
                f"(seen {row.times_seen}x{resolved})  [{row.severity}] {row.detector}: {row.summary}"
            )
    return 0
