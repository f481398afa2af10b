"""`specwatch heads list`, `rollback`, `retrain` and `retrain status` on a real registry and database."""

from __future__ import annotations

import json
import logging
import re
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from monitor.base.db import HeadEvent, utcnow
from monitor.service.cli import main
from retrain.jobs import create_job, finish, set_progress, update_job
from retrain.registry import HeadRegistry
from tests.retrain.stored_decision import STORED_BEFORE_TYPING


@pytest.fixture
def config_path(tmp_path: Path, database_url: str, engine: Engine, reference_models: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[storage]\ndata_dir = "{tmp_path / "data"}"\ndatabase_url = "{database_url}"\n'
        f'[models]\ntarget = "{reference_models / "target"}"\ndraft = "{reference_models / "drafts" / "eagle"}"\n'
    )
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_heads_list_and_rollback(
    config_path: Path, tmp_path: Path, engine: Engine, reference_models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "no heads registered" in run(capsys, "heads", "list", "--config", str(config_path))[1]
    registry = HeadRegistry(tmp_path / "data" / "heads")
    seed = registry.ensure_seed(reference_models / "drafts" / "eagle")
    other = registry.register(reference_models / "drafts" / "medusa", parent=seed.version, source="test")
    registry.switch(other.version, reason="test deploy")
    registry.update(other.version, gate=STORED_BEFORE_TYPING)
    code, out, _ = run(capsys, "heads", "list", "--config", str(config_path))
    assert code == 0 and "    gate: promoted: alpha 0.610 -> 0.730" in out

    code, out, _ = run(capsys, "heads", "list", "--json", "--config", str(config_path))
    heads = {head["version"]: head["state"] for head in json.loads(out)}
    assert code == 0 and heads == {seed.version: "retired", other.version: "live"}

    code, out, _ = run(capsys, "rollback", "--reason", "on-call", "--json", "--config", str(config_path))
    assert code == 0 and json.loads(out)["live"] == seed.version
    assert registry.live_version() == seed.version and registry.get(other.version).state == "rolled_back"
    with Session(engine) as session:
        [event] = session.scalars(select(HeadEvent))
        assert (event.event, event.version, event.previous_version) == ("rolled_back", seed.version, other.version)
    code, _, err = run(capsys, "rollback", "--config", str(config_path))
    assert code == 2 and "no earlier head" in err


def test_retrain_without_a_due_reason_does_nothing(config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "retrain", "--config", str(config_path))
    assert code == 0 and "no retrain due" in out
    code, out, _ = run(capsys, "retrain", "status", "--json", "--config", str(config_path))
    assert code == 0 and json.loads(out) == []


def test_heads_import_and_export(
    config_path: Path, tmp_path: Path, reference_models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from decoder import draft_version, load_draft, load_target
    from decoder.formats.causal_lm import export_causal_lm

    target = load_target(reference_models / "target", device="cpu")
    served = export_causal_lm(load_draft(reference_models / "drafts" / "draft_model", target), target, tmp_path / "lm")
    code, out, _ = run(capsys, "heads", "import", str(served.out_dir), "--live", "--json", "--config", str(config_path))
    imported = json.loads(out)
    assert code == 0 and imported["kind"] == "draft_model" and imported["live"] is True
    registry = HeadRegistry(tmp_path / "data" / "heads")
    assert registry.live_version() == imported["version"] == draft_version(served.out_dir)

    code, out, _ = run(capsys, "heads", "export", "--out", str(tmp_path / "out"), "--config", str(config_path))
    assert code == 0 and f"exported {imported['version']} as causal-lm" in out
    assert draft_version(tmp_path / "out") == imported["version"]  # stored so: the same files
    code, _, err = run(capsys, "heads", "export", "--out", str(tmp_path / "out"), "--config", str(config_path))
    assert code == 2 and "is not empty" in err
    code, _, err = run(
        capsys, "heads", "export", "--format", "vllm", "--out", str(tmp_path / "x"), "--config", str(config_path)
    )
    assert code == 2 and "unknown head format 'vllm'" in err

    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "heads", "import", str(tmp_path / "empty"), "--config", str(config_path))
    assert code == 2 and "config.json" in err
    assert [head.version for head in registry.list()] == [imported["version"]]  # nothing registered


def test_retrain_status_states_step_steps_and_eta_of_a_training_job(
    config_path: Path, tmp_path: Path, engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    job = create_job(engine, trigger="manual", reason="by hand", kind="eagle", work_root=tmp_path / "retrain")
    now = utcnow()
    update_job(engine, job.id, state="running", started_at=now - timedelta(seconds=60), heartbeat_at=now)
    started, reported = now - timedelta(seconds=44.1), now - timedelta(seconds=4.1)
    set_progress(
        engine,
        job.id,
        stage="train",
        step=30,
        steps=120,
        loss=1.25,
        first_step=10,
        train_started_at=started.isoformat(),
        updated_at=reported.isoformat(),
    )
    # 20 steps in the 40 s between the first report and the last: 90 left take 180 s from the last, 4.1 s ago
    code, out, _ = run(capsys, "retrain", "status", "--config", str(config_path))
    shown = re.search(r"train step 30/120, ETA (\d\d):(\d\d), loss 1\.25, heartbeat \d+s ago", out)
    assert code == 0 and shown, out
    assert 170 <= int(shown[1]) * 60 + int(shown[2]) <= 175.9
    code, out, _ = run(capsys, "retrain", "status", "--json", "--config", str(config_path))
    [item] = json.loads(out)
    assert 170 <= item["eta_s"] <= 175.9 and item["progress"]["step"] == 30

    finish(engine, job.id, "failed", error="stopped by hand")
    code, out, _ = run(capsys, "retrain", "status", "--config", str(config_path))
    assert code == 0 and "train step 30/120, loss 1.25" in out and "ETA" not in out
    assert json.loads(run(capsys, "retrain", "status", "--json", "--config", str(config_path))[1])[0]["eta_s"] is None


def test_heads_export_reports_its_progress_off_a_terminal(
    config_path: Path, tmp_path: Path, reference_models: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = HeadRegistry(tmp_path / "data" / "heads")
    seed = registry.ensure_seed(reference_models / "drafts" / "eagle3")
    out = tmp_path / "speculators"
    with caplog.at_level(logging.INFO, logger="monitor.service.progress"):
        code = main(["heads", "export", "--format", "speculators", "--out", str(out), "--config", str(config_path)])
    assert code == 0 and (out / "config.json").is_file()
    lines = [record.getMessage() for record in caplog.records if record.name == "monitor.service.progress"]
    assert re.fullmatch(rf"export {seed.version} as speculators: 3/3 steps \(100%\) in \d\d:\d\d", lines[-1]), lines
