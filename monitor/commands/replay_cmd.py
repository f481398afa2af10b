"""`specwatch replay --once`: replay what is pending against the live target and draft."""

from __future__ import annotations

import argparse

from monitor.commands.common import CommandError, add_config_argument, load_config, open_database


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("replay", help="replay sampled traffic through the live target and draft")
    add_config_argument(parser)
    parser.add_argument("--once", action="store_true", help="replay until nothing is pending, then exit")
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
    from monitor.live_models import ModelsUnavailable, load_live_models
    from monitor.replay import Replayer

    if not args.once:
        raise CommandError("continuous replay runs inside the daemon; use --once here")
    config = load_config(args)
    replay = config.replay
    if args.mode == "exact":
        replay = replay.model_copy(update={"exact_fraction": 1.0})
    try:
        models = load_live_models(config.models)
    except (ModelsUnavailable, DecoderError, OSError) as exc:
        raise CommandError(str(exc)) from None
    engine = open_database(config)
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
