import contextlib
import socket
import threading

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect
from sqlalchemy.exc import OperationalError

from monitor.db import Base, create_db_engine, current_revision, upgrade
from monitor.failures import is_database_unreachable


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

    from monitor.db import alembic_config

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
