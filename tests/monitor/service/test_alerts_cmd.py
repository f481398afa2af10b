"""`specwatch alerts ...` against a real database and a fake Slack on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from alerts.lifecycle import raise_findings
from monitor.base.config import load_config
from monitor.evaluation.finding import Finding
from monitor.service.cli import main
from tests.alerts.fake_slack import FakeSlack

TOKEN = "xoxb-cli-test-token"


@pytest.fixture
def slack(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSlack]:
    monkeypatch.setenv("SW_CLI_SLACK_TOKEN", TOKEN)
    with FakeSlack(token=TOKEN) as fake:
        yield fake


@pytest.fixture
def config_path(tmp_path: Path, database_url: str, slack: FakeSlack, engine: Engine) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[storage]\ndata_dir = "{tmp_path / "data"}"\ndatabase_url = "{database_url}"\n'
        '[alerts]\ndefault_receiver = "oncall"\n'
        '[alerts.receivers.console]\ntype = "console"\n'
        '[alerts.receivers.oncall]\ntype = "slack"\nchannel = "#oncall"\n'
        f'bot_token = {{ env = "SW_CLI_SLACK_TOKEN" }}\nslack_api_url = "{slack.api_url}"\ntimeout_s = 1.0\n'
    )
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_test_command_checks_the_wiring(
    config_path: Path, slack: FakeSlack, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "alerts", "test", "--config", str(config_path))
    assert code == 0 and "delivered to oncall" in out
    assert "SpecwatchTest" in slack.posts()[0]["text"]
    slack.stop()
    code, _, err = run(capsys, "alerts", "test", "--config", str(config_path), "--receiver", "oncall")
    assert code == 1 and "NOT delivered" in err and TOKEN not in err
    code, out, _ = run(capsys, "alerts", "test", "--config", str(config_path), "--receiver", "console", "--json")
    assert code == 0 and json.loads(out)["delivered"] is True
    code, _, err = run(capsys, "alerts", "test", "--config", str(config_path), "--receiver", "nobody")
    assert code == 2 and "no receiver 'nobody'" in err


def test_list_show_silence_unsilence(config_path: Path, engine: Engine, capsys: pytest.CaptureFixture[str]) -> None:
    config = load_config(config_path).alerts
    finding = Finding("threshold", "lang=zh", "1h", "critical", "alpha 0.41 below 0.65 for lang=zh", {"alpha": 0.41})
    raise_findings(config, engine, [finding], {"threshold"}, now=datetime.now(UTC) - timedelta(minutes=1))

    code, out, _ = run(
        capsys,
        "alerts",
        "silence",
        "segment=lang=zh",
        "--duration",
        "2h",
        "--comment",
        "retrain",
        "--config",
        str(config_path),
        "--json",
    )
    assert code == 0
    silence_id = json.loads(out)["id"]
    code, out, _ = run(capsys, "alerts", "list", "--json", "--config", str(config_path))
    [alert] = json.loads(out)
    assert alert["labels"]["alertname"] == "AcceptanceBelowThreshold"
    assert alert["muted_by"] == f"silenced by silence {silence_id}"
    code, out, _ = run(capsys, "alerts", "list", "--config", str(config_path))
    assert "muted" in out and "lang=zh" in out

    code, out, _ = run(capsys, "alerts", "show", alert["fingerprint"][:6], "--config", str(config_path))
    assert code == 0 and "alpha: 0.41" in out
    code, out, _ = run(capsys, "alerts", "silences", "--json", "--config", str(config_path))
    assert [row["id"] for row in json.loads(out)] == [silence_id]
    assert run(capsys, "alerts", "unsilence", str(silence_id), "--config", str(config_path))[0] == 0
    assert run(capsys, "alerts", "unsilence", str(silence_id), "--config", str(config_path))[0] == 2
    code, out, _ = run(capsys, "alerts", "list", "--json", "--config", str(config_path))
    assert json.loads(out)[0]["muted_by"] is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["alerts", "silence", "segment", "--duration", "1h", "--comment", "x"], "not a matcher"),
        (["alerts", "silence", "a=b", "--duration", "soon", "--comment", "x"], "--duration 'soon'"),
        (["alerts", "silence", "a=b", "--until", "2020-01-01T00:00:00", "--comment", "x"], "end in the future"),
        (["alerts", "show", "ffffffff"], "no alert with fingerprint"),
    ],
)
def test_bad_input_gets_a_clear_error(
    config_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, _, err = run(capsys, *args, "--config", str(config_path))
    assert code == 2 and message in err
