"""`specwatch demo`: the whole loop on a real daemon and real multilingual traffic.

1. the offline reference models (built once, then reused): a target and draft heads trained on
   English and code only;
2. a fresh data dir with a demo config.toml: the daemon's intervals shortened to seconds, alerts
   to the console receiver, a recapture retrain 60 s after a breach alert starts firing;
3. `specwatch run` as a subprocess (its log: <data dir>/daemon.log), exactly as systemd runs it;
4. traffic the target served (chatterbot-corpus dialogs, standard-library code), streamed into the
   gateway log the daemon follows: first English and code (and a few requests in each of eight more
   languages, vi, id, th, es, fr, de, pt, ar, which get segments of their own), then mostly Chinese,
   with some PII and a few broken lines;
5. a live display: per-language alpha of the live head, the alert, the retrain job's stages, the
   gate's decision, the deploy, and the zh alpha of the new head on traffic that arrived after it;
6. SIGTERM (the daemon drains and exits 0), the intake summary, the HTML report's path.

    specwatch demo                     # demo-size models: built once (~14 min on 2 busy cores), then ~4 min a run
    specwatch demo --models-size tiny  # tiny models: built in seconds; their small head often fails the gate
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from monitor.base.config import (
    AlertsConfig,
    Config,
    CorpusConfig,
    DriftConfig,
    FollowConfig,
    HttpIntakeConfig,
    MetricsConfig,
    ModelsConfig,
    ReplayConfig,
    RetrainConfig,
    SamplingConfig,
    StatsConfig,
    StorageConfig,
    TrainingConfig,
    WatchConfig,
)
from monitor.base.db import (
    AlertRecord,
    HeadEvent,
    OutboxMessage,
    QuarantinedRecord,
    Sample,
    open_database,
    utcnow,
)

log = logging.getLogger(__name__)

Say = Callable[[str], None]
"""Where the demo tells what happens: the CLI passes print."""

DEMO_DRAFT = "eagle3"
BASELINE_MIX = {"en": 0.55, "code": 0.4, "ja": 0.05}
SHIFTED_MIX = {"en": 0.2, "code": 0.15, "zh": 0.6, "ja": 0.05}
BROKEN_LINES = (
    '{"id": "broken-1", "messages": [{"role": "user", "content": "hi"}',
    '{"id": "broken-2", "messages": [{"role": "user", "content": "hi"}], "completion": ""}',
)
WATCHED = ("en", "code", "zh")
STOP_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class DemoPlan:
    """How much traffic, how fast, and how long to wait for the loop to close."""

    baseline: int = 120  # English and code records before the shift
    shifted: int = 1200  # records after it, mostly Chinese (streamed until the loop closes)
    per_language: int = 2  # records in each of WRITTEN_LANGUAGES, spread through the baseline
    records_per_s: float = 8.0
    recovered_after: int = 30  # fresh zh samples the new head needs before the demo judges it
    recapture_after: str = "60s"  # a breach alert firing this long starts the retrain
    timeout_s: float = 900.0
    seed: int = 0

    @property
    def before_shift(self) -> int:
        """Records streamed before the shift: the baseline and the other languages' few."""
        from monitor.service.demo_traffic import WRITTEN_LANGUAGES

        return self.baseline + self.per_language * len(WRITTEN_LANGUAGES)


@dataclass(frozen=True)
class DemoResult:
    data_dir: Path
    deployed: str | None  # the head version the retrain deployed, None when none was
    zh_before: float | None  # zh alpha of the seed head
    zh_after: float | None  # zh alpha of the deployed head on traffic that arrived after the deploy
    daemon_exit: int | None
    report: Path | None
    samples_per_language: dict[str, int] = field(default_factory=dict)


# -- setup ---------------------------------------------------------------------------------------------


def reference_models(directory: Path, size: str, say: Say) -> Path:
    """Build the reference models once; later demos reuse them."""
    from decoder.reference import build_reference

    if (directory / "target").is_dir() and (directory / "drafts" / DEMO_DRAFT).is_dir():
        say(f"  reusing the {size} reference models in {directory}")
        return directory
    say(f"  building {size} reference models in {directory} (once; later demos reuse them)")
    for line in build_reference(size, directory, seed=0).summary_lines():
        say(f"  {line}")
    return directory


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def demo_config(data_dir: Path, models: Path, recapture_after: str = "60s") -> Config:
    """The defaults, with every interval shortened so the loop closes in minutes, not days."""
    return Config(
        storage=StorageConfig(data_dir=data_dir),
        intake=Config().intake.model_copy(
            update={
                "sampling": SamplingConfig(rate=1.0),
                "segment_keys": ["tenant"],  # per-tenant segments: the zh alert fires on the lang=zh roll-up
                "follow": FollowConfig(paths=[data_dir / "logs"], poll_interval_s=0.5, batch_lines=50),
                "http": HttpIntakeConfig(enabled=False),
            }
        ),
        models=ModelsConfig(target=models / "target", draft=models / "drafts" / DEMO_DRAFT, device="cpu"),
        replay=ReplayConfig(samples_per_round=64, exact_fraction=0.02, interval_s=1.0, evaluate_interval_s=3.0),
        stats=StatsConfig(windows=["1h"], resamples=300),
        drift=DriftConfig(reference_corpus=data_dir / "training-corpus.jsonl", input_window="1h", change_window="1h"),
        alerts=AlertsConfig(group_wait="0s", group_interval="10s", resolve_after="10s", dispatch_interval_s=2.0),
        retrain=RetrainConfig(
            recapture_after=recapture_after,
            cooldown="1h",
            heartbeat_s=2.0,
            corpus=CorpusConfig(days=1, holdout_fraction=0.3),
            training=TrainingConfig(
                steps=150, learning_rate=1e-3, batch_size=8, sequence_length=96, checkpoint_every=10, device="cpu"
            ),
            watch=WatchConfig(window="1h", min_samples=30),
        ),
        metrics=MetricsConfig(port=free_port()),
    )


def write_config(config: Config, path: Path) -> Path:
    from monitor.base.config_template import render_config

    path.write_text(render_config(config), encoding="utf-8")
    return path


def write_training_corpus(path: Path, per_kind: int = 300, code_bytes: int = 200_000) -> Path:
    """The drafts' training traffic (English dialogs, stdlib code): the input-drift reference."""
    from decoder.reference.corpus import code_documents, dialog_documents, split

    documents = split(dialog_documents("en"))[0][:per_kind] + split(code_documents(code_bytes))[0][:per_kind]
    with path.open("w", encoding="utf-8") as handle:
        for document in documents:
            chat = document.chat
            row = {"messages": chat[:-1], "completion": chat[-1]["content"], "language": document.language}
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def served_traffic(models: Path, plan: DemoPlan) -> list[dict[str, Any]]:
    """The records the gateway will log: the target's greedy answers, baseline mix (with the other
    languages' records spread through it) then shifted mix. The other languages keep their written
    answers: the reference target never learned them, and its answers would read as Chinese."""
    from decoder import load_target
    from monitor.service.demo_traffic import WRITTEN_LANGUAGES, each_language, served, traffic

    target = load_target(models / "target", device="cpu")
    baseline = traffic(plan.baseline, BASELINE_MIX, seed=plan.seed)
    shifted = traffic(plan.shifted, SHIFTED_MIX, seed=plan.seed + 1, first_index=plan.baseline)
    story = served([*baseline, *shifted], target, max_new_tokens=48)
    others = each_language(WRITTEN_LANGUAGES, plan.per_language, seed=plan.seed + 2, first_index=len(story))
    return [*spread(story[: plan.baseline], list(others)), *story[plan.baseline :]]


def spread(records: list[dict[str, Any]], extra: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`records` with `extra` inserted at even intervals, in order."""
    after: dict[int, list[dict[str, Any]]] = {}
    for number, item in enumerate(extra, start=1):
        after.setdefault(number * len(records) // (len(extra) + 1), []).append(item)
    merged = after.get(0, [])
    for position, item in enumerate(records, start=1):
        merged += [item, *after.get(position, [])]
    return merged


# -- the traffic stream ----------------------------------------------------------------------------------


class TrafficStream(threading.Thread):
    """Appends the records to the followed gateway log at a steady rate, each stamped with the moment
    it is written, as a gateway logs a request it just served; a broken line now and then."""

    def __init__(self, path: Path, records: list[dict[str, Any]], records_per_s: float, shift_at: int) -> None:
        super().__init__(name="traffic", daemon=True)
        self.path, self.records, self.interval_s, self.shift_at = path, records, 1.0 / records_per_s, shift_at
        self.written = 0
        self.stop = threading.Event()

    def run(self) -> None:
        broken_at = {self.shift_at // 2: BROKEN_LINES[0], self.shift_at + 40: BROKEN_LINES[1]}
        with self.path.open("a", encoding="utf-8") as log_file:
            for index, record in enumerate(self.requests()):
                if self.stop.wait(self.interval_s):
                    return
                stamped = {**record, "timestamp": utcnow().isoformat().replace("+00:00", "Z")}
                log_file.write(json.dumps(stamped, ensure_ascii=False) + "\n")
                if index in broken_at:
                    log_file.write(broken_at[index] + "\n")
                log_file.flush()
                self.written = index + 1

    def requests(self) -> Iterator[dict[str, Any]]:
        """The records in order, then the shifted ones again (new ids) until the stream is stopped:
        traffic keeps coming while the loop closes, however long the retrain takes."""
        yield from self.records
        shifted = self.records[self.shift_at :]
        for repeat in itertools.count(1):
            for record in shifted:
                yield {**record, "id": f"{record['id']}-again{repeat}"}

    @property
    def shifted(self) -> bool:
        return self.written > self.shift_at


# -- the daemon ------------------------------------------------------------------------------------------


def start_daemon(config_path: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """`specwatch run`, as the systemd unit starts it. One torch thread each for it and the retrain
    process it starts: on 2 cores they would otherwise fight over the same two."""
    with log_path.open("ab") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "monitor", "run", "--config", str(config_path)],
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"},
        )


def stop_daemon(process: subprocess.Popen[bytes]) -> int | None:
    """SIGTERM, as systemd stops the unit; the exit code, or None when it had to be killed."""
    if process.poll() is not None:
        return process.returncode
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return None


def readiness(port: int) -> dict[str, Any] | None:
    """The daemon's /readyz body (200 when ready, 503 with its problems while not), None while nothing
    answers on the port yet."""
    url = f"http://127.0.0.1:{port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=2.0) as response:
            body = json.load(response)
    except urllib.error.HTTPError as error:
        with error:
            body = json.load(error)
    except (OSError, ValueError):
        return None
    return body if isinstance(body, dict) else None


# -- what the display reads --------------------------------------------------------------------------------


def language_alphas(engine: Engine, draft_version: str, since: datetime) -> dict[str, tuple[float, int]]:
    """Alpha and sample count per language of one head's scored results for traffic since `since`."""
    from decoder import AcceptCounts
    from monitor.base.groups import segment_parts
    from monitor.base.results import load_results

    totals: dict[str, AcceptCounts] = {}
    samples: Counter[str] = Counter()
    for result in load_results(engine, draft_version, since):
        language = dict(segment_parts(result.segment)).get("lang", "")
        totals[language] = totals.get(language, AcceptCounts()) + result.counts
        samples[language] += 1
    return {lang: (counts.alpha, samples[lang]) for lang, counts in totals.items() if counts.alpha is not None}


@dataclass
class Seen:
    """What the display has already told, so each event is told once."""

    alerts: dict[int, str] = field(default_factory=dict)
    notifications: set[int] = field(default_factory=set)
    job: tuple[int, str, str] | None = None
    train_step: int = 0
    head_events: int = 0


class Display:
    """Prints what changed, at most a status line every `every_s` seconds, with the elapsed time."""

    def __init__(self, engine: Engine, seed_version: str, started: datetime, say: Say, every_s: float = 5.0) -> None:
        self.engine, self.started, self.say, self.every_s = engine, started, say, every_s
        self.started_clock = time.monotonic()
        self.live_version, self.live_since = seed_version, started
        self.deployed: HeadEvent | None = None
        self.finished: str | None = None  # why the loop ended without a deploy
        self.seen = Seen()
        self.last_line_at = 0.0
        self.zh_before: float | None = None

    def line(self, text: str) -> None:
        elapsed = int(time.monotonic() - self.started_clock)
        self.say(f"  {elapsed // 60}:{elapsed % 60:02d}  {text}")

    def poll(self, stream: TrafficStream) -> None:
        self.show_alerts()
        self.show_notifications()
        self.show_retrain()
        self.show_head_events()
        if time.monotonic() - self.last_line_at >= self.every_s:
            self.show_alphas(stream)
            self.last_line_at = time.monotonic()

    def alphas(self) -> dict[str, tuple[float, int]]:
        return language_alphas(self.engine, self.live_version, self.live_since)

    def show_alphas(self, stream: TrafficStream) -> None:
        alphas = self.alphas()
        if self.deployed is None and "zh" in alphas:
            self.zh_before = alphas["zh"][0]
        head = "new head, traffic since its deploy" if self.deployed else "seed head"
        parts = [f"{lang} {alphas[lang][0]:.2f} (n={alphas[lang][1]})" for lang in WATCHED if lang in alphas]
        mix = "shifted toward zh" if stream.shifted else "en + code"
        self.line(f"alpha, {head}: {', '.join(parts) or 'waiting for replays'}   [{stream.written} sent, {mix}]")

    def show_alerts(self) -> None:
        with Session(self.engine) as session:
            alerts = list(session.scalars(select(AlertRecord).order_by(AlertRecord.id)))
        for alert in alerts:
            if self.seen.alerts.get(alert.id) == alert.status:
                continue
            self.seen.alerts[alert.id] = alert.status
            segment = alert.labels.get("segment", "-")
            self.line(f"ALERT {alert.alertname} {segment}: {alert.status}")

    def show_notifications(self) -> None:
        """What the receivers accepted (the alert outbox's sent messages), one line per alert."""
        from alerts.outbox import notification_of
        from alerts.render import log_line

        with Session(self.engine) as session:
            sent = select(OutboxMessage).where(OutboxMessage.sent_at.is_not(None)).order_by(OutboxMessage.id)
            rows = [row for row in session.scalars(sent) if row.id not in self.seen.notifications]
        for row in rows:
            self.seen.notifications.add(row.id)
            notification = notification_of(row)
            for alert in notification.alerts:
                self.line(f"NOTIFY [{notification.kind}] {log_line(alert)}")

    def show_retrain(self) -> None:
        from retrain.jobs import recent_jobs

        job = next(iter(recent_jobs(self.engine, limit=1)), None)
        if job is None:
            return
        stage = str(job.progress.get("stage", ""))
        if self.seen.job != (job.id, job.state, stage):
            self.seen.job = (job.id, job.state, stage)
            detail = f" ({job.reason})" if job.state == "queued" else ""
            self.line(f"RETRAIN job {job.id} ({job.trigger}): {job.state}{f', {stage}' if stage else ''}{detail}")
            if job.state in ("refused", "failed"):
                why = job.error or "; ".join(job.decision.reasons if job.decision else [])
                self.finished = f"retrain job {job.id} {job.state}: {why}"
        step = int(job.progress.get("step", 0))
        if stage == "train" and step >= self.seen.train_step + 10:
            self.seen.train_step = step
            self.line(f"RETRAIN training step {step}/{job.progress.get('steps')}, loss {job.progress.get('loss')}")

    def show_head_events(self) -> None:
        with Session(self.engine) as session:
            events = list(session.scalars(select(HeadEvent).order_by(HeadEvent.id).offset(self.seen.head_events)))
        for event in events:
            self.seen.head_events += 1
            self.line(f"HEAD {event.event} {event.version}: {event.reason}")
            if event.event == "deployed":
                self.show_gate(event)
                self.deployed, self.live_version, self.live_since = event, event.version, event.at
            elif event.event == "rolled_back":
                self.finished = f"the deployed head was rolled back: {event.reason}"

    def show_gate(self, event: HeadEvent) -> None:
        from retrain.jobs import get_job

        job = get_job(self.engine, event.job_id) if event.job_id is not None else None
        decision = job.decision if job else None
        if decision is None:
            return
        overall, speedup = decision.overall, decision.speedup
        if overall.gain_low is not None:
            self.line(
                f"GATE {overall.samples} held-out samples: alpha {overall.live_alpha:.2f} -> "
                f"{overall.candidate_alpha:.2f}, gain {overall.gain:+.3f} "
                f"(lower bound {overall.gain_low:+.3f}); "
                f"exact-mode output unchanged: {decision.lossless.equal}; "
                f"est. speedup {speedup.live:.2f}x -> {speedup.candidate:.2f}x"
            )
        for segment, verdict in sorted(decision.segments.items()):
            if verdict.judged:
                self.line(
                    f"GATE   {segment}: {verdict.live_alpha:.2f} -> {verdict.candidate_alpha:.2f} "
                    f"({verdict.samples} samples)"
                )

    def zh_recovered(self, samples_needed: int) -> tuple[float, int] | None:
        """The new head's zh alpha on fresh traffic, once enough zh samples arrived after the deploy."""
        if self.deployed is None:
            return None
        zh = self.alphas().get("zh")
        return zh if zh is not None and zh[1] >= samples_needed else None


# -- the demo -----------------------------------------------------------------------------------------------


def show_intake(engine: Engine, say: Say) -> dict[str, int]:
    with Session(engine) as session:
        samples = list(session.execute(select(Sample.language, Sample.redactions)))
        quarantined = list(session.execute(select(QuarantinedRecord.position, QuarantinedRecord.reason)))
    languages = Counter(language for language, _ in samples)
    redactions: Counter[str] = Counter()
    for _, counts in samples:
        redactions.update(counts)
    say("  samples per language: " + ", ".join(f"{k}={v}" for k, v in languages.most_common()))
    say("  PII redacted before storage: " + ", ".join(f"{k}={v}" for k, v in redactions.most_common()))
    for position, reason in quarantined:
        say(f"  quarantined {position}: {reason}")
    return dict(languages)


def wait_ready(process: subprocess.Popen[bytes], port: int, timeout_s: float = 300.0) -> str | None:
    """The live head's version once the daemon's /readyz says it is ready; None if it exits or the time
    is up first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        body = readiness(port)
        if body is not None and body.get("ready") and body.get("draft_version"):
            return str(body["draft_version"])
        time.sleep(0.2)
    return None


def watch_loop(display: Display, stream: TrafficStream, process: subprocess.Popen[bytes], plan: DemoPlan) -> None:
    """Until the new head has proven itself on fresh zh traffic, the loop stopped, or the time is up."""
    deadline = time.monotonic() + plan.timeout_s
    while time.monotonic() < deadline:
        display.poll(stream)
        if display.zh_recovered(plan.recovered_after) or display.finished:
            return
        if process.poll() is not None:
            display.finished = f"the daemon exited with code {process.returncode}"
            return
        time.sleep(1.0)
    display.finished = f"no deployed head proven on fresh zh traffic within {plan.timeout_s:.0f}s"


@dataclass(frozen=True)
class LoopOutcome:
    deployed: str | None
    zh_before: float | None
    zh_after: float | None


def stream_and_watch(
    config: Config,
    engine: Engine,
    process: subprocess.Popen[bytes],
    records: list[dict[str, Any]],
    plan: DemoPlan,
    say: Say,
) -> LoopOutcome:
    """Watches the daemon through what it publishes: /readyz, the database (results, alerts, the alert
    outbox, jobs, head events); its log is for the user."""
    seed_version = wait_ready(process, config.metrics.port)
    if seed_version is None:
        say(f"  the daemon did not become ready; see {config.storage.data_dir / 'daemon.log'}")
        return LoopOutcome(None, None, None)
    say(f"[4/5] streaming {plan.records_per_s:g} requests/s; watching alpha, alerts, retrain and deploy")
    display = Display(engine, seed_version, utcnow(), say)
    gateway_log = config.storage.data_dir / "logs" / "gateway.jsonl"
    stream = TrafficStream(gateway_log, records, plan.records_per_s, plan.before_shift)
    stream.start()
    try:
        watch_loop(display, stream, process, plan)
    finally:
        stream.stop.set()
        stream.join()
    display.show_alphas(stream)
    recovered = display.zh_recovered(plan.recovered_after)
    if recovered is None:
        say(f"  {display.finished or 'the loop did not close'}")
    else:
        zh_threshold, _ = config.drift.threshold_for("lang=zh")
        verdict = "recovered" if recovered[0] >= zh_threshold else "did not recover"
        say(
            f"  zh alpha {verdict}: {display.zh_before or 0:.2f} on the seed head -> {recovered[0]:.2f} on the "
            f"new head, over {recovered[1]} zh requests that arrived after the deploy"
        )
    deployed = display.deployed.version if display.deployed else None
    return LoopOutcome(deployed, display.zh_before, recovered[0] if recovered else None)


def run_demo(
    data_dir: Path | None = None,
    models_dir: Path = Path("specwatch-data/models/reference-demo"),
    models_size: str = "demo",
    plan: DemoPlan | None = None,
    *,
    say: Say,
) -> DemoResult:
    plan = plan or DemoPlan()
    directory = (data_dir or Path(tempfile.mkdtemp(prefix="specwatch-demo-"))).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    say(f"specwatch demo — data dir {directory}")
    say("[1/5] reference models: a target, and draft heads trained on English and code only")
    models = reference_models(models_dir.resolve(), models_size, say)
    config = demo_config(directory, models, plan.recapture_after)
    config_path = write_config(config, directory / "config.toml")
    write_training_corpus(directory / "training-corpus.jsonl")
    (directory / "logs").mkdir(exist_ok=True)
    say("[2/5] the traffic the target served, as a gateway logs it: English and code, then mostly Chinese")
    records = served_traffic(models, plan)
    say(f"[3/5] the daemon: specwatch run --config {config_path}  (its log: {directory / 'daemon.log'})")
    engine = open_database(config)  # migrated here, so the daemon and this display never race to do it
    process = start_daemon(config_path, directory / "daemon.log")
    try:
        outcome = stream_and_watch(config, engine, process, records, plan, say)
    finally:
        exit_code = stop_daemon(process)
        say(f"[5/5] daemon stopped by SIGTERM: exit code {exit_code}")
    languages = show_intake(engine, say)
    report = write_final_report(config, engine, outcome.deployed)
    engine.dispose()
    say(json.dumps({"deployed": outcome.deployed, "zh_before": outcome.zh_before, "zh_after": outcome.zh_after}))
    say(f"report: {report}")
    return DemoResult(directory, outcome.deployed, outcome.zh_before, outcome.zh_after, exit_code, report, languages)


def write_final_report(config: Config, engine: Engine, live: str | None) -> Path:
    from monitor.service.report import build_report, write_report

    return write_report(config, build_report(config, engine, live_draft=live))
