"""The `specwatch` command line: builds a Config and hands it to the part of the flow asked for.

Each command group lives in monitor/service/commands/<group>.py and exposes `register(subparsers)`;
a command's handler takes the parsed arguments and returns the process exit code.

    specwatch --help
    specwatch config check --config config.toml
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from monitor.service.commands import COMMAND_GROUPS
from monitor.service.commands.common import CommandError
from monitor.service.memory import map_large_allocations

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="specwatch",
        description="Keeps speculative decoding paying: samples traffic, measures draft acceptance "
        "per segment, alerts below 0.65, retrains the draft head behind a gate.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in COMMAND_GROUPS:
        register(subparsers)
    return parser


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not verbose:
        logging.getLogger("alembic").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    map_large_allocations()
    try:
        code: int = args.handler(args)
    except CommandError as exc:
        print(f"specwatch: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
