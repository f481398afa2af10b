"""`specwatch models build-reference`: build the offline reference target and its drafts.

specwatch models build-reference --size demo            # into <data_dir>/models/reference-demo
specwatch models build-reference --size tiny --out /tmp/ref --seed 1

On a terminal a bar shows the training steps of all stages with an ETA; otherwise a log line every 10 s.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from monitor.service.commands.common import add_config_argument, load_config
from monitor.service.progress import ProgressDisplay

SIZES = ("tiny", "demo")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("models", help="reference models and drafts")
    commands = parser.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    build = commands.add_parser(
        "build-reference",
        help="train a small multilingual target and one draft of each kind from real text (offline)",
    )
    build.add_argument("--size", choices=SIZES, default="demo", help="tiny: seconds, for tests; demo: minutes")
    build.add_argument(
        "--out", type=Path, default=None, help="output directory (default: <data_dir>/models/reference-<size>)"
    )
    build.add_argument("--seed", type=int, default=0, help="seed of the whole build (default 0)")
    add_config_argument(build)
    build.set_defaults(handler=build_reference_command)


def build_reference_command(args: argparse.Namespace) -> int:
    from decoder.reference import build_reference  # torch loads only for this command

    out = args.out
    if out is None:
        out = load_config(args).storage.data_dir / "models" / f"reference-{args.size}"
    with ProgressDisplay() as progress:
        report = build_reference(args.size, out, seed=args.seed, progress=progress)
    for line in report.summary_lines():
        print(line)
    return 0
