"""`specwatch engines scrape|status`: the serving engines' own spec-decode counters ([engines.NAME]).

specwatch engines scrape --config config.toml            # every configured engine, once
specwatch engines status --config config.toml --json     # A/D, tau, alpha estimate per window
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime

from monitor.base.config import Config, window_length
from monitor.base.db import utcnow
from monitor.intake.engine_metrics import (
    EngineTotals,
    ScrapeError,
    ScrapeReport,
    SeriesScrape,
    engine_totals_by_window,
    scrape_engine,
)
from monitor.service.commands.common import CommandError, add_config_argument, load_config, open_database, print_json


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("engines", help="the serving engines' own spec-decode counters (vLLM)")
    commands = parser.add_subparsers(dest="engines_command", metavar="ACTION", required=True)
    scrape = commands.add_parser("scrape", help="scrape the configured engines' counters once and store the deltas")
    add_config_argument(scrape)
    scrape.add_argument("--name", default=None, help="only [engines.NAME] (default: every configured engine)")
    scrape.set_defaults(handler=scrape_command)
    status = commands.add_parser(
        "status", help="per engine and model: last scrape, S, D, A, A/D, tau, alpha estimate per stats window"
    )
    add_config_argument(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=status_command)


def chosen_engines(config: Config, name: str | None) -> list[str]:
    if not config.engines:
        raise CommandError('no engines configured: add [engines.NAME] with url = "http://HOST:8000/metrics"')
    if name is not None and name not in config.engines:
        raise CommandError(f"--name {name}: not one of the configured engines {sorted(config.engines)}")
    return [name] if name is not None else list(config.engines)


def scrape_command(args: argparse.Namespace) -> int:
    """Each chosen engine once; a failed scrape is reported and the others still run (exit 1)."""
    config = load_config(args)
    names = chosen_engines(config, args.name)
    engine = open_database(config)
    failed = False
    for name in names:
        try:
            print(scrape_summary(scrape_engine(name, config.engines[name], engine, utcnow())))
        except ScrapeError as error:
            print(f"{name}: scrape failed: {error}", file=sys.stderr)
            failed = True
    engine.dispose()
    return 1 if failed else 0


def scrape_summary(report: ScrapeReport) -> str:
    if not report.series:
        return f"{report.endpoint}: no spec-decode counters at {report.url} (speculative decoding off); nothing stored"
    return "\n".join([f"{report.endpoint}: {len(report.series)} series stored", *map(series_line, report.series)])


def series_line(scraped: SeriesScrape) -> str:
    delta = scraped.delta
    if scraped.first:
        change = "first scrape: totals stored, deltas start from here"
    else:
        change = f"+{delta.drafts:.0f} drafts, +{delta.draft_tokens:.0f} draft tokens, +{delta.accepted:.0f} accepted"
    return f"  {scraped.series}: {change}{' (counters reset: engine restarted)' if scraped.reset else ''}"


def status_command(args: argparse.Namespace) -> int:
    config = load_config(args)
    windows = {name: window_length(name) for name in config.stats.windows}
    engine = open_database(config)
    by_window = engine_totals_by_window(engine, windows, utcnow())
    engine.dispose()
    if args.json:
        print_json([{"window": window, **totals.to_dict()} for window, rows in by_window.items() for totals in rows])
    elif not any(by_window.values()):
        print(f"no engine scrapes in the last {max(windows, key=lambda name: windows[name])}")
    else:
        for window, rows in by_window.items():
            print(render_window(window, rows))
    return 0


def _number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _time(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S}"


def render_window(window: str, rows: list[EngineTotals]) -> str:
    header = (
        f"{'endpoint':16} {'model':32} {'engine':>6} {'last scrape':>19} {'S':>10} {'D':>10} {'A':>10} "
        f"{'A/D':>6} {'tau':>5} {'alpha~':>6}"
    )
    lines = [f"window {window} (alpha~: estimated from the counters, at most the true alpha)", header]
    for totals in rows:
        lines.append(
            f"{totals.endpoint[:16]:16} {totals.model_name[-32:]:32} {totals.engine_label:>6} "
            f"{_time(totals.last_scrape_at):>19} {totals.drafts:>10.0f} {totals.draft_tokens:>10.0f} "
            f"{totals.accepted:>10.0f} {_number(totals.draft_acceptance_rate):>6} {_number(totals.tau, 2):>5} "
            f"{_number(totals.alpha):>6}{'  reset' if totals.reset else ''}"
        )
    return "\n".join(lines if rows else [*lines[:1], "  no scrapes"])
