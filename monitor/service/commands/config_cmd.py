"""`specwatch config check`: validate the config file and say what is wrong, key by key."""

from __future__ import annotations

import argparse
import sys

from monitor.base.config import Config, SecretSource, SecretUnavailable, shown_url
from monitor.service.commands.common import add_config_argument, load_config


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("config", help="check the configuration")
    commands = parser.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = commands.add_parser("check", help="validate config.toml; prints each problem with its key path")
    add_config_argument(check)
    check.set_defaults(handler=check_command)


def secret_sources(config: Config) -> dict[str, SecretSource]:
    sources = {
        "storage.database_password": config.storage.database_password,
        "intake.redaction.hash_salt": config.intake.redaction.hash_salt,
        "intake.http.token": config.intake.http.token,
    }
    for name, receiver in config.alerts.receivers.items():
        sources[f"alerts.receivers.{name}.bot_token"] = receiver.bot_token
        sources[f"alerts.receivers.{name}.url"] = receiver.url
    return sources


def secret_required(config: Config, key: str) -> bool:
    """Whether an unset secret is a problem: the salt falls back to a generated one and the
    intake token is optional on loopback."""
    if key == "intake.redaction.hash_salt":
        return False
    if key == "intake.http.token":
        return not config.intake.http.is_loopback
    return True


def secret_problems(config: Config) -> list[str]:
    """Configured secrets that cannot be read now (their values are never shown)."""
    problems = []
    for key, source in secret_sources(config).items():
        if not source.configured:
            continue
        try:
            value = source.read()
        except SecretUnavailable as exc:
            problems.append(f"{key}: {exc}")
            continue
        if value is None and secret_required(config, key):
            problems.append(f"{key}: {source.describe()} is not set")
    return problems


def check_command(args: argparse.Namespace) -> int:
    config = load_config(args)
    problems = secret_problems(config)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    print(f"config ok: database {shown_url(config.database_url)}, data dir {config.storage.data_dir}")
    return 0
