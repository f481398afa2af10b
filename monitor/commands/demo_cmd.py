"""`specwatch demo`: run the flow end to end on real multilingual traffic in a temporary data dir."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("demo", help="run the built parts of the flow on real multilingual traffic")
    parser.add_argument("--data-dir", type=Path, default=None, help="keep everything here (default: a temp dir)")
    parser.add_argument("--per-phase", type=int, default=200, help="records in each of the three traffic phases")
    parser.add_argument("--seed", type=int, default=0, help="traffic seed")
    parser.add_argument(
        "--models",
        type=Path,
        default=Path("specwatch-data/models/reference-demo"),
        help="reference models: reused when present, else built here (default: %(default)s)",
    )
    parser.add_argument("--models-size", choices=["tiny", "demo"], default="demo", help="size to build")
    parser.add_argument("--no-models", action="store_true", help="intake only: skip models and replay")
    parser.set_defaults(handler=demo_command)


def demo_command(args: argparse.Namespace) -> int:
    from monitor.demo import run_demo

    models = None if args.no_models else args.models
    run_demo(args.data_dir, per_phase=args.per_phase, seed=args.seed, models_dir=models, models_size=args.models_size)
    return 0
