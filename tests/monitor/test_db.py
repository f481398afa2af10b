from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect

from monitor.db import Base, current_revision, upgrade


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
