"""`specwatch status` and `specwatch evaluate` on both sources: shadow replay results and the serving engine's
own reports stored in a real database (SQLite, and PostgreSQL when configured), with replay configured and
in GPU-free mode (no models)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from monitor.base.config import load_config
from monitor.base.db import utcnow
from monitor.base.results import HISTOGRAM_ESTIMATE, PER_STEP
from monitor.evaluation.findings_store import latest_findings
from monitor.evaluation.status import ESTIMATE_MARK, GPU_FREE_NOTE
from monitor.replay.live_models import ENGINE_VERSION
from monitor.service.cli import main
from monitor.service.commands.status_cmd import live_draft_version
from retrain.registry import HeadRegistry
from tests.monitor.stored_counts import HIGH, LOW, NONE_ACCEPTED, store_engine_reports, store_traffic


def fake_draft(directory: Path) -> Path:
    """A draft directory the head registry takes in without loading it: a causal LM's config and weights file."""
    directory.mkdir(parents=True)
    (directory / "config.json").write_text('{"model_type": "llama", "architectures": ["LlamaForCausalLM"]}')
    (directory / "model.safetensors").write_bytes(b"not loaded by status")
    return directory


def status_config_file(tmp_path: Path, database_url: str, models: bool) -> Path:
    """A config on the test database; with `models`, replay is configured (target and draft named)."""
    text = (
        f'[storage]\ndata_dir = "{tmp_path / "data"}"\ndatabase_url = "{database_url}"\n'
        '[stats]\nwindows = ["1h", "24h"]\nresamples = 200\n[drift]\nmin_samples = 10\n'
    )
    if models:
        target = tmp_path / "target"
        target.mkdir()
        text += f'[models]\ntarget = "{target}"\ndraft = "{fake_draft(tmp_path / "seed-draft")}"\n'
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def status_rows(capsys: pytest.CaptureFixture[str], path: Path) -> dict[str, dict[str, Any]]:
    assert main(["status", "--json", "--config", str(path), "--window", "24h"]) == 0
    return {row["segment"]: row for row in json.loads(capsys.readouterr().out)}


def test_status_shows_shadow_and_live_side_by_side(
    engine: Engine, database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = status_config_file(tmp_path, database_url, models=True)
    version = live_draft_version(load_config(path))
    now = utcnow()
    store_traffic(engine, "lang=en", 12, now=now, shadow=HIGH, live=HIGH, draft_version=version, basis=PER_STEP)
    store_traffic(
        engine, "lang=zh", 12, now=now, shadow=LOW, live=NONE_ACCEPTED, draft_version=version, basis=HISTOGRAM_ESTIMATE
    )
    store_engine_reports(engine, "lang=en", 2, now=now, steps=HIGH, basis=PER_STEP)  # sampled out of replay
    store_engine_reports(engine, "lang=en", 3, now=now, steps=HIGH, basis=None)  # R unknown

    rows = status_rows(capsys, path)
    assert list(rows) == ["*", "lang=en", "lang=zh"]
    zh, en, everything = rows["lang=zh"], rows["lang=en"], rows["*"]
    assert set(zh) == {"segment", "shadow", "live", "primary", "state", "trend", "threshold", "paired"}
    assert zh["primary"] == "shadow" and zh["threshold"] == 0.65
    assert zh["shadow"]["alpha"] == pytest.approx(0.25) and zh["live"]["alpha"] == 0.0
    assert zh["shadow"]["source"] == "shadow" and zh["live"]["source"] == "live"
    assert zh["live"]["rejected_estimated"] == 12 and en["live"]["rejected_estimated"] == 0
    assert zh["state"] == "breach" and en["state"] == "ok"
    assert zh["trend"] in {"↑", "↓", "→", "·"}
    assert (zh["paired"], en["paired"], everything["paired"]) == (12, 12, 24)
    assert en["shadow"]["samples"] == 12 and en["live"]["samples"] == 14, "unsampled reports count live, unpaired"
    assert en["live"]["draft_acceptance_rate"] == pytest.approx(11 / 12)

    assert main(["status", "--config", str(path), "--window", "24h"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == f"states and alerts read shadow counts: specwatch's replay of draft {version}"
    assert GPU_FREE_NOTE not in out
    header = next(line for line in lines if line.startswith("segment"))
    assert all(f" {column} " in header for column in ("shadow", "live", "A/D", "paired", "ids"))
    [zh_line] = [line for line in lines if line.startswith("lang=zh")]
    assert f"{ESTIMATE_MARK}0.000" in zh_line and "0.250" in zh_line and "breach" in zh_line
    [en_line] = [line for line in lines if line.startswith("lang=en")]
    assert ESTIMATE_MARK not in en_line and "0.917" in en_line
    assert "3 engine reports in the last 24h lacked R" in out


def test_status_and_evaluate_in_gpu_free_mode_read_the_engines_own_counts(
    engine: Engine, database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = status_config_file(tmp_path, database_url, models=False)
    config = load_config(path)
    assert not config.replays and config.models.draft is None
    assert live_draft_version(config) == ENGINE_VERSION
    now = utcnow()
    store_traffic(engine, "lang=en", 12, now=now, shadow=None, live=HIGH)
    store_traffic(engine, "lang=zh", 12, now=now, shadow=None, live=NONE_ACCEPTED)

    rows = status_rows(capsys, path)
    zh = rows["lang=zh"]
    assert zh["primary"] == "live" and zh["shadow"] is None and zh["paired"] == 0
    assert zh["live"]["alpha"] == 0.0 and zh["state"] == "breach"
    assert rows["lang=en"]["state"] == "ok"

    assert main(["status", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"states and alerts read live counts: {GPU_FREE_NOTE}" in out.splitlines()[0]
    header = next(line for line in out.splitlines() if line.startswith("segment"))
    assert " live " in header and " shadow " not in header, "nothing replayed: no shadow columns"
    assert "acceptance is the serving engine's own (GPU-free mode: no replay)" in out
    assert "lacked R" not in out, "every report carried R"

    assert main(["evaluate", "--config", str(path)]) == 0
    assert "evaluated on live counts" in capsys.readouterr().out
    threshold = [f for f in latest_findings(engine) if f.detector == "threshold"]
    assert {f.segment for f in threshold} == {"lang=zh"}
    assert {f.draft_version for f in threshold} == {ENGINE_VERSION}

    assert main(["evaluate", "--config", str(path)]) == 0
    capsys.readouterr()
    again = {f.window: f for f in latest_findings(engine) if f.detector == "threshold"}
    assert sorted(f.id for f in again.values()) == sorted(f.id for f in threshold), "evaluated again: the same rows"
    assert all(f.times_seen == 2 and f.created_at < f.last_seen_at and f.resolved_at is None for f in again.values())
    assert main(["findings", "--json", "--config", str(path)]) == 0
    items = {item["window"]: item for item in json.loads(capsys.readouterr().out) if item["detector"] == "threshold"}
    assert set(items) == set(again) == {"1h", "24h"}
    day, item = again["24h"], items["24h"]
    assert (item["times_seen"], item["resolved_at"]) == (2, None)
    assert (item["created_at"], item["last_seen_at"]) == (day.created_at.isoformat(), day.last_seen_at.isoformat())
    assert main(["findings", "--config", str(path)]) == 0
    [line] = [line for line in capsys.readouterr().out.splitlines() if "threshold:" in line and "over 24h" in line]
    assert f"{day.created_at:%Y-%m-%d %H:%M:%S} .. {day.last_seen_at:%Y-%m-%d %H:%M:%S} (seen 2x)" in line


def test_gpu_free_mode_names_results_after_the_registrys_live_head(
    engine: Engine, database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = status_config_file(tmp_path, database_url, models=False)
    config = load_config(path)
    seeded = HeadRegistry(config.heads_dir).ensure_seed(fake_draft(tmp_path / "deployed"))
    assert live_draft_version(config) == seeded.version
    assert main(["status", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert GPU_FREE_NOTE in out and "no replayed samples or engine reports in the last 24h" in out
