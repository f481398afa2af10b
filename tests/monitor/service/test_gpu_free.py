"""GPU-free mode end to end: `specwatch run` with no model directory configured takes in gateway logs that
carry the engine's own per-request acceptance (vLLM's `metrics.speculative_decoding`), computes live
statistics, fires AcceptanceBelowThreshold for the segment the engine's draft fails on, and posts it to
Slack (a local fake Slack speaking its Web API). Nothing is replayed and no replay alert fires."""

from __future__ import annotations

import json
import random
import signal
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from monitor.base.db import LiveResult, ReplayResult, Sample, utcnow
from monitor.service.demo_traffic import traffic, write_jsonl
from tests.alerts.fake_slack import FakeSlack
from tests.monitor.engine_side import vllm_spec_metrics
from tests.monitor.service.daemon_process import (
    STARTUP_S,
    config_value,
    count,
    http_get,
    start_daemon,
    wait_until,
    write_config,
)

TOKEN = "xoxb-gpu-free-test"
WINDOW = 4
ACCEPT_PROBABILITY = {"en": 0.85, "zh": 0.3}  # per drafted token, given the ones before it were accepted


def engine_steps(rng: random.Random, probability: float, steps: int) -> tuple[list[int], list[int]]:
    """Per-step drafted and accepted counts of an engine whose draft tokens are accepted with `probability`."""
    accepted = []
    for _ in range(steps):
        count = 0
        while count < WINDOW and rng.random() < probability:
            count += 1
        accepted.append(count)
    return [WINDOW] * steps, accepted


def gateway_log(count: int, seed: int) -> list[dict[str, Any]]:
    """Demo traffic as a gateway logs an OpenAI chat completion served by vLLM with per-request metrics."""
    rng = random.Random(seed)
    start = utcnow() - timedelta(minutes=50)
    logged = []
    for record in traffic(count, {"en": 0.5, "zh": 0.5}, seed=seed, start=start, spacing_s=2400 / count):
        language = "zh" if any("\u4e00" <= ch <= "\u9fff" for ch in record["completion"]) else "en"
        drafted, accepted = engine_steps(rng, ACCEPT_PROBABILITY[language], rng.randint(6, 14))
        logged.append(
            {
                "request": {"model": record["model"], "messages": record["messages"], "temperature": 0.0},
                "response": {
                    "id": record["id"],
                    "created": record["timestamp"],
                    "choices": [{"message": {"content": record["completion"]}, "finish_reason": "stop"}],
                    "metrics": {
                        "speculative_decoding": vllm_spec_metrics(
                            drafted, accepted, WINDOW, detailed=rng.random() < 0.5
                        )
                    },
                },
                "metadata": {**record["metadata"], "language": language},
            }
        )
    return logged


@pytest.fixture
def gpu_free_slack(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("SW_GPU_FREE_SLACK_TOKEN", TOKEN)
    with FakeSlack(token=TOKEN) as fake:
        yield fake


@pytest.mark.slow
def test_the_daemon_alerts_on_the_engines_own_acceptance_without_any_model(
    tmp_path: Path, engine: Engine, database_url: str, daemons: list[Any], gpu_free_slack: FakeSlack
) -> None:
    config = write_config(
        tmp_path,
        database_url,
        tmp_path / "no-models",
        models='device = "cpu"',
        intake="segment_keys = []",
        drift="min_samples = 20",
        alerts=(
            'group_wait = "0s"\ndispatch_interval_s = 0.5\ndefault_receiver = "oncall"\n'
            f'receivers = {{ oncall = {{ type = "slack", channel = "#inference-oncall", '
            f'bot_token = {{ env = "SW_GPU_FREE_SLACK_TOKEN" }}, slack_api_url = "{gpu_free_slack.api_url}" }} }}'
        ),
    )
    text = config.read_text()
    text = "\n".join(line for line in text.splitlines() if not line.startswith(("target = ", "draft = ")))
    config.write_text(text + "\n")
    assert "target =" not in config.read_text() and "draft =" not in config.read_text()
    records = gateway_log(80, seed=5)
    write_jsonl(tmp_path / "logs" / "gateway.jsonl", iter(records))
    out = tmp_path / "daemon.log"
    process = start_daemon(config, out)
    daemons.append(process)
    health = f"http://127.0.0.1:{config_value(config, 'metrics', 'port')}"

    def posted() -> list[str]:
        return [message.get("text", "") + json.dumps(message.get("blocks", "")) for message in gpu_free_slack.posts()]

    wait_until(
        "live counts stored",
        lambda: count(engine, select(func.count()).select_from(LiveResult)) == 80,
        process,
        out,
        STARTUP_S,
    )
    wait_until(
        "AcceptanceBelowThreshold for lang=zh on Slack",
        lambda: any("AcceptanceBelowThreshold" in post and "lang=zh" in post for post in posted()),
        process,
        out,
        60,
    )
    status, ready = http_get(f"{health}/readyz")
    assert status == 200 and ready["acceptance"] == "engine" and ready["draft_version"] == "engine", ready
    assert not any("lang=en" in post and "AcceptanceBelowThreshold" in post for post in posted())
    assert count(engine, select(func.count()).select_from(ReplayResult)) == 0, "nothing is replayed"
    assert count(engine, select(func.count()).select_from(Sample)) == 80
    assert not any("ReplayStalled" in post for post in posted())
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 0, out.read_text()[-3000:]
    assert "GPU-free mode" in out.read_text()
