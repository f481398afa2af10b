"""The deploy hook: tell the serving engine that the live head changed.

After the registry switched its live pointer, `run_deploy_hook` runs the configured command with
the head in the daemon's environment (SPECWATCH_HEAD_VERSION; SPECWATCH_HEAD_FORMAT and
SPECWATCH_HEAD_EXPORT_DIR: the head in the format the engine loads, prepared by retrain.serving;
SPECWATCH_HEAD_DIR: the registry's copy), POSTs {"version", "format", "export_dir", "path"} as JSON
to the configured URL, or both (command first). It never raises on a failing hook: the result says
what happened, and the caller decides whether to roll back.

    result = run_deploy_hook(config.retrain.deploy, served)
    if not result.ok:
        log.error("deploy hook failed: %s", result.detail)

A command runs in its own process group; at `timeout_s` the group gets SIGTERM, then SIGKILL after
a short grace. Its output (stdout and stderr together) is kept in a temp file, and the last ~2 KB
go into the result. An HTTP hook's detail names the URL without credentials or query string.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

if TYPE_CHECKING:  # monitor depends on retrain, not the other way round: the type only
    from monitor.base.config import DeployConfig

log = logging.getLogger(__name__)

HookKind = Literal["command", "http", "command+http", "none"]
OUTPUT_TAIL_BYTES = 2048
HTTP_BODY_TAIL_CHARS = 300
KILL_GRACE_S = 5.0


@dataclass(frozen=True)
class ServedHead:
    """A registered head as the engine loads it (retrain.serving prepares it): `export_dir` holds it in
    `format`; `head_dir` is the registry's copy. Format "specwatch": no engine format holds its kind,
    and `export_dir` is `head_dir`."""

    version: str
    head_dir: Path
    format: str
    export_dir: Path

    def environment(self) -> dict[str, str]:
        return {
            "SPECWATCH_HEAD_VERSION": self.version,
            "SPECWATCH_HEAD_FORMAT": self.format,
            "SPECWATCH_HEAD_EXPORT_DIR": str(self.export_dir),
            "SPECWATCH_HEAD_DIR": str(self.head_dir),
        }

    def to_dict(self) -> dict[str, str]:
        return {
            "version": self.version,
            "format": self.format,
            "export_dir": str(self.export_dir),
            "path": str(self.head_dir),
        }


@dataclass
class HookResult:
    """What the deploy hook did. `detail` is short and never holds secrets."""

    ok: bool
    kind: HookKind
    seconds: float
    detail: str
    returncode: int | None = None
    http_status: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_deploy_hook(config: DeployConfig, served: ServedHead, *, kill_grace_s: float = KILL_GRACE_S) -> HookResult:
    """Runs the configured command and/or HTTP hook for the head the engine is to load."""
    results: list[HookResult] = []
    if config.command:
        results.append(run_command_hook(config.command, served, config.timeout_s, kill_grace_s))
    if config.url:
        results.append(post_http_hook(config.url, served, config.timeout_s))
    if not results:
        return HookResult(ok=True, kind="none", seconds=0.0, detail="no deploy hook configured")
    result = results[0] if len(results) == 1 else _combine(results[0], results[1])
    log.log(logging.INFO if result.ok else logging.ERROR, "deploy hook for %s: %s", served.version, result.detail)
    return result


def _combine(command: HookResult, http: HookResult) -> HookResult:
    return HookResult(
        ok=command.ok and http.ok,
        kind="command+http",
        seconds=round(command.seconds + http.seconds, 3),
        detail=f"command: {command.detail}\nhttp: {http.detail}",
        returncode=command.returncode,
        http_status=http.http_status,
    )


# -- command ---------------------------------------------------------------------------------


def run_command_hook(
    command: list[str], served: ServedHead, timeout_s: float, kill_grace_s: float = KILL_GRACE_S
) -> HookResult:
    env = {**os.environ, **served.environment()}
    started = time.monotonic()
    with tempfile.TemporaryFile() as output:
        try:
            process = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            return _command_result(False, started, f"cannot start {command[0]!r}: {exc.strerror or exc}", None)
        try:
            returncode = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _stop_group(process, kill_grace_s)
            reason = f"timed out after {timeout_s:g}s; process group killed"
            return _command_result(False, started, _with_tail(reason, output), process.returncode)
        reason = "exit 0" if returncode == 0 else f"failed: exit {returncode}"
        return _command_result(returncode == 0, started, _with_tail(reason, output), returncode)


def _command_result(ok: bool, started: float, detail: str, returncode: int | None) -> HookResult:
    seconds = round(time.monotonic() - started, 3)
    return HookResult(ok=ok, kind="command", seconds=seconds, detail=detail, returncode=returncode)


def _stop_group(process: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM to the hook's process group; after `grace_s`, SIGKILL to whatever is left of it."""
    _signal_group(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_s)
    _signal_group(process.pid, signal.SIGKILL)  # also children the leader left behind
    process.wait()


def _signal_group(group: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, sig)


def _with_tail(reason: str, output: IO[bytes]) -> str:
    tail = _tail(output)
    return f"{reason}; output: {tail}" if tail else reason


def _tail(output: IO[bytes]) -> str:
    size = output.seek(0, os.SEEK_END)
    output.seek(max(0, size - OUTPUT_TAIL_BYTES))
    text = output.read().decode("utf-8", errors="replace").strip()
    return ("…" + text) if size > OUTPUT_TAIL_BYTES else text


# -- http ------------------------------------------------------------------------------------


def post_http_hook(url: str, served: ServedHead, timeout_s: float) -> HookResult:
    body = json.dumps(served.to_dict()).encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    where = safe_url(url)
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            status = int(response.status)
            reply = response.read(HTTP_BODY_TAIL_CHARS).decode("utf-8", errors="replace")
    except urllib.error.HTTPError as exc:
        reply = exc.read(HTTP_BODY_TAIL_CHARS).decode("utf-8", errors="replace")
        return _http_result(False, started, f"POST {where}: HTTP {exc.code} {_short(reply)}", exc.code)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return _http_result(False, started, f"POST {where} failed: {reason}", None)
    ok = 200 <= status < 300
    return _http_result(ok, started, f"POST {where}: HTTP {status} {_short(reply)}", status)


def _http_result(ok: bool, started: float, detail: str, status: int | None) -> HookResult:
    seconds = round(time.monotonic() - started, 3)
    return HookResult(ok=ok, kind="http", seconds=seconds, detail=detail.strip(), http_status=status)


def _short(text: str) -> str:
    return " ".join(text.split())[:HTTP_BODY_TAIL_CHARS]


def safe_url(url: str) -> str:
    """scheme://host[:port]/path: no user, password, query or fragment (they may hold tokens)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{host}{port}{parts.path}"
