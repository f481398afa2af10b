"""`specwatch init` and `specwatch db upgrade|current`: a data dir, a starter config, the schema."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from monitor.base.config import Config, StorageConfig, default_config_path, shown_url
from monitor.base.config_template import render_config
from monitor.base.db import current_revision, open_data_dir
from monitor.intake.pipeline import resolve_salt
from monitor.service.commands.common import CommandError, add_config_argument, load_config, open_database

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    init = subparsers.add_parser("init", help="write a starter config and data dir, and migrate the database")
    add_config_argument(init)
    init.add_argument("--data-dir", type=Path, default=Path("specwatch-data"), help="data directory to create")
    init.add_argument("--force", action="store_true", help="overwrite an existing config file")
    init.set_defaults(handler=init_command)

    parser = subparsers.add_parser("db", help="database schema")
    commands = parser.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    upgrade_parser = commands.add_parser("upgrade", help="migrate the database to the latest schema")
    add_config_argument(upgrade_parser)
    upgrade_parser.set_defaults(handler=upgrade_command)
    current = commands.add_parser("current", help="print the database's schema revision")
    add_config_argument(current)
    current.set_defaults(handler=current_command)


def init_command(args: argparse.Namespace) -> int:
    config_path = Path(args.config) if args.config else default_config_path()
    if config_path.exists() and not args.force:
        raise CommandError(f"{config_path} exists; use --force to overwrite it")
    data_dir = args.data_dir.resolve()
    open_data_dir(data_dir)
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(render_config(Config(storage=StorageConfig(data_dir=data_dir))), encoding="utf-8")
    args.config = str(config_path)
    config = load_config(args)
    resolve_salt(config)
    open_database(config).dispose()
    print(f"wrote {config_path}; data dir {data_dir}; database {shown_url(config.database_url)} migrated")
    return 0


def upgrade_command(args: argparse.Namespace) -> int:
    engine = open_database(load_config(args))
    print(f"database at revision {current_revision(engine)}")
    engine.dispose()
    return 0


def current_command(args: argparse.Namespace) -> int:
    engine = open_database(load_config(args), migrate=False)
    print(current_revision(engine) or "empty (run: specwatch db upgrade)")
    engine.dispose()
    return 0
