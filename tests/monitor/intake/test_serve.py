"""`specwatch intake serve` as a real process: HTTP intake and file following until SIGTERM."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from monitor.base.db import Sample, create_db_engine
from tests.monitor.intake.traffic import record, write_log


def stored(database_url: str) -> int:
    engine = create_db_engine(database_url)
    try:
        with Session(engine) as session:
            return session.scalar(select(func.count()).select_from(Sample)) or 0
    finally:
        engine.dispose()


def wait_for(condition: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def test_serve_takes_http_and_followed_files_then_stops_on_sigterm(tmp_path: Path, database_url: str) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    write_log(logs / "gw.jsonl", range(3))
    config = tmp_path / "config.toml"
    config.write_text(
        f'[storage]\ndata_dir = "{tmp_path / "data"}"\ndatabase_url = "{database_url}"\n'
        f'[intake.follow]\npaths = ["{logs}"]\npoll_interval_s = 0.2\n'
        "[intake.http]\nport = 0\ntoken = {}\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "monitor", "intake", "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "SPECWATCH_HASH_SALT": "serve-test"},
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        url = banner.strip().split()[-1]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1/samples")
        body = json.dumps([record(100), record(101, "zh")]).encode()
        request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as reply:
            assert json.loads(reply.read())["stored"] == 2
        wait_for(lambda: stored(database_url) == 5)
        write_log(logs / "gw.jsonl", range(3, 6))
        wait_for(lambda: stored(database_url) == 8)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
