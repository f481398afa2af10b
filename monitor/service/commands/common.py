"""What every command shares: the --config option, loading it, and opening the database."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from monitor.base.config import Config, ConfigError
from monitor.base.config import load_config as load_config_file
from monitor.base.db import open_database as open_database  # the commands' one way in


class CommandError(Exception):
    """A failure the user can act on; printed without a traceback, exit code 2."""


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=None,
        help="config file (default: $SPECWATCH_CONFIG, else ./config.toml)",
    )


def load_config(args: argparse.Namespace) -> Config:
    try:
        return load_config_file(args.config)
    except ConfigError as exc:
        raise CommandError("\n".join([f"config {exc.path} has problems:", *(f"  {p}" for p in exc.problems)])) from None


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, ensure_ascii=False, default=str)
    sys.stdout.write("\n")
