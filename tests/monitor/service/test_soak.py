"""A compressed soak: `specwatch run` as a real subprocess, every interval cut to a fraction of a second,
fed 48 minutes of simulated traffic (one request a simulated second, drifting to Chinese after 3 minutes,
with a broken line now and then) as fast as it takes it. Alerts fire, a recapture retrain runs in its own
process, the gate decides. At the end: every record stored once and replayed, no job stuck (no leases
left, every retrain finished, no job that crashed), the daemon's memory bounded, SIGTERM exits 0.

    SPECWATCH_TEST_REFERENCE_DIR=/tmp/tiny-ref .venv/bin/pytest tests/monitor/service/test_soak.py
"""

from __future__ import annotations

import statistics
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from decoder import draft_version
from monitor.base.db import IntakeCounter, QuarantinedRecord, ReplayClaim, ReplayResult, RetrainJob, Sample, utcnow
from monitor.base.results import SCORED
from monitor.service.demo_traffic import traffic, write_jsonl
from retrain.registry import HeadRegistry
from tests.monitor.service.daemon_process import (
    STARTUP_S,
    config_value,
    count,
    http_get,
    start_daemon,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.slow

SIMULATED_MINUTES = 48
DRIFT_AT_MINUTE = 3  # early: the alerts, the retrain and the new head's first replays happen in the first quarter
PER_MINUTE = 60
STABLE = {"en": 0.5, "code": 0.45, "ja": 0.05}
DRIFTED = {"en": 0.2, "code": 0.2, "zh": 0.6}
FINISHED = ("succeeded", "refused", "failed")
MAX_RSS_GROWTH_MB = 160.0  # about 25% of the ~650 MB baseline: glibc's heap moves RSS by tens of MB run to run


def resident_mb(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


class MemorySampler(threading.Thread):
    """The daemon's resident set size, twice a second, with how many samples were stored by then."""

    def __init__(self, pid: int, engine: Engine) -> None:
        super().__init__(daemon=True)
        self.pid, self.engine = pid, engine
        self.readings: list[tuple[int, float]] = []  # (samples stored, RSS MB)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.5):
            rss = resident_mb(self.pid)
            if rss is not None:
                self.readings.append((count(self.engine, select(func.count()).select_from(Sample)), rss))


def simulated_traffic(log: Path, written: list[int], stop: threading.Event) -> None:
    """A simulated minute of traffic every 0.7 s, timestamped a second apart over the last 24 minutes."""
    start = utcnow() - timedelta(minutes=SIMULATED_MINUTES)
    for minute in range(SIMULATED_MINUTES):
        mix = STABLE if minute < DRIFT_AT_MINUTE else DRIFTED
        moment = start + timedelta(minutes=minute)
        records = traffic(PER_MINUTE, mix, seed=minute, start=moment, spacing_s=1.0, first_index=minute * PER_MINUTE)
        written[0] += write_jsonl(log, records)
        if minute % 6 == 5:
            with log.open("a", encoding="utf-8") as handle:
                handle.write('{"id": "broken", "messages": [\n')
        if stop.wait(0.7):
            return


def settled(engine: Engine, heads: Path, seed: str, expected: int) -> bool:
    """Everything stored and scored by the live head, no lease held, no retrain queued or running."""
    live = HeadRegistry(heads).live_version() or seed
    with Session(engine) as session:
        stored = session.scalar(select(func.count()).select_from(Sample)) or 0
        scored = session.scalar(
            select(func.count()).where(ReplayResult.draft_version == live, ReplayResult.mode == SCORED)
        )
        leases = session.scalar(select(func.count()).select_from(ReplayClaim)) or 0
        active = session.scalar(select(func.count()).where(RetrainJob.state.not_in(FINISHED))) or 0
    return stored == scored == expected and leases == 0 and active == 0


def test_soak_memory_bounded_no_job_stuck(
    tmp_path: Path, engine: Engine, database_url: str, reference_models: Path, daemons: list[Any]
) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("a minute of the suite's time: soaked on SQLite only (the daemon tests run on both)")
    config = write_config(
        tmp_path,
        database_url,
        reference_models,
        intake__follow="poll_interval_s = 0.2\nbatch_lines = 200",
        replay="samples_per_round = 64\nevaluate_interval_s = 1.0",
        alerts='group_wait = "0s"\ngroup_interval = "1s"\ndispatch_interval_s = 0.5\nresolve_after = "5s"',
        retention="interval_s = 2.0",
        retrain='recapture_after = "0s"\ncooldown = "1h"\nheartbeat_s = 1.0\nstale_after_s = 20.0',
        retrain__training="steps = 10\ncheckpoint_every = 5\nbatch_size = 4\nsequence_length = 64",
        retrain__corpus="days = 1",
        stats='windows = ["5m"]\nresamples = 100',
        drift='change_window = "5m"\ninput_window = "5m"\ninput_interval = "5s"\nkeep_input_reports = 3',
    )
    out = tmp_path / "daemon.log"
    process = start_daemon(config, out)
    daemons.append(process)
    wait_until("ready to run", lambda: "specwatch daemon ready" in out.read_text(), process, out, STARTUP_S)
    sampler = MemorySampler(process.pid, engine)
    sampler.start()
    written, stop = [0], threading.Event()
    feeder = threading.Thread(target=simulated_traffic, args=(tmp_path / "logs" / "gateway.jsonl", written, stop))
    feeder.start()
    health = f"http://127.0.0.1:{config_value(config, 'metrics', 'port')}"
    heads, seed = tmp_path / "data" / "heads", draft_version(reference_models / "drafts" / "eagle")
    expected = SIMULATED_MINUTES * PER_MINUTE
    try:
        feeder.join(timeout=300)
        wait_until(
            "a recapture retrain", lambda: count(engine, select(func.count(RetrainJob.id))) > 0, process, out, 120
        )
        wait_until("all scored by the live head", lambda: settled(engine, heads, seed, expected), process, out, 400)
    finally:
        stop.set()
        sampler.stop.set()
    sampler.join()
    assert written[0] == expected
    assert http_get(f"{health}/healthz")[0] == 200
    wait_until("/readyz 200", lambda: http_get(f"{health}/readyz")[0] == 200, process, out, 30)

    with Session(engine) as session:
        jobs = list(session.scalars(select(RetrainJob)))
        counter = session.scalars(select(IntakeCounter)).one()
        quarantined = session.scalar(select(func.count()).select_from(QuarantinedRecord))
    assert jobs and all(job.state in ("succeeded", "refused") for job in jobs), [(j.state, j.error) for j in jobs]
    assert (counter.stored, counter.duplicates, quarantined) == (expected, 0, SIMULATED_MINUTES // 6)
    log = out.read_text()
    assert "failed; its next run retries" not in log and "Traceback" not in log, log[-4000:]

    # memory: the daemon's typical resident size in the last quarter of the traffic against the second
    # quarter's (models, caches and the new head loaded by then); and after the drain, back within reach
    warm = [rss for stored, rss in sampler.readings if expected // 4 <= stored < expected // 2]
    late = [rss for stored, rss in sampler.readings if expected * 3 // 4 <= stored < expected]
    assert warm and late, sampler.readings
    growth = statistics.median(late) - statistics.median(warm)
    trace = sampler.readings[:: max(1, len(sampler.readings) // 20)]
    assert growth < MAX_RSS_GROWTH_MB, f"RSS grew {growth:.0f} MB (stored samples, RSS MB): {trace}"
    assert sampler.readings[-1][1] < max(warm) + 2 * MAX_RSS_GROWTH_MB, trace

    process.send_signal(15)
    assert process.wait(timeout=60) == 0
