"""`specwatch demo`: the parts of the flow built so far, on real multilingual traffic.

1. a fresh data dir and database;
2. three rotated gateway logs whose mix shifts from English and code toward Chinese, with some
   PII and a few broken lines;
3. intake: parse, redact, segment, sample, quarantine;
4. acceptance per language on the offline reference models (scored mode), against 0.65.

Continuous replay, alerts and retraining are not built yet; the demo says so at the end.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from monitor.config import Config, SamplingConfig, StorageConfig
from monitor.db import QuarantinedRecord, Sample, create_db_engine, upgrade
from monitor.demo_traffic import traffic, write_jsonl
from monitor.intake.follow import FileFollower
from monitor.intake.pipeline import IngestReport, IntakePipeline
from monitor.progress import Progress

log = logging.getLogger(__name__)

PHASES = (
    ("gateway.jsonl.2.gz", {"en": 0.45, "code": 0.45, "zh": 0.05, "ja": 0.05}),
    ("gateway.jsonl.1", {"en": 0.35, "code": 0.35, "zh": 0.25, "ja": 0.05}),
    ("gateway.jsonl", {"en": 0.15, "code": 0.15, "zh": 0.65, "ja": 0.05}),
)
BROKEN_LINES = [
    b'{"id": "broken-1", "messages": [{"role": "user", "content": "hi"}\n',
    b'{"id": "broken-2", "messages": [{"role": "user", "content": "hi"}], "completion": ""}\n',
    b'{"id": "broken-3", "prompt": "\xff\xfe", "completion": "x"}\n',
]
NOT_BUILT = "continuous replay, drift detection, Slack alerts and retraining (not built yet)"


@dataclass(frozen=True)
class DemoResult:
    data_dir: Path
    intake: IngestReport
    samples_per_language: dict[str, int]


def write_logs(directory: Path, per_phase: int, seed: int) -> list[Path]:
    import gzip
    import shutil

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, (name, mix) in enumerate(PHASES):
        path = directory / name.removesuffix(".gz")
        write_jsonl(path, traffic(per_phase, mix, seed=seed + number, first_index=number * per_phase))
        with path.open("ab") as handle:
            handle.write(BROKEN_LINES[number])
        if name.endswith(".gz"):
            with path.open("rb") as source, gzip.open(directory / name, "wb") as target:
                shutil.copyfileobj(source, target)
            path.unlink()
            path = directory / name
        paths.append(path)
    return paths


def demo_config(data_dir: Path) -> Config:
    config = Config(storage=StorageConfig(data_dir=data_dir))
    intake = config.intake.model_copy(update={"sampling": SamplingConfig(rate=1.0)})
    return config.model_copy(update={"intake": intake})


def ingest(config: Config, engine: Engine, logs: Path) -> IngestReport:
    progress = Progress()
    total = IngestReport()

    def show(path: Path, report: IngestReport) -> None:
        total.add(report)
        progress.update(f"  ingesting {path.name}: {total.stored} stored, {total.quarantined} quarantined")

    FileFollower(IntakePipeline(config, engine), engine, config.intake.follow, on_batch=show).poll_once(
        [logs], final=True
    )
    progress.finish(
        f"  {total.records} records: {total.stored} stored, {total.quarantined} quarantined in {progress.elapsed:.1f}s"
    )
    return total


def show_intake(engine: Engine) -> dict[str, int]:
    with Session(engine) as session:
        samples = list(session.execute(select(Sample.language, Sample.segment, Sample.redactions)))
        quarantined = list(session.execute(select(QuarantinedRecord.position, QuarantinedRecord.reason)))
    languages = Counter(language for language, _, _ in samples)
    segments = Counter(segment for _, segment, _ in samples)
    redactions: Counter[str] = Counter()
    for _, _, counts in samples:
        redactions.update(counts)
    print("  samples per language: " + ", ".join(f"{k}={v}" for k, v in languages.most_common()))
    print(f"  {len(segments)} segments, e.g. {segments.most_common(1)[0][0]}")
    print("  PII redacted before storage: " + ", ".join(f"{k}={v}" for k, v in redactions.most_common()))
    for position, reason in quarantined:
        print(f"  quarantined {position}: {reason}")
    return dict(languages)


def run_demo(data_dir: Path | None = None, per_phase: int = 200, seed: int = 0) -> DemoResult:
    directory = data_dir or Path(tempfile.mkdtemp(prefix="specwatch-demo-"))
    print(f"specwatch demo — data dir {directory}")
    config = demo_config(directory)
    engine = create_db_engine(config.database_url)
    upgrade(engine)
    print("[1/3] writing three rotated gateway logs; the mix shifts from English and code toward Chinese")
    logs = directory / "logs"
    write_logs(logs, per_phase, seed)
    print("[2/3] intake: parse, redact, segment, sample, quarantine")
    report = ingest(config, engine, logs)
    languages = show_intake(engine)
    engine.dispose()
    print(f"[3/3] next in the flow: {NOT_BUILT}")
    summary = {"data_dir": str(directory), "stored": report.stored, "quarantined": report.quarantined}
    print(json.dumps(summary))
    return DemoResult(directory, report, languages)
