import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from monitor.service.cli import build_parser, main
from tests.monitor.intake.traffic import line

ROOT = Path(__file__).resolve().parents[3]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "monitor", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])},
        timeout=120,
    )


def test_help_lists_every_command_with_help_text() -> None:
    parser = build_parser()
    actions = [a for a in parser._actions if a.dest == "command"]
    choices = actions[0]._choices_actions  # type: ignore[attr-defined]
    names = {choice.dest for choice in choices}
    assert {"init", "config", "db", "ingest", "intake"} <= names
    assert all(choice.help for choice in choices)


def test_init_ingest_errors_end_to_end(tmp_path: Path) -> None:
    result = run_cli("init", "--data-dir", "data", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "config.toml").exists() and (tmp_path / "data" / "specwatch.db").exists()
    assert oct((tmp_path / "data" / "hash_salt").stat().st_mode)[-3:] == "600"
    again = run_cli("init", cwd=tmp_path)
    assert again.returncode == 2 and "--force" in again.stderr

    log = tmp_path / "gw.jsonl"
    log.write_bytes(line(1) + line(2, "zh") + b'{"id": 3, "messages": [}\n' + line(4, "code"))
    result = run_cli("ingest", str(log), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "4 records: 3 stored, 0 duplicates, 0 sampled out, 1 quarantined" in result.stderr

    errors = run_cli("intake", "errors", "--json", cwd=tmp_path)
    [item] = json.loads(errors.stdout)
    assert item["position"] == f"line 3 (byte {len(line(1)) + len(line(2, 'zh'))})"
    assert item["reason"].startswith("malformed JSON")
    assert item["source"] == f"file:{log}"

    stats = json.loads(run_cli("intake", "stats", "--json", cwd=tmp_path).stdout)
    assert stats[0]["stored"] == 3
    heads = sorted(p.name[:4] for p in (ROOT / "migrations" / "versions").glob("0*.py"))
    assert run_cli("db", "current", cwd=tmp_path).stdout.strip() == heads[-1]


def test_ingest_missing_path_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[storage]\ndata_dir = "{tmp_path}"\n')
    assert main(["ingest", "--config", str(config), str(tmp_path / "nope.jsonl")]) == 2
    assert "no such file or directory" in capsys.readouterr().err


def test_bad_config_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[intake]\nformat = 'xml'\n")
    assert main(["db", "upgrade", "--config", str(config)]) == 2
    assert "intake.format:" in capsys.readouterr().err
