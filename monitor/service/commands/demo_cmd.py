"""`specwatch demo`: the daemon, on real multilingual traffic that drifts to Chinese, closes the loop."""

from __future__ import annotations

import argparse
import functools
from pathlib import Path


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "demo", help="watch the daemon catch a drift to Chinese, alert, retrain, deploy and recover"
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="keep everything here (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=0, help="traffic seed")
    parser.add_argument(
        "--models",
        type=Path,
        default=None,
        help="reference models: reused when present, else built here (default: specwatch-data/models/reference-SIZE)",
    )
    parser.add_argument(
        "--models-size",
        choices=["tiny", "demo"],
        default="demo",
        help="demo: built once (856 s measured on 2 busy CPU cores), then the demo takes about 4 minutes; "
        "tiny: built in seconds, but its small head often loses a segment and the gate refuses it "
        "(default: %(default)s)",
    )
    parser.add_argument("--rate", type=float, default=8.0, help="requests per second streamed to the daemon")
    parser.add_argument("--timeout", type=float, default=900.0, help="give up after this many seconds of streaming")
    parser.set_defaults(handler=demo_command)


def demo_command(args: argparse.Namespace) -> int:
    from monitor.service.demo import DemoPlan, run_demo

    models = args.models or Path("specwatch-data/models") / f"reference-{args.models_size}"
    plan = DemoPlan(records_per_s=args.rate, timeout_s=args.timeout, seed=args.seed)
    say = functools.partial(print, flush=True)
    result = run_demo(args.data_dir, models_dir=models, models_size=args.models_size, plan=plan, say=say)
    return 0 if result.deployed and result.daemon_exit == 0 else 1
