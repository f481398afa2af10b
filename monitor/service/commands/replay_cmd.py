"""`specwatch replay --once`: replay what is pending against the live target and draft."""

from __future__ import annotations

import argparse
import signal
import threading
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from monitor.base.config import Config
from monitor.service.commands.common import CommandError, add_config_argument, load_config, open_database

if TYPE_CHECKING:
    from monitor.replay.live_models import LiveModels


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("replay", help="replay sampled traffic through the live target and draft")
    add_config_argument(parser)
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--once", action="store_true", help="replay until nothing is pending, then exit")
    how.add_argument(
        "--follow", action="store_true", help="replay, evaluate and serve /metrics until SIGTERM or SIGINT"
    )
    parser.add_argument(
        "--mode",
        choices=["scored", "exact"],
        default="scored",
        help="scored (with exact on replay.exact_fraction of samples) or exact on every sample",
    )
    parser.add_argument("--max-rounds", type=int, default=None, help="stop after this many rounds")
    parser.set_defaults(handler=replay_command)


def replay_command(args: argparse.Namespace) -> int:
    from decoder import DecoderError
    from monitor.replay.live_models import ModelsUnavailable, live_draft_dir, load_live_models
    from monitor.replay.replayer import Replayer

    config = load_config(args)
    replay = config.replay
    if args.mode == "exact":
        replay = replay.model_copy(update={"exact_fraction": 1.0})
    try:
        models = load_live_models(config.models, live_draft_dir(config))
    except (ModelsUnavailable, DecoderError, OSError) as exc:
        raise CommandError(str(exc)) from None
    engine = open_database(config)
    if args.follow:
        return follow(config, engine, models)
    replayer = Replayer(engine, models.target, models.draft, models.versions, replay)
    print(f"{replayer.pending()} samples pending for draft {models.versions.draft}", flush=True)
    report = replayer.replay_all(args.max_rounds)
    rate = report.tokens / report.seconds if report.seconds else 0.0
    print(
        f"replayed {report.stored} samples ({report.exact} exact, {report.skipped} skipped) "
        f"in {report.seconds:.1f}s, {rate:,.0f} target tokens/s"
    )
    engine.dispose()
    return 0


def follow(config: Config, engine: Engine, models: LiveModels) -> int:
    from monitor.service.metrics import start_metrics
    from monitor.service.replay_loop import ReplayLoop

    try:
        metrics, server = start_metrics(config.metrics)
    except OSError as error:
        where = f"{config.metrics.host}:{config.metrics.port}"
        raise CommandError(f"cannot serve /metrics on {where}: {error.strerror}") from None
    if server is not None:
        print(f"metrics on {server.url}", flush=True)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        ReplayLoop(config, engine, models, metrics, evaluate=True).run(stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if server is not None:
            server.stop()
        metrics.shutdown()
        engine.dispose()
    return 0
