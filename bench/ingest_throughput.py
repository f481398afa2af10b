"""Ingest throughput: samples per second for a 100,000-line log at 1% and 100% sampling,
on SQLite and (when SPECWATCH_BENCH_POSTGRES_URL or SPECWATCH_TEST_DATABASE_URL is set) PostgreSQL.

    python bench/ingest_throughput.py [--lines 100000]

The log mixes English, Chinese and code exchanges of 0.5-3 KB with PII sprinkled in, so
parsing, language detection, segmenting, redaction and storage all do their real work.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text

from monitor.base.config import Config, FollowConfig, SamplingConfig, Secret, StorageConfig
from monitor.base.db import create_db_engine, upgrade
from monitor.intake.follow import FileFollower
from monitor.intake.pipeline import IntakePipeline

EN = "The cache keeps the keys and values of earlier tokens so the next step attends without recomputing them. "
ZH = "推测解码让小模型先起草几个词元，再由大模型一次性验证，接受率越高速度越快。"
CODE = (
    "def verify(draft, target):\n    accepted = 0\n    for d, t in zip(draft, target):\n"
    "        if d != t:\n            break\n        accepted += 1\n    return accepted\n"
)
PII = [
    "mail me at lin.wei@example.com",
    "call +65 9123 4567",
    "card 4111 1111 1111 1111",
    "from 203.0.113.9",
    "",
]


def write_log(path: Path, lines: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as handle:
        for index in range(lines):
            body = rng.choice([EN, ZH, CODE])
            record = {
                "id": f"req-{index}",
                "timestamp": 1764324000 + index,
                "messages": [{"role": "user", "content": body[: rng.randint(60, 300)] + " " + rng.choice(PII)}],
                "completion": body * rng.randint(2, 12),
                "model": "qwen2.5-7b-instruct",
                "temperature": 0.0,
                "metadata": {"tenant": f"t{rng.randint(1, 20)}", "region": rng.choice(["sg", "us", "eu"])},
            }
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def fresh_postgres(base_url: str) -> tuple[str, str]:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(base_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    admin.dispose()
    separator = "&" if "?" in base_url else "?"
    return base_url.replace(
        "postgresql://", "postgresql+psycopg://", 1
    ) + f"{separator}options=-csearch_path%3D{schema}", schema


def drop_schema(base_url: str, schema: str) -> None:
    admin = create_engine(base_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as connection:
        connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


def measure(url: str, log: Path, rate: float, data_dir: Path) -> tuple[float, int, int]:
    engine = create_db_engine(url)
    upgrade(engine)
    config = Config(
        storage=StorageConfig(data_dir=data_dir, database_url=url),
    )
    intake = config.intake.model_copy(update={"sampling": SamplingConfig(rate=rate)})
    config = config.model_copy(update={"intake": intake})
    follower = FileFollower(IntakePipeline(config, engine, Secret("bench")), engine, FollowConfig(batch_lines=1000))
    started = time.perf_counter()
    report = follower.poll_once([log], final=True)
    elapsed = time.perf_counter() - started
    engine.dispose()
    return elapsed, report.records, report.stored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=100_000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    postgres = os.environ.get("SPECWATCH_BENCH_POSTGRES_URL") or os.environ.get("SPECWATCH_TEST_DATABASE_URL")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        log = work / "traffic.jsonl"
        write_log(log, args.lines)
        print(f"log: {args.lines} lines, {log.stat().st_size / 1e6:.1f} MB")
        print(f"{'backend':10} {'sampling':>8} {'seconds':>8} {'lines/s':>10} {'stored':>8} {'stored/s':>9}")
        for backend in ["sqlite", "postgresql"] if postgres else ["sqlite"]:
            for rate in (0.01, 1.0):
                schema = None
                if backend == "sqlite":
                    url = f"sqlite:///{work / f'bench-{rate}.db'}"
                else:
                    assert postgres
                    url, schema = fresh_postgres(postgres)
                try:
                    elapsed, records, stored = measure(url, log, rate, work / "data")
                finally:
                    if schema and postgres:
                        drop_schema(postgres, schema)
                print(
                    f"{backend:10} {rate:>8.0%} {elapsed:>8.1f} {records / elapsed:>10,.0f} "
                    f"{stored:>8} {stored / elapsed:>9,.0f}"
                )


if __name__ == "__main__":
    main()
