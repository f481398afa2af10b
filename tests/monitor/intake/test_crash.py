"""SIGKILL the ingesting process at random moments; after restarts every valid line is stored once."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from monitor.base.db import QuarantinedRecord, Sample, create_db_engine, upgrade
from tests.monitor.intake.traffic import line

LINES = 20_000
BAD_EVERY = 97


def write_traffic(path: Path) -> tuple[int, int]:
    valid = bad = 0
    with path.open("wb") as handle:
        for index in range(LINES):
            if index % BAD_EVERY == 0:
                handle.write(b'{"id": "broken-%d", "messages": [\n' % index)
                bad += 1
            else:
                handle.write(line(index, random.choice(["en", "zh", "code"])))
                valid += 1
    return valid, bad


def count(engine: Engine, table: type) -> int:
    with Session(engine) as session:
        return session.scalar(select(func.count()).select_from(table)) or 0


def ingest_process(config: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "monitor", "ingest", "--config", str(config), str(log)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "SPECWATCH_HASH_SALT": "crash-test"},
    )


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_and_doubles_nothing(tmp_path: Path, database_url: str) -> None:
    random.seed(7)
    log = tmp_path / "traffic.jsonl"
    valid, bad = write_traffic(log)
    config = tmp_path / "config.toml"
    config.write_text(
        f'[storage]\ndata_dir = "{tmp_path / "data"}"\ndatabase_url = "{database_url}"\n'
        "[intake.follow]\nbatch_lines = 40\n"
    )
    engine = create_db_engine(database_url)
    upgrade(engine)  # the progress below is read from the samples table
    stored_after_kills = []
    for _ in range(8):
        before = count(engine, Sample)
        process = ingest_process(config, log)
        kill_after = before + random.randint(100, 1500)  # a random point of progress, not of time:
        while process.poll() is None and count(engine, Sample) < kill_after:  # mid-file on any machine
            time.sleep(random.uniform(0.0, 0.05))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()
            stored_after_kills.append(count(engine, Sample))
        process.wait()
    final = ingest_process(config, log)
    assert final.wait(timeout=300) == 0
    with Session(engine) as session:
        samples = count(engine, Sample)
        keys = session.scalar(select(func.count(func.distinct(Sample.sample_key))))
        quarantined = session.scalar(select(func.count()).select_from(QuarantinedRecord))
        positions = list(session.scalars(select(QuarantinedRecord.position)))
    engine.dispose()
    mid_file = [n for n in stored_after_kills if 0 < n < valid]
    assert len(mid_file) >= 3, f"too few kills landed mid-file: {stored_after_kills}; make the log longer"
    assert samples == keys == valid
    assert quarantined == bad
    assert len(set(positions)) == bad
