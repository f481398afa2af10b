"""`specwatch demo`: the parts of the flow built so far, on real multilingual traffic.

1. a fresh data dir and database;
2. three rotated gateway logs whose mix shifts from English and code toward Chinese, with some
   PII and a few broken lines;
3. intake: parse, redact, segment, sample, quarantine;
4. the offline reference models (built once, then reused): a target and drafts trained on English
   and code only;
5. replay (scored mode, eagle head, k=4), per-segment statistics, drift findings, the status table
   and the HTML report.

The alerts the findings raise go to the console receiver. Retraining and the daemon are built but
not yet part of the demo; it says so at the end.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from monitor.config import Config, DriftConfig, ModelsConfig, ReplayConfig, SamplingConfig, StorageConfig
from monitor.db import QuarantinedRecord, Sample, create_db_engine, upgrade, utcnow
from monitor.demo_traffic import traffic, write_jsonl
from monitor.intake.follow import import_logs
from monitor.intake.pipeline import IngestReport

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
NOT_BUILT = (
    "the demo does not yet run the daemon and the recapture retrain on this traffic; "
    "both exist: `specwatch run`, `specwatch retrain --now`"
)
DEMO_DRAFT = "eagle"


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
        start = utcnow() - timedelta(days=len(PHASES) - number)
        records = traffic(
            per_phase,
            mix,
            seed=seed + number,
            start=start,
            spacing_s=86_400 / per_phase,
            first_index=number * per_phase,
        )
        write_jsonl(path, records)
        with path.open("ab") as handle:
            handle.write(BROKEN_LINES[number])
        if name.endswith(".gz"):
            with path.open("rb") as source, gzip.open(directory / name, "wb") as target:
                shutil.copyfileobj(source, target)
            path.unlink()
            path = directory / name
        paths.append(path)
    return paths


def demo_config(data_dir: Path, models: Path | None = None) -> Config:
    config = Config(storage=StorageConfig(data_dir=data_dir))
    intake = config.intake.model_copy(update={"sampling": SamplingConfig(rate=1.0), "segment_keys": ["route"]})
    alerts = config.alerts.model_copy(update={"group_wait": "0s"})  # notify at the first evaluation
    update: dict[str, object] = {"intake": intake, "alerts": alerts}
    if models is not None:
        update["models"] = ModelsConfig(target=models / "target", draft=models / "drafts" / DEMO_DRAFT)
        update["replay"] = ReplayConfig(samples_per_round=256, exact_fraction=0.01)
        update["drift"] = DriftConfig(reference_corpus=data_dir / "training-corpus.jsonl")
    return config.model_copy(update=update)


def reference_models(directory: Path, size: str) -> Path:
    """Build the reference models once; later demos reuse them."""
    from decoder.reference import build_reference

    if (directory / "target").is_dir() and (directory / "drafts" / DEMO_DRAFT).is_dir():
        print(f"  reusing reference models in {directory}")
        return directory
    print(f"  building {size} reference models in {directory} (once; a few minutes on 2 CPU cores)")
    for line in build_reference(size, directory, seed=0).summary_lines():
        print(f"  {line}")
    return directory


def write_training_corpus(path: Path, per_kind: int = 300, code_bytes: int = 200_000) -> Path:
    """The drafts' training traffic (English dialogs, stdlib code): the input-drift reference."""
    from decoder.reference_corpus import code_documents, dialog_documents, split

    documents = split(dialog_documents("en"))[0][:per_kind] + split(code_documents(code_bytes))[0][:per_kind]
    with path.open("w", encoding="utf-8") as handle:
        for document in documents:
            chat = document.chat
            row = {"messages": chat[:-1], "completion": chat[-1]["content"], "language": document.language}
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def measure(config: Config, engine: Engine) -> str:
    """Replay everything, evaluate, show status and findings; returns the report's path."""
    from alerts.outbox import dispatch
    from alerts.queries import alert_views
    from monitor.evaluate import evaluate
    from monitor.live_models import live_draft_dir, load_live_models
    from monitor.replay import Replayer
    from monitor.report import build_report, write_report
    from monitor.status import render_table, segment_statuses

    models = load_live_models(config.models, live_draft_dir(config))
    report = Replayer(engine, models.target, models.draft, models.versions, config.replay).replay_all()
    print(f"  replayed {report.stored} samples ({report.exact} also in exact mode) in {report.seconds:.1f}s")
    write_training_corpus(config.drift.reference_corpus or config.storage.data_dir / "training-corpus.jsonl")
    evaluation = evaluate(config, engine, models.versions.draft)
    statuses = segment_statuses(evaluation.stats, "24h", "1h", config.drift)
    print(render_table(statuses, colour=sys.stdout.isatty()))
    for finding in evaluation.findings:
        print(f"  [{finding.severity}] {finding.detector}: {finding.summary}")
    delivery = dispatch(config.alerts, engine)
    for view in alert_views(config.alerts, engine):
        muted = f" (muted: {view.muted_by})" if view.muted_by else ""
        print(f"  alert {view.alert.name} {view.alert.labels.get('segment')} firing{muted}")
    print(f"  {delivery.sent} notifications sent to the console receiver (set a Slack receiver in config.toml)")
    path = write_report(config, build_report(config, engine, live_draft=models.versions.draft))
    return str(path)


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


def run_demo(
    data_dir: Path | None = None,
    per_phase: int = 200,
    seed: int = 0,
    models_dir: Path | None = None,
    models_size: str = "demo",
) -> DemoResult:
    directory = data_dir or Path(tempfile.mkdtemp(prefix="specwatch-demo-"))
    print(f"specwatch demo — data dir {directory}")
    models = reference_models(models_dir, models_size) if models_dir is not None else None
    config = demo_config(directory, models)
    engine = create_db_engine(config.database_url)
    upgrade(engine)
    print("[1/4] writing three rotated gateway logs; the mix shifts from English and code toward Chinese")
    logs = directory / "logs"
    write_logs(logs, per_phase, seed)
    print("[2/4] intake: parse, redact, segment, sample, quarantine")
    report = import_logs(config, engine, [logs])
    languages = show_intake(engine)
    report_path = None
    if models is not None:
        print("[3/4] replay on the reference models (drafts trained on English and code only), statistics, drift")
        report_path = measure(config, engine)
    engine.dispose()
    print(f"[4/4] not shown: {NOT_BUILT}")
    summary = {"data_dir": str(directory), "stored": report.stored, "quarantined": report.quarantined}
    print(json.dumps(summary))
    if report_path:
        print(f"report: {report_path}")
    return DemoResult(directory, report, languages)
