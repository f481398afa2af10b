"""Retraining end to end on the reference models: traffic that includes Chinese (a blind spot of the
live head, trained on English and code) is retrained on; the gate promotes the new head and the zh
segment's alpha clears 0.65. A deliberately worse candidate is refused. A retrain SIGKILLed during
training leaves the live head in place, and the next run resumes from its checkpoint."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from decoder import TargetModel, load_draft, read_manifest
from monitor.base.config import (
    Config,
    CorpusConfig,
    ModelsConfig,
    ReplayConfig,
    RetrainConfig,
    StatsConfig,
    TrainingConfig,
)
from monitor.base.db import HeadEvent, OutboxMessage
from monitor.evaluation.evaluate import evaluate
from monitor.replay.replayer import Replayer, Versions
from monitor.service.cli import main
from monitor.service.gate_notice import gate_decision_notifier
from retrain.gate_decision import GateDecision
from retrain.jobs import get_job
from retrain.pipeline import execute_job
from retrain.registry import HeadRegistry
from retrain.schedule import queue_job
from tests.retrain.conftest import ingest_served

MIX = {"en": 0.35, "code": 0.25, "zh": 0.4}


def retrain_config(config: Config, reference_models: Path, **training: object) -> Config:
    settings = {"steps": 40, "learning_rate": 1e-3, "batch_size": 8, "sequence_length": 96, "checkpoint_every": 10}
    return config.model_copy(
        update={
            "models": ModelsConfig(
                target=reference_models / "target", draft=reference_models / "drafts" / "eagle", device="cpu"
            ),
            "replay": ReplayConfig(samples_per_round=256, exact_fraction=0.0),
            "stats": StatsConfig(windows=["24h"], resamples=300),
            "retrain": RetrainConfig(
                corpus=CorpusConfig(days=2, holdout_fraction=0.3),
                training=TrainingConfig.model_validate({**settings, **training, "device": "cpu"}),
            ),
        }
    )


def one_backend(engine: Engine, name: str) -> None:
    """These runs train models for minutes: each runs on one backend (the job lock and registry
    logic they share is tested on both in test_jobs.py and test_registry.py)."""
    if engine.dialect.name != name:
        pytest.skip(f"runs on {name} only, to keep the suite short")


def replay_live(config: Config, engine: Engine, target: TargetModel) -> str:
    registry = HeadRegistry(config.heads_dir)
    registry.ensure_seed(config.models.draft)
    version = registry.live_version()
    assert version is not None
    draft = load_draft(registry.draft_dir(version), target)
    Replayer(engine, target, draft, Versions(target.fingerprint[:16], version), config.replay).replay_all()
    return version


def alphas(config: Config, engine: Engine, version: str) -> dict[str, float]:
    evaluation = evaluate(config, engine, version)
    return {s.segment: s.alpha for s in evaluation.stats if s.window == "24h" and s.alpha is not None}


@pytest.mark.slow
def test_retrain_on_chinese_traffic_is_promoted_and_lifts_zh_above_the_threshold(
    config: Config, engine: Engine, reference_models: Path, target: TargetModel
) -> None:
    one_backend(engine, "sqlite")
    config = retrain_config(config, reference_models)
    ingest_served(config, engine, target, 240, MIX, seed=11)
    seed_version = replay_live(config, engine, target)
    before = alphas(config, engine, seed_version)
    assert before["lang=zh"] < 0.65 < before["lang=en"], before

    job = queue_job(config, engine, trigger="recapture", reason="test: zh below threshold")
    assert job is not None
    outcome = execute_job(config, engine, job, announce=gate_decision_notifier(config, engine))
    assert outcome.state == "succeeded", outcome.summary
    decision = outcome.decision
    assert decision is not None and decision.overall.gain_low is not None
    assert decision.overall.gain_low >= config.retrain.gate.min_alpha_gain
    zh = decision.segments["lang=zh"]
    assert decision.lossless.equal and zh.candidate_alpha is not None and zh.live_alpha is not None
    assert zh.candidate_alpha > 0.65 > zh.live_alpha, zh

    registry = HeadRegistry(config.heads_dir)
    live = registry.live()
    assert live is not None and live.version == outcome.candidate_version and live.parent == seed_version
    assert live.gate and live.corpus and live.corpus["counts"]
    assert GateDecision.from_dict(live.gate) == decision == get_job(engine, job.id).decision  # type: ignore[union-attr]
    new_version = replay_live(config, engine, target)
    after = alphas(config, engine, new_version)
    assert after["lang=zh"] > 0.65, (before, after)
    assert after["lang=en"] > before["lang=en"] - config.retrain.gate.segment_tolerance - 0.02, (before, after)
    with Session(engine) as session:
        events = [(e.event, e.version) for e in session.scalars(select(HeadEvent))]
        notes = [m.payload["alerts"][0]["labels"]["alertname"] for m in session.scalars(select(OutboxMessage))]
    assert events == [("deployed", new_version)] and "RetrainGateDecision" in notes


@pytest.mark.slow
def test_a_worse_candidate_is_refused_and_the_live_head_stays(
    config: Config, engine: Engine, reference_models: Path, target: TargetModel
) -> None:
    one_backend(engine, "sqlite")
    config = retrain_config(config, reference_models, kind="medusa", steps=3, checkpoint_every=3)
    ingest_served(config, engine, target, 80, MIX, seed=12)
    seed_version = replay_live(config, engine, target)
    job = queue_job(config, engine, trigger="manual", reason="test: a barely trained medusa")
    assert job is not None
    outcome = execute_job(config, engine, job, announce=gate_decision_notifier(config, engine))
    assert outcome.state == "refused", outcome.summary
    assert "gain" in outcome.summary
    registry = HeadRegistry(config.heads_dir)
    assert registry.live_version() == seed_version
    assert outcome.candidate_version and registry.get(outcome.candidate_version).state == "refused"


def write_config(tmp_path: Path, config: Config, database_url: str) -> Path:
    models, training = config.models, config.retrain.training
    path = tmp_path / "config.toml"
    path.write_text(
        f'[storage]\ndata_dir = "{config.storage.data_dir}"\ndatabase_url = "{database_url}"\n'
        f'[models]\ntarget = "{models.target}"\ndraft = "{models.draft}"\ndevice = "cpu"\n'
        "[retrain]\nheartbeat_s = 0.5\nstale_after_s = 3\n"
        "[retrain.corpus]\ndays = 2\nholdout_fraction = 0.3\n"
        f"[retrain.training]\nsteps = {training.steps}\ncheckpoint_every = {training.checkpoint_every}\n"
        f'batch_size = 8\nsequence_length = 96\ndevice = "cpu"\n'
    )
    return path


def retrain_process(path: Path, *args: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "monitor", "retrain", *args, "--json", "--config", str(path)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)


@pytest.mark.slow
def test_sigkill_during_training_keeps_the_live_head_and_the_next_run_resumes(
    tmp_path: Path,
    config: Config,
    engine: Engine,
    database_url: str,
    reference_models: Path,
    target: TargetModel,
    capsys: pytest.CaptureFixture[str],
) -> None:
    one_backend(engine, "postgresql")
    config = retrain_config(config, reference_models, steps=120, checkpoint_every=10)
    ingest_served(config, engine, target, 80, MIX, seed=13)
    seed_version = replay_live(config, engine, target)
    path = write_config(tmp_path, config, database_url)

    process = retrain_process(path, "--now")
    deadline = time.monotonic() + 300
    job = None
    while time.monotonic() < deadline:
        job = get_job(engine, 1)
        if job is not None and job.progress.get("step", 0) >= 15:
            break
        assert process.poll() is None, process.communicate()
        time.sleep(0.2)
    assert job is not None and job.progress.get("step", 0) >= 15, "training did not get going"
    assert main(["retrain", "status", "--config", str(path)]) == 0
    status = capsys.readouterr().out
    assert re.search(r"job +1 running .* train step \d+/120, ETA \d\d:\d\d, loss [\d.]+, heartbeat", status), status
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert HeadRegistry(config.heads_dir).live_version() == seed_version, "the live head is untouched"
    assert (job.work_dir / "train" / "checkpoint.pt").is_file()

    time.sleep(3.5)  # the dead job's heartbeat goes stale
    resumed = retrain_process(path)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert re.search(r"retrain job 1: 120/120 steps \(100%\) in \d\d:\d\d", err), "stderr is no terminal: log lines"
    outcome = json.loads(out[out.index("{") :])
    assert outcome["job_id"] == 1 and outcome["state"] in ("succeeded", "refused")
    final = get_job(engine, 1)
    assert final is not None and final.attempts == 2
    candidate = read_manifest(HeadRegistry(config.heads_dir).draft_dir(outcome["candidate_version"]))
    assert candidate.training["resumed_from_step"] >= 10
