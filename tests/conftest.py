"""Shared fixtures: a migrated database on SQLite always, and on PostgreSQL when
SPECWATCH_TEST_DATABASE_URL is set (each test gets its own schema there)."""

from __future__ import annotations

import fcntl
import os
import pickle
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from monitor.base.config import Config, StorageConfig
from monitor.base.db import create_db_engine, upgrade

POSTGRES_URL = os.environ.get("SPECWATCH_TEST_DATABASE_URL")
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def postgres_schema_url(schema: str) -> str:
    assert POSTGRES_URL
    url = make_url(POSTGRES_URL)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    return url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)


@contextmanager
def fresh_postgres_schema() -> Iterator[str]:
    """A URL whose search_path is a new, empty schema, dropped afterwards."""
    assert POSTGRES_URL
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield postgres_schema_url(schema)
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL to an empty database of each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'specwatch.db'}"
        return
    if not POSTGRES_URL:
        pytest.skip("SPECWATCH_TEST_DATABASE_URL not set")
    with fresh_postgres_schema() as url:
        yield url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """A migrated database."""
    db = create_db_engine(database_url)
    upgrade(db)
    yield db
    db.dispose()


@pytest.fixture
def config(tmp_path: Path, database_url: str) -> Config:
    """Default config on the test database and a temporary data dir."""
    return Config(storage=StorageConfig(data_dir=tmp_path / "data", database_url=database_url))


@pytest.fixture(scope="session")
def reference_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """One tiny offline reference build (target + one draft of each kind) per test run, with its
    report; pytest-xdist's workers share it (the first builds it under a lock, the others wait and
    read it). SPECWATCH_TEST_REFERENCE_DIR reuses a prebuilt one (report None) while developing."""
    import torch

    from decoder.reference import build_reference

    torch.set_num_threads(2)
    prebuilt = os.environ.get("SPECWATCH_TEST_REFERENCE_DIR")
    if prebuilt:
        return Path(prebuilt), None
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    out, saved = shared / "reference" / "tiny", shared / "reference" / "report.pickle"
    with (shared / "reference.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if saved.exists():
            return out, pickle.loads(saved.read_bytes())
        report = build_reference("tiny", out, seed=0)
        saved.write_bytes(pickle.dumps(report))
    return out, report


@pytest.fixture(scope="session")
def reference_models(reference_build: tuple[Path, Any]) -> Path:
    return reference_build[0]


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread: their work is thousands of small steps, and two
    threads on a busy two-core machine wait on each other (measured 5-10x slower). Modules opt in
    with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
