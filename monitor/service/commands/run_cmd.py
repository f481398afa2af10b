"""`specwatch run`: the daemon — intake, replay, evaluation, alerts and retraining in one process until
SIGTERM, with systemd notify and watchdog (monitor/service/daemon/; the unit is
monitor/service/systemd/specwatch.service).

    specwatch run --config /etc/specwatch/config.toml
"""

from __future__ import annotations

import argparse
from pathlib import Path

from monitor.service.commands.common import CommandError, add_config_argument, load_config


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "run",
        help="the daemon: intake, replay, evaluate, alert, retrain until SIGTERM; "
        "/metrics /healthz /readyz on metrics.host:port (systemd Type=notify)",
    )
    add_config_argument(parser)
    parser.set_defaults(handler=run_command)


def config_path(args: argparse.Namespace) -> Path:
    from monitor.base.config import default_config_path

    return (Path(args.config) if args.config else default_config_path()).resolve()


def run_command(args: argparse.Namespace) -> int:
    config = load_config(args)
    from monitor.service.daemon import Daemon, StartupRefused, configure_logging

    configure_logging(config.daemon.log_format)
    try:
        return Daemon(config, config_path(args)).run()
    except StartupRefused as refused:
        raise CommandError(str(refused)) from None
