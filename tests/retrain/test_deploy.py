"""The deploy hook against real commands and a real local HTTP server."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from monitor.base.config import DeployConfig
from retrain.deploy import ServedHead, run_deploy_hook, safe_url

VERSION = "0123456789abcdef"


def served(head_dir: Path, head_format: str = "specwatch", export_dir: Path | None = None) -> ServedHead:
    return ServedHead(VERSION, head_dir, head_format, export_dir or head_dir)


class RecordingHandler(BaseHTTPRequestHandler):
    """Records each POST; answers with the status (and delay) the test set on the server."""

    server: RecordingServer

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(body)})
        time.sleep(self.server.delay_s)
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps({"reloaded": self.server.status == 200}).encode())

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass


class RecordingServer(ThreadingHTTPServer):
    daemon_threads = True
    requests: list[dict[str, Any]]
    status = 200
    delay_s = 0.0

    def handle_error(self, request: Any, client_address: Any) -> None:  # a client that timed out hung up
        pass


@pytest.fixture
def server() -> Iterator[RecordingServer]:
    httpd = RecordingServer(("127.0.0.1", 0), RecordingHandler)
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def url_of(server: RecordingServer, path: str = "/deploy") -> str:
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


def test_no_hook_configured(tmp_path: Path) -> None:
    result = run_deploy_hook(DeployConfig(), served(tmp_path))
    assert result.ok and result.kind == "none"


def test_command_gets_head_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPECWATCH_PARENT_MARKER", "kept")
    out = tmp_path / "env.txt"
    names = ("SPECWATCH_HEAD_DIR", "SPECWATCH_HEAD_VERSION", "SPECWATCH_HEAD_FORMAT", "SPECWATCH_HEAD_EXPORT_DIR")
    script = "printf '%s\\n' " + " ".join(f'"${name}"' for name in names) + ' "$SPECWATCH_PARENT_MARKER" > "$0"'
    config = DeployConfig(command=["sh", "-c", script + "; echo reloaded", str(out)], timeout_s=10)
    result = run_deploy_hook(config, served(tmp_path / "head", "speculators", tmp_path / "export"))
    assert result.ok and result.kind == "command" and result.returncode == 0
    expected = [str(tmp_path / "head"), VERSION, "speculators", str(tmp_path / "export"), "kept"]
    assert out.read_text().splitlines() == expected
    assert "reloaded" in result.detail
    assert set(result.to_dict()) == {"ok", "kind", "seconds", "detail", "returncode", "http_status"}


def test_failing_command_keeps_output_tail(tmp_path: Path) -> None:
    script = "head -c 10000 /dev/zero | tr '\\0' x; echo; echo 'reload failed: engine down' >&2; exit 3"
    result = run_deploy_hook(DeployConfig(command=["sh", "-c", script]), served(tmp_path))
    assert not result.ok and result.returncode == 3
    assert "exit 3" in result.detail and result.detail.endswith("reload failed: engine down")
    assert len(result.detail) < 2200


def test_missing_executable(tmp_path: Path) -> None:
    result = run_deploy_hook(DeployConfig(command=[str(tmp_path / "no-such-hook")]), served(tmp_path))
    assert not result.ok and result.returncode is None and "cannot start" in result.detail


def test_hanging_command_is_killed(tmp_path: Path) -> None:
    started = time.monotonic()
    result = run_deploy_hook(DeployConfig(command=["sleep", "30"], timeout_s=0.3), served(tmp_path))
    assert not result.ok and "timed out after 0.3s" in result.detail
    assert time.monotonic() - started < 5


def test_command_ignoring_sigterm_and_its_children_are_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    script = f"trap '' TERM; sleep 30 & echo $! > {pid_file}; wait"
    started = time.monotonic()
    result = run_deploy_hook(
        DeployConfig(command=["sh", "-c", script], timeout_s=0.5), served(tmp_path), kill_grace_s=0.2
    )
    assert not result.ok and result.returncode == -9
    assert time.monotonic() - started < 5
    assert _gone(int(pid_file.read_text()))


def _gone(pid: int) -> bool:
    """Dead (or a zombie waiting for a reaper), after at most a second."""
    for _ in range(20):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split()[2]
        except FileNotFoundError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def test_http_hook_posts_version_and_path(tmp_path: Path, server: RecordingServer) -> None:
    result = run_deploy_hook(DeployConfig(url=url_of(server) + "?token=s3cret", timeout_s=5), served(tmp_path))
    assert result.ok and result.kind == "http" and result.http_status == 200
    assert server.requests[0]["body"] == {
        "version": VERSION,
        "format": "specwatch",
        "export_dir": str(tmp_path),
        "path": str(tmp_path),
    }
    assert server.requests[0]["headers"]["Content-Type"] == "application/json"
    assert "s3cret" not in result.detail and "/deploy" in result.detail


def test_http_500(tmp_path: Path, server: RecordingServer) -> None:
    server.status = 500
    result = run_deploy_hook(DeployConfig(url=url_of(server)), served(tmp_path))
    assert not result.ok and result.http_status == 500 and "HTTP 500" in result.detail


def test_http_timeout(tmp_path: Path, server: RecordingServer) -> None:
    server.delay_s = 2.0
    result = run_deploy_hook(DeployConfig(url=url_of(server), timeout_s=0.3), served(tmp_path))
    assert not result.ok and result.http_status is None and "timed out" in result.detail
    assert result.seconds < 1.5


def test_unreachable_url(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = run_deploy_hook(DeployConfig(url=f"http://127.0.0.1:{port}/deploy", timeout_s=2), served(tmp_path))
    assert not result.ok and result.http_status is None and "refused" in result.detail.lower()


def test_command_then_http_report_both(tmp_path: Path, server: RecordingServer) -> None:
    order = tmp_path / "order"
    config = DeployConfig(command=["sh", "-c", f"echo command > {order}; exit 1"], url=url_of(server))
    result = run_deploy_hook(config, served(tmp_path))
    assert result.kind == "command+http" and not result.ok
    assert result.returncode == 1 and result.http_status == 200
    assert order.read_text() == "command\n" and len(server.requests) == 1  # the URL is posted even so
    assert result.detail.startswith("command: failed: exit 1") and "\nhttp: POST" in result.detail


def test_safe_url_drops_credentials_and_query() -> None:
    assert safe_url("https://user:pw@engine.local:8443/v1/reload?key=abc#x") == "https://engine.local:8443/v1/reload"
