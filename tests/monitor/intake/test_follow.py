import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from monitor.base.config import Config, FollowConfig, Secret
from monitor.base.db import QuarantinedRecord, Sample
from monitor.intake.follow import FileFollower, discover, fingerprint_of
from monitor.intake.pipeline import IntakePipeline
from tests.monitor.intake.traffic import line, write_log


def follower(config: Config, engine: Engine, logs: Path, batch_lines: int = 4) -> FileFollower:
    follow = FollowConfig(paths=[logs], glob="app.jsonl*", batch_lines=batch_lines)
    return FileFollower(IntakePipeline(config, engine, Secret("salt")), engine, follow)


def stored(engine: Engine) -> int:
    with Session(engine) as session:
        return session.scalar(select(func.count()).select_from(Sample)) or 0


def test_partial_last_line_waits_for_its_newline(config: Config, engine: Engine, tmp_path: Path) -> None:
    log = tmp_path / "app.jsonl"
    write_log(log, range(3))
    half = line(3)
    with log.open("ab") as handle:
        handle.write(half[:20])
    reader = follower(config, engine, tmp_path)
    assert reader.poll_once().stored == 3
    with log.open("ab") as handle:
        handle.write(half[20:])
    report = reader.poll_once()
    assert (report.stored, report.quarantined) == (1, 0)


def test_rename_rotation_then_gzip_reads_each_line_once(config: Config, engine: Engine, tmp_path: Path) -> None:
    log = tmp_path / "app.jsonl"
    reader = follower(config, engine, tmp_path)
    write_log(log, range(10))
    assert reader.poll_once().stored == 10
    write_log(log, range(10, 15))
    log.rename(tmp_path / "app.jsonl.1")
    write_log(log, range(15, 18))
    report = reader.poll_once()
    assert (report.stored, report.duplicates) == (8, 0)
    rotated = tmp_path / "app.jsonl.1"
    with rotated.open("rb") as source, gzip.open(tmp_path / "app.jsonl.1.gz", "wb") as target:
        shutil.copyfileobj(source, target)
    rotated.unlink()
    write_log(log, range(18, 20))
    report = reader.poll_once()
    assert (report.stored, report.duplicates, report.records) == (2, 0, 2)
    assert stored(engine) == 20


def test_gz_never_seen_is_read_whole(config: Config, engine: Engine, tmp_path: Path) -> None:
    with gzip.open(tmp_path / "app.jsonl.3.gz", "wb") as handle:
        handle.write(b"".join(line(i) for i in range(7)) + line(7).rstrip(b"\n"))
    assert follower(config, engine, tmp_path).poll_once().stored == 8


def test_copytruncate_rotation(config: Config, engine: Engine, tmp_path: Path) -> None:
    log = tmp_path / "app.jsonl"
    reader = follower(config, engine, tmp_path)
    write_log(log, range(10))
    reader.poll_once()
    write_log(log, range(10, 12))
    shutil.copy(log, tmp_path / "app.jsonl.1")
    log.write_bytes(b"")
    write_log(log, range(12, 14))
    report = reader.poll_once()
    assert (report.stored, report.duplicates) == (4, 0)
    assert stored(engine) == 14


def test_truncated_in_place_and_rewritten(config: Config, engine: Engine, tmp_path: Path) -> None:
    log = tmp_path / "app.jsonl"
    reader = follower(config, engine, tmp_path)
    write_log(log, range(10))
    reader.poll_once()
    log.write_bytes(line(0))
    report = reader.poll_once()
    assert (report.stored, report.duplicates) == (0, 1)
    write_log(log, range(100, 103))
    assert reader.poll_once().stored == 3


def test_restart_resumes_from_committed_cursor(config: Config, engine: Engine, tmp_path: Path) -> None:
    log = tmp_path / "app.jsonl"
    write_log(log, range(9))
    follower(config, engine, tmp_path).poll_once()
    write_log(log, range(9, 12))
    report = follower(config, engine, tmp_path).poll_once()
    assert (report.records, report.stored, report.duplicates) == (3, 3, 0)


def test_discover_orders_oldest_first_and_filters(tmp_path: Path) -> None:
    import os

    for age, name in enumerate(["app.jsonl", "app.jsonl.1", "app.jsonl.2.gz", "other.txt"]):
        path = tmp_path / name
        path.write_bytes(b"x\n")
        os.utime(path, (1000 - age, 1000 - age))
    found = discover([tmp_path], "app.jsonl*")
    assert [p.name for p in found] == ["app.jsonl.2.gz", "app.jsonl.1", "app.jsonl"]


def test_file_without_complete_first_line_has_no_fingerprint(tmp_path: Path) -> None:
    path = tmp_path / "app.jsonl"
    path.write_bytes(b'{"id": 1')
    assert fingerprint_of(path) is None
    path.write_bytes(b'{"id": 1}\n')
    assert fingerprint_of(path) is not None


POISON = [
    b'{"id": ' + b"7" * 5000 + b', "prompt": "p", "completion": "c"}',
    b'{"prompt": "p", "completion": "c", "note": "\\ud800"}',
    b'{"id": "s1", "prompt": "p", "completion": "lone \\udc00"}',
    b'{"id": "n1", "prompt": "p", "completion": "nul \\u0000"}',
    b'{"id": "l1", "prompt": "p", "completion": "c", "metadata": {"language": "' + b"x" * 40 + b'"}}',
    b'{"id": "m1", "prompt": "p", "completion": "c", "model": "' + b"m" * 300 + b'"}',
]
STORED_POISON = 2  # a bad field nothing reads; an unknown language label, replaced by detection


def test_poison_lines_never_stop_the_follower(config: Config, engine: Engine, tmp_path: Path) -> None:
    log = tmp_path / "app.jsonl"
    reader = follower(config, engine, tmp_path, batch_lines=3)
    write_log(log, range(2))
    with log.open("ab") as handle:
        for index, poison in enumerate(POISON):
            handle.write(poison + b"\n" + line(100 + index))
    first = reader.poll_once()
    assert (first.stored, first.quarantined) == (2 + len(POISON) + STORED_POISON, len(POISON) - STORED_POISON)
    write_log(log, range(200, 203))
    assert reader.poll_once().stored == 3
    assert stored(engine) == 2 + len(POISON) + STORED_POISON + 3


def test_a_giant_line_is_quarantined_without_being_held_whole(config: Config, engine: Engine, tmp_path: Path) -> None:
    log = tmp_path / "app.jsonl"
    limit = config.intake.max_record_bytes
    write_log(log, range(1))
    with log.open("ab") as handle:
        handle.write(b'{"prompt": "' + b"a" * (limit * 3) + b'", "completion": "c"}\n')
    write_log(log, range(1, 3))
    report = follower(config, engine, tmp_path).poll_once()
    assert (report.stored, report.quarantined) == (3, 1)
    [(position, reason)] = report.problems
    assert position == f"line 2 (byte {len(line(0))})"
    assert f"over the {limit}-byte limit ({limit + 1} bytes read)" in reason


def test_ingest_command_goes_on_after_poison_lines(config: Config, engine: Engine, tmp_path: Path) -> None:
    log = tmp_path / "traffic.jsonl"
    log.write_bytes(b"".join(poison + b"\n" + line(index) for index, poison in enumerate(POISON)) + POISON[0])
    config_file = tmp_path / "config.toml"
    config_file.write_text(
        f'[storage]\ndata_dir = "{config.storage.data_dir}"\ndatabase_url = "{config.storage.database_url}"\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "monitor", "ingest", "--config", str(config_file), str(log)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "SPECWATCH_HASH_SALT": "salt"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert stored(engine) == len(POISON) + STORED_POISON
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(QuarantinedRecord)) == len(POISON) - STORED_POISON + 1
