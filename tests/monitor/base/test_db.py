import contextlib
import logging
import os
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import OperationalError

from monitor.base.config import Config, StorageConfig
from monitor.base.db import Base, create_db_engine, current_revision, open_database, upgrade
from monitor.base.failures import is_database_unreachable
from monitor.intake.pipeline import resolve_salt


def test_migrations_build_exactly_the_models(engine: Engine) -> None:
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []


def test_upgrade_is_idempotent(engine: Engine) -> None:
    upgrade(engine)
    assert current_revision(engine) is not None
    assert {"samples", "quarantine", "intake_cursors"} <= set(inspect(engine).get_table_names())


def test_downgrade_to_base_and_back(engine: Engine) -> None:
    upgrade(engine, "head")
    from alembic import command

    from monitor.base.db import alembic_config

    config = alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "base")
    assert "samples" not in inspect(engine).get_table_names()
    upgrade(engine)
    assert "samples" in inspect(engine).get_table_names()


class SilentServer:
    """A TCP server on 127.0.0.1 that accepts connections and never says a word, like a firewalled
    or hung database host: without a connect timeout libpq would wait on it forever."""

    def __init__(self) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(8)
        self.port = self.socket.getsockname()[1]
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                self.accepted.append(self.socket.accept()[0])

    def close(self) -> None:
        for connection in self.accepted:
            connection.close()
        self.socket.close()


def test_a_silent_postgresql_host_times_out_instead_of_hanging() -> None:
    server = SilentServer()
    engine = create_db_engine(f"postgresql+psycopg://specwatch@127.0.0.1:{server.port}/test", connect_timeout_s=1)
    failures: list[BaseException] = []

    def connect() -> None:
        try:
            engine.connect().close()
        except BaseException as error:  # the outcome under test, handed back to the test's thread
            failures.append(error)

    attempt = threading.Thread(target=connect, daemon=True)
    attempt.start()
    attempt.join(60)  # generous on a loaded machine; the timeout under test is 1 s
    server.close()
    engine.dispose()
    assert not attempt.is_alive(), "the connection attempt hung: no connect timeout"
    assert len(failures) == 1 and isinstance(failures[0], OperationalError) and is_database_unreachable(failures[0])


@pytest.fixture
def restored_umask() -> Iterator[None]:
    """open_database sets this process's umask to 077; other tests get theirs back."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("restored_umask")
def test_the_data_dir_is_0700_and_the_files_specwatch_creates_0600(tmp_path: Path) -> None:
    os.umask(0o022)
    data_dir = tmp_path / "data"
    config = Config(storage=StorageConfig(data_dir=data_dir))
    engine = open_database(config)
    with engine.connect() as connection:  # WAL mode: -wal and -shm exist while a connection is open
        connection.execute(text("SELECT count(*) FROM samples"))
        files = ["specwatch.db", "specwatch.db-wal", "specwatch.db-shm"]
        assert {name: oct(mode(data_dir / name)) for name in files} == dict.fromkeys(files, "0o600")
    engine.dispose()
    assert oct(mode(data_dir)) == "0o700"
    resolve_salt(config)
    (data_dir / "reports").mkdir()
    (data_dir / "reports" / "report.html").write_text("<html></html>")
    assert [
        oct(mode(path)) for path in (data_dir / "hash_salt", data_dir / "reports", data_dir / "reports" / "report.html")
    ] == [
        "0o600",
        "0o700",
        "0o600",
    ]


@pytest.mark.usefixtures("restored_umask")
def test_an_existing_world_readable_database_is_restricted(tmp_path: Path) -> None:
    os.umask(0o022)
    database = tmp_path / "data" / "specwatch.db"
    database.parent.mkdir(mode=0o755)
    database.touch(mode=0o644)
    os.chmod(database, 0o644)
    open_database(Config(storage=StorageConfig(data_dir=database.parent))).dispose()
    assert (oct(mode(database.parent)), oct(mode(database))) == ("0o700", "0o600")


def test_the_migration_log_line_masks_the_url_query(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'specwatch.db'}?timeout=7")
    with caplog.at_level(logging.INFO, logger="monitor.base.db"):
        upgrade(engine)
    engine.dispose()
    assert f"database at sqlite:///{tmp_path / 'specwatch.db'}?timeout=*** is at revision head" in caplog.text
    assert "timeout=7" not in caplog.text
