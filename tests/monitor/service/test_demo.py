"""The demo, run as a user runs it: a real daemon subprocess on the tiny reference models, traffic streamed
into its followed log. The loop must close up to the gate's decision: the zh breach alert goes out, a
recapture retrain runs, the gate decides, the daemon drains on SIGTERM and the report is written. With
the tiny models the gate may refuse the candidate (their small head tends to lose a segment while it
learns Chinese); when it deploys, the new head's zh alpha on fresh traffic must be measured.

    SPECWATCH_TEST_REFERENCE_DIR=/tmp/tiny-ref .venv/bin/pytest tests/monitor/service/test_demo.py
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from monitor.base.config import load_config
from monitor.base.db import AlertRecord, HeadEvent, RetrainJob, Sample, create_db_engine
from monitor.intake.language import detect_language
from monitor.service.cli import main
from monitor.service.demo import DemoPlan, demo_config, readiness, run_demo, spread, write_config
from monitor.service.demo_traffic import WRITTEN_LANGUAGES, each_language, traffic
from retrain.gate_decision import GateDecision


def test_traffic_shifts_with_the_mix_and_is_seeded() -> None:
    english = [r["metadata"]["route"] for r in traffic(50, {"en": 1.0}, seed=3)]
    assert set(english) == {"chat"}
    assert list(traffic(5, {"zh": 0.5, "code": 0.5}, seed=3)) == list(traffic(5, {"zh": 0.5, "code": 0.5}, seed=3))
    code = next(iter(traffic(1, {"code": 1.0})))
    assert code["metadata"]["route"] == "code-assist"


def test_each_written_language_is_detected_as_itself() -> None:
    assert set(WRITTEN_LANGUAGES) == {"vi", "id", "th", "es", "fr", "de", "pt", "ar"}
    records = list(each_language(WRITTEN_LANGUAGES, 3))
    assert [r["metadata"]["region"] for r in records[:2]] == ["vn", "id"]
    detected = [detect_language(f"{r['messages'][-1]['content']}\n{r['completion']}") for r in records]
    assert detected == [*WRITTEN_LANGUAGES] * 3


def test_spread_inserts_evenly_and_in_order() -> None:
    merged = spread(list(range(8)), ["a", "b", "c"])
    assert merged == [0, 1, "a", 2, 3, "b", 4, 5, "c", 6, 7]
    assert spread([], ["a"]) == ["a"] and spread([1], []) == [1]


def test_demo_config_round_trips_through_its_toml(tmp_path: Path) -> None:
    config = demo_config(tmp_path / "data", tmp_path / "models", recapture_after="30s")
    loaded = load_config(write_config(config, tmp_path / "config.toml"))
    assert loaded == config
    assert loaded.retrain.recapture_after == "30s" and loaded.intake.follow.paths == [tmp_path / "data" / "logs"]


class Readyz(BaseHTTPRequestHandler):
    """/readyz as the daemon answers it: 503 with its problems, then 200 once ready."""

    answers: ClassVar[list[tuple[int, bytes]]] = []

    def do_GET(self) -> None:
        status, body = self.answers.pop(0)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_readiness_reads_the_readyz_body_ready_or_not(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Readyz)
    port = server.server_address[1]
    Readyz.answers = [
        (503, json.dumps({"ready": False, "problems": ["models not loaded"], "draft_version": None}).encode()),
        (200, json.dumps({"ready": True, "problems": [], "draft_version": "0123456789abcdef"}).encode()),
        (200, b"<html>not json</html>"),
    ]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert readiness(port) == {"ready": False, "problems": ["models not loaded"], "draft_version": None}
        assert readiness(port) == {"ready": True, "problems": [], "draft_version": "0123456789abcdef"}
        assert readiness(port) is None
    finally:
        server.shutdown()
        server.server_close()
    assert readiness(port) is None  # nothing listens


@pytest.mark.slow
def test_demo_closes_the_loop_on_a_real_daemon(
    tmp_path: Path, reference_models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = DemoPlan(baseline=80, shifted=900, records_per_s=10.0, recapture_after="15s", timeout_s=400.0)
    result = run_demo(tmp_path / "demo", models_dir=reference_models, models_size="tiny", plan=plan, say=print)
    out = capsys.readouterr().out
    assert result.daemon_exit == 0, out[-3000:]
    engine = create_db_engine(f"sqlite:///{tmp_path / 'demo' / 'specwatch.db'}")
    with Session(engine) as session:
        alerts = {(a.alertname, a.labels.get("segment")) for a in session.scalars(select(AlertRecord))}
        jobs = list(session.scalars(select(RetrainJob)))
        events = [event.event for event in session.scalars(select(HeadEvent))]
        segments = set(session.scalars(select(Sample.segment).distinct()))
    engine.dispose()
    assert segments and all(segment.startswith("tenant=") for segment in segments)  # per-tenant segments
    assert ("AcceptanceBelowThreshold", "lang=zh") in alerts, out[-3000:]  # the roll-up across tenants
    assert "NOTIFY [firing] AcceptanceBelowThreshold segment=lang=zh" in out
    assert [job.trigger for job in jobs] == ["recapture"] and jobs[0].state in ("succeeded", "refused"), out[-3000:]
    assert jobs[0].decision and GateDecision.from_dict(jobs[0].decision).overall.samples > 0
    assert result.zh_before is not None and result.zh_before < 0.65
    if jobs[0].state == "succeeded":
        assert events == ["deployed"] and result.deployed == jobs[0].candidate_version
        assert result.zh_after is not None, out[-3000:]
    else:
        assert events == ["refused"] and result.deployed is None
    assert result.samples_per_language.get("zh", 0) > 30
    assert all(result.samples_per_language.get(language) == plan.per_language for language in WRITTEN_LANGUAGES)
    assert main(["status", "--json", "--config", str(tmp_path / "demo" / "config.toml")]) == 0
    shown = {status["segment"] for status in json.loads(capsys.readouterr().out)}
    assert {f"lang={language}" for language in WRITTEN_LANGUAGES} <= shown, sorted(shown)
    assert result.report is not None and result.report.exists() and "<svg" in result.report.read_text()
    summary = json.loads(out.strip().splitlines()[-2])
    assert summary["deployed"] == result.deployed
