"""Retraining on an external trainer: tests/retrain/external_trainer.py, a real trainer in its own
process that sees only files (the verifier directory, the corpus's train.jsonl) and writes a speculators
checkpoint, stands in for speculators under torchrun. The checkpoint is imported, gated on the holdout
and deployed through the hook like an internal candidate; a failing or hanging trainer fails the job
and leaves the live head; a specwatch SIGKILLed mid-run adopts the still-running trainer on restart."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from decoder import TargetModel, create_draft, save_draft
from monitor.base.config import (
    Config,
    CorpusConfig,
    DeployConfig,
    ExternalTrainerConfig,
    IntakeConfig,
    ModelsConfig,
    RetrainConfig,
    SamplingConfig,
    Secret,
    TrainingConfig,
)
from monitor.base.db import HeadEvent, utcnow
from monitor.intake.pipeline import IntakePipeline, RawRecord
from monitor.service.demo_traffic import served, traffic
from retrain.external import process_start_ticks
from retrain.jobs import get_job, mark_dead_jobs, resumable_job
from retrain.pipeline import execute_job
from retrain.registry import HeadRegistry
from retrain.schedule import queue_job

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[2]
TRAINER = Path(__file__).with_name("external_trainer.py")
MIX = {"en": 0.5, "code": 0.3, "zh": 0.2}


@pytest.fixture(scope="module")
def answered(target: TargetModel) -> list[dict[str, Any]]:
    """Traffic the target answered, generated once for the module; each test stores it in its own database."""
    start = utcnow() - timedelta(hours=6)
    return served(traffic(60, MIX, seed=21, start=start, spacing_s=300), target, max_new_tokens=32)


@pytest.fixture(scope="module")
def weak_seed(tmp_path_factory: pytest.TempPathFactory, target: TargetModel) -> Path:
    """The live head before the retrain: an untrained eagle3 head, which a trained one beats."""
    torch.manual_seed(5)
    return save_draft(create_draft("eagle3", target), tmp_path_factory.mktemp("seed") / "eagle3")


def store_traffic(config: Config, engine: Engine, answered: list[dict[str, Any]]) -> None:
    intake = config.intake.model_copy(update={"sampling": SamplingConfig(rate=1.0), "segment_keys": []})
    everything = config.model_copy(update={"intake": IntakeConfig.model_validate(intake.model_dump())})
    raw = [RawRecord(position=f"item {i}", value=value) for i, value in enumerate(answered)]
    IntakePipeline(everything, engine, Secret("salt")).ingest("test", raw)


def trainer_command(*extra: str) -> list[str]:
    return [
        sys.executable,
        str(TRAINER),
        "--target",
        "{target}",
        "--data",
        "{train_jsonl}",
        "--output",
        "{output_dir}",
        "--aux-layer-ids",
        "{aux_layer_ids}",
        "--draft-vocab-size",
        "{draft_vocab_size}",
        "--from-pretrained",
        "{live_head}",
        *extra,
    ]


def external_config(
    config: Config, reference_models: Path, seed: Path, tmp_path: Path, command: list[str], timeout: str = "5m"
) -> Config:
    hook = [
        sys.executable,
        "-c",
        f"import os; open({str(tmp_path / 'hook.txt')!r}, 'w').write(os.environ['SPECWATCH_HEAD_VERSION'])",
    ]
    return config.model_copy(
        update={
            "models": ModelsConfig(target=reference_models / "target", draft=seed, device="cpu"),
            "retrain": RetrainConfig(
                heartbeat_s=0.5,
                stale_after_s=2,
                corpus=CorpusConfig(days=2, holdout_fraction=0.4),
                training=TrainingConfig(kind="eagle3", trainer="external", device="cpu"),
                external=ExternalTrainerConfig(
                    command=command,
                    env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TRAINER_API_TOKEN": "hunter2-secret"},
                    timeout=timeout,
                    heartbeat_s=0.3,
                ),
                deploy=DeployConfig(command=hook),
            ),
        }
    )


def output_dir(job_dir: Path) -> Path:
    return job_dir / "external" / "output"


def starts(job_dir: Path) -> list[str]:
    path = output_dir(job_dir) / "starts.log"
    return path.read_text(encoding="utf-8").split() if path.exists() else []


def test_an_external_trainers_checkpoint_is_imported_gated_and_deployed(
    config: Config,
    engine: Engine,
    reference_models: Path,
    weak_seed: Path,
    answered: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("trains for seconds: SQLite only, to keep the suite short (the job's rows are tested on both)")
    command = trainer_command("--init", str(reference_models / "drafts" / "eagle3"), "--steps", "2")
    config = external_config(config, reference_models, weak_seed, tmp_path, command)
    store_traffic(config, engine, answered)
    registry = HeadRegistry(config.heads_dir)
    seed_version = registry.ensure_seed(weak_seed).version
    job = queue_job(config, engine, trigger="quarterly", reason="test: the configured default trainer")
    assert job is not None and job.progress["trainer"] == "external"

    outcome = execute_job(config, engine, job, announce=lambda announcement: None)

    assert outcome.state == "succeeded", outcome.summary
    live = registry.live()
    assert live is not None and live.version == outcome.candidate_version and live.parent == seed_version
    assert live.kind == "eagle3" and live.source == f"retrain job {job.id} (external trainer)"
    assert (tmp_path / "hook.txt").read_text(encoding="utf-8") == live.version
    assert (
        json.loads((registry.draft_dir(live.version) / "config.json").read_text())["speculators_model_type"] == "eagle3"
    )
    args = json.loads((output_dir(job.work_dir) / "args.json").read_text(encoding="utf-8"))
    seed_config = json.loads((weak_seed / "config.json").read_text(encoding="utf-8"))["draft"]
    assert args["aux_layer_ids"] == ",".join(str(layer) for layer in seed_config["aux_layer_ids"])
    assert args["target"] == str(reference_models / "target")
    trainer_input = job.work_dir / "external" / "corpus"
    assert args["data"] == str(trainer_input / "train.jsonl") and args["draft_vocab_size"] == 512
    assert sorted(p.name for p in trainer_input.iterdir()) == [
        "conversations.jsonl",
        "sharegpt.jsonl",
        "train.jsonl",
        "trainer_manifest.json",
    ], "the trainer gets the train side in every format, and no holdout"
    assert (trainer_input / "train.jsonl").read_bytes() == (job.work_dir / "corpus" / "train.jsonl").read_bytes()
    holdout = (job.work_dir / "corpus" / "holdout.jsonl").read_text(encoding="utf-8").splitlines()
    held_keys = {json.loads(line)["sample_key"] for line in holdout}
    trainer_text = "".join(p.read_text(encoding="utf-8") for p in trainer_input.iterdir())
    assert held_keys and not any(key in trainer_text for key in held_keys)
    live_head = Path(args["from_pretrained"])
    assert live_head == config.heads_dir / "exports" / seed_version / "speculators"
    assert (live_head / "config.json").is_file()
    assert len(starts(job.work_dir)) == 1
    final = get_job(engine, job.id)
    assert final is not None and final.state == "succeeded"
    external = final.progress["external"]
    assert external["alive"] is False and external["runs"] == 1
    assert any("trained 2 steps" in line for line in external["log_tail"])
    with Session(engine) as session:
        assert [(e.event, e.version) for e in session.scalars(select(HeadEvent))] == [("deployed", live.version)]


@pytest.mark.parametrize(
    ("extra", "timeout", "expected"),
    [(["--fail"], "5m", "exit status 3"), (["--hang"], "2s", "timeout = 2s")],
    ids=["failing", "hanging"],
)
def test_a_failing_or_hanging_trainer_fails_the_job_and_keeps_the_live_head(
    config: Config,
    engine: Engine,
    reference_models: Path,
    weak_seed: Path,
    answered: list[dict[str, Any]],
    tmp_path: Path,
    extra: list[str],
    timeout: str,
    expected: str,
) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("the failure paths are the job's, not the database's: SQLite only")
    config = external_config(config, reference_models, weak_seed, tmp_path, trainer_command(*extra), timeout)
    store_traffic(config, engine, answered)
    registry = HeadRegistry(config.heads_dir)
    seed_version = registry.ensure_seed(weak_seed).version
    job = queue_job(config, engine, trigger="manual", reason="test")
    assert job is not None

    outcome = execute_job(config, engine, job, announce=lambda announcement: None)

    assert outcome.state == "failed" and outcome.summary.startswith("RetrainFailed"), outcome.summary
    assert expected in outcome.summary
    assert registry.live_version() == seed_version and [head.version for head in registry.list()] == [seed_version]
    final = get_job(engine, job.id)
    assert final is not None and final.state == "failed" and final.error and "RetrainFailed" in final.error
    record = final.progress["external"]
    assert process_start_ticks(record["pid"]) != record["start_ticks"], "the trainer is not left running"
    assert not (tmp_path / "hook.txt").exists()
    assert "hunter2-secret" not in json.dumps(final.progress)


def write_config(path: Path, config: Config, database_url: str) -> Path:
    external = config.retrain.external
    path.write_text(
        f'[storage]\ndata_dir = "{config.storage.data_dir}"\ndatabase_url = "{database_url}"\n'
        f'[models]\ntarget = "{config.models.target}"\ndraft = "{config.models.draft}"\ndevice = "cpu"\n'
        "[retrain]\nheartbeat_s = 0.5\nstale_after_s = 2\n"
        "[retrain.corpus]\ndays = 2\nholdout_fraction = 0.4\n"
        '[retrain.training]\nkind = "eagle3"\ndevice = "cpu"\n'
        f"[retrain.external]\ncommand = {json.dumps(external.command)}\nheartbeat_s = 0.3\n"
        f'env = {{ PYTHONPATH = {json.dumps(str(REPO))}, OMP_NUM_THREADS = "1" }}\n',
        encoding="utf-8",
    )
    return path


def retrain_process(path: Path, *args: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "monitor", "retrain", *args, "--json", "--config", str(path)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)


def wait_for(condition: Any, what: str, process: subprocess.Popen[str] | None = None, timeout_s: float = 120) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        assert process is None or process.poll() is None, process.communicate() if process else ""
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def release_when_adopted(engine: Engine, job_id: int, release: Path, killed_at: str) -> None:
    """Lets the held trainer go on once a later attempt has stored a heartbeat of it."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = get_job(engine, job_id)
        if job is not None and job.progress.get("external", {}).get("checked_at", "") > killed_at:
            break
        time.sleep(0.1)
    release.touch()


def test_sigkill_during_the_external_run_adopts_the_running_trainer_on_restart(
    config: Config,
    engine: Engine,
    database_url: str,
    reference_models: Path,
    weak_seed: Path,
    answered: list[dict[str, Any]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("kill and resume goes through the job lock, tested on both databases in test_jobs.py")
    release = tmp_path / "release"
    command = trainer_command("--init", str(reference_models / "drafts" / "eagle3"), "--hold-until", str(release))
    config = external_config(config, reference_models, weak_seed, tmp_path, command)
    store_traffic(config, engine, answered)
    seed_version = HeadRegistry(config.heads_dir).ensure_seed(weak_seed).version
    path = write_config(tmp_path / "config.toml", config, database_url)

    first = retrain_process(path, "--now", "--trainer", "external")
    job = wait_for(
        lambda: (j := get_job(engine, 1)) and "pid" in j.progress.get("external", {}) and j, "a trainer", first
    )
    wait_for(lambda: starts(job.work_dir), "the trainer's start", first)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    killed_at = utcnow().isoformat()
    trainer = job.progress["external"]
    assert process_start_ticks(trainer["pid"]) == trainer["start_ticks"], "the trainer outlives specwatch"
    assert HeadRegistry(config.heads_dir).live_version() == seed_version

    time.sleep(2.5)  # the killed job's heartbeat goes stale
    mark_dead_jobs(engine, config.retrain.stale_after_s)
    interrupted = resumable_job(engine)
    assert interrupted is not None and interrupted.id == job.id
    threading.Thread(target=release_when_adopted, args=(engine, job.id, release, killed_at), daemon=True).start()
    with caplog.at_level(logging.INFO, logger="retrain.external"):
        outcome = execute_job(config, engine, interrupted, announce=lambda announcement: None)

    assert outcome.state == "succeeded", outcome.summary
    assert any("adopting the external trainer" in record.getMessage() for record in caplog.records)
    assert starts(job.work_dir) == [starts(job.work_dir)[0]], "one trainer start, never a second"
    final = get_job(engine, job.id)
    assert final is not None and final.attempts == 2 and final.progress["external"]["runs"] == 1
    assert HeadRegistry(config.heads_dir).live_version() == outcome.candidate_version
