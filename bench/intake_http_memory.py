"""HTTP intake memory: peak resident memory of a real `specwatch intake serve` while it takes a JSON
array body of ~14.7 MB (~118,000 records) once, then eight such bodies in parallel.

    python bench/intake_http_memory.py [--records 118000] [--parallel 8] [--source DIR]

The server runs as a subprocess on a fresh SQLite data dir with the default intake settings. Its
resident memory is read from /proc/PID/status: VmRSS sampled every 20 ms, and VmHWM (the kernel's
peak), which is reset between the phases through /proc/PID/clear_refs. Each parallel body has its own
ids, so every record is new work. `--source DIR` runs the server from another checkout, for a
before/after comparison:

    git archive a2976e2 | tar -x -C /tmp/before && python bench/intake_http_memory.py --source /tmp/before
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

log = logging.getLogger("bench.intake_http_memory")

ROOT = Path(__file__).resolve().parent.parent
WORDS = ("the", "draft", "proposes", "tokens", "and", "the", "target", "verifies", "them", "in", "one", "pass")


def body_of(records: int, prefix: str) -> bytes:
    """A JSON array of small records, ~125 bytes each (the size of the issue's 14.7 MB / 118k body)."""
    items = [
        {
            "id": f"{prefix}-{index}",
            "prompt": f"question {index % 97}",
            "completion": " ".join(WORDS[(index + k) % len(WORDS)] for k in range(6)),
            "metadata": {"tenant": f"tenant-{index % 7}"},
        }
        for index in range(records)
    ]
    return json.dumps(items, separators=(",", ": ")).encode()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class PeakRss:
    """The highest resident memory of a process while the block runs: sampled VmRSS and VmHWM."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.sampled_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.sampled_kib = max(self.sampled_kib, status_kib(self.pid, "VmRSS"))

    def __enter__(self) -> PeakRss:
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        except OSError as error:
            log.warning("cannot reset VmHWM (%s): the sampled peak is the figure", error)
        self.sampled_kib = status_kib(self.pid, "VmRSS")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return max(self.sampled_kib, status_kib(self.pid, "VmHWM")) / 1024


def post(url: str, body: bytes) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=3600) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def start_server(work: Path, source: Path) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    config = work / "config.toml"
    config.write_text(f'[storage]\ndata_dir = "{work / "data"}"\n[intake.http]\nport = {port}\ntoken = {{}}\n')
    environment = {**os.environ, "PYTHONPATH": str(source), "SPECWATCH_HASH_SALT": "bench"}
    process = subprocess.Popen(
        [sys.executable, "-m", "monitor", "intake", "serve", "--config", str(config)],
        cwd=source,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=environment,
    )
    assert process.stdout is not None
    process.stdout.readline()  # "intake listening on ..."
    return process, f"http://127.0.0.1:{port}/v1/samples"


def phase(name: str, pid: int, url: str, bodies: list[bytes]) -> None:
    with PeakRss(pid) as peak, ThreadPoolExecutor(len(bodies)) as pool:
        started = time.perf_counter()
        replies = list(pool.map(lambda body: post(url, body), bodies))
        seconds = time.perf_counter() - started
    statuses = sorted({status for status, _ in replies})
    stored = sum(reply.get("stored", 0) for _, reply in replies)
    megabytes = sum(len(body) for body in bodies) / 1e6
    print(
        f"{name:22} {megabytes:>9.1f} {seconds:>9.1f} {peak.peak_mb:>9.0f} "
        f"{status_kib(pid, 'VmRSS') / 1024:>9.0f} {stored:>9} {statuses}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=118_000, help="records per body (default 118,000)")
    parser.add_argument("--parallel", type=int, default=8, help="bodies posted at once (default 8)")
    parser.add_argument("--source", type=Path, default=ROOT, help="checkout the server runs from")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    single = body_of(args.records, "one")
    with tempfile.TemporaryDirectory() as tmp:
        process, url = start_server(Path(tmp), args.source.resolve())
        try:
            time.sleep(1.0)
            idle_mb = status_kib(process.pid, "VmRSS") / 1024
            print(f"server pid {process.pid} from {args.source}; idle RSS {idle_mb:.0f} MB")
            print(f"body: {args.records} records, {len(single) / 1e6:.1f} MB")
            columns = ("MB sent", "seconds", "peak RSS", "RSS after", "stored")
            print(f"{'phase':22} " + " ".join(f"{name:>9}" for name in columns) + " statuses")
            phase("one body", process.pid, url, [single])
            del single
            bodies = [body_of(args.records, f"p{index}") for index in range(args.parallel)]
            phase(f"{args.parallel} bodies in parallel", process.pid, url, bodies)
        finally:
            process.terminate()
            process.wait(timeout=60)


if __name__ == "__main__":
    main()
