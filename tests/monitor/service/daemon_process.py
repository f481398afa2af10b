"""A `specwatch run` subprocess for tests: its config, its start, waiting on it, its HTTP and sd_notify."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from monitor.base.db import ReplayResult
from monitor.base.results import SCORED
from monitor.service.demo import free_port

ROOT = Path(__file__).resolve().parents[3]
STARTUP_S = 120  # imports and model loading on two busy cores


def write_config(
    tmp_path: Path,
    database_url: str,
    reference: Path,
    *,
    target: Path | None = None,
    device: str = "cpu",
    **extra: str,
) -> Path:
    """A config with short intervals; returns its path. `extra` gives raw TOML lines per section
    ("key = value" each), which set keys or replace the ones given here."""
    sections = {
        "storage": f'data_dir = "{tmp_path / "data"}"\ndatabase_url = "{database_url}"',
        "intake.follow": f'paths = ["{tmp_path / "logs"}"]\npoll_interval_s = 0.2\nbatch_lines = 5',
        "intake.http": f"port = {free_port()}",
        "models": f'target = "{target or reference / "target"}"\ndraft = "{reference / "drafts" / "eagle"}"\n'
        f'device = "{device}"',
        "replay": "samples_per_round = 2\nexact_fraction = 0.0\nclaim_ttl_s = 2.0\ninterval_s = 0.2\n"
        "evaluate_interval_s = 2.0",
        "stats": "resamples = 100",
        "metrics": f"port = {free_port()}",
    }
    tables: dict[str, dict[str, str]] = {}
    for section, text in [*sections.items(), *extra.items()]:
        keys = tables.setdefault(section.replace("__", "."), {})
        for line in text.splitlines():
            key, _, value = line.partition(" = ")
            keys[key.strip()] = value
    path = tmp_path / "config.toml"
    body = "".join(f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items()) for name, keys in tables.items())
    path.write_text(body)
    (tmp_path / "logs").mkdir(exist_ok=True)
    return path


def config_value(config: Path, section: str, key: str) -> Any:
    import tomllib

    value: Any = tomllib.loads(config.read_text())
    for part in [*section.split("."), key]:
        value = value[part]
    return value


def start_daemon(config: Path, out: Path, **env: str) -> subprocess.Popen[bytes]:
    with out.open("ab") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "monitor", "run", "--config", str(config)],
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1", "SPECWATCH_HASH_SALT": "test-salt", **env},
            cwd=ROOT,
        )


def wait_until(
    what: str, check: Callable[[], bool], process: subprocess.Popen[bytes], out: Path, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if process.poll() is not None:
            pytest.fail(f"daemon exited ({process.returncode}) waiting for {what}:\n{out.read_text()[-4000:]}")
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}:\n{out.read_text()[-4000:]}")


def http_get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
    except OSError:
        return 0, {}


class NotifyListener:
    """A unix datagram socket in the abstract namespace, as systemd's NOTIFY_SOCKET, recording messages."""

    def __init__(self) -> None:
        self.name = f"specwatch-test-{uuid.uuid4().hex}"
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind("\0" + self.name)
        self.socket.settimeout(0.2)
        self.messages: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return "@" + self.name

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.socket.recv(4096)
            except TimeoutError:
                continue
            self.messages.extend(data.decode().splitlines())

    def after(self, message: str) -> list[str]:
        seen = list(self.messages)
        return seen[seen.index(message) + 1 :] if message in seen else []

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.socket.close()


def count(engine: Engine, query: Any) -> int:
    with Session(engine) as session:
        return int(session.scalar(query) or 0)


def scored_results(engine: Engine) -> int:
    return count(engine, select(func.count()).select_from(ReplayResult).where(ReplayResult.mode == SCORED))
