"""A local fake Slack speaking the Web API and webhooks over real HTTP on 127.0.0.1, with scripted faults.

    with FakeSlack(token="xoxb-test") as slack:
        client = WebClient(token="xoxb-test", base_url=slack.api_url)
        client.chat_postMessage(channel="#alerts", text="hi")
        assert slack.posts()[0]["text"] == "hi"
        slack.rate_limit_next(retry_after=7)          # the next request gets HTTP 429, Retry-After: 7
        hold = slack.hold_next("chat.postMessage")    # the next post is stored, then its answer waits
        ...; slack.wait_until_held(5); hold.release.set()

Web API (POST /api/<method>, JSON or form body, Bearer token): chat.postMessage, chat.update,
conversations.history, conversations.replies, conversations.list, auth.test. Channel names map to ids
("#alerts" -> "C0001"); like Slack, only chat.postMessage takes a name, other methods need the id.
Timestamps follow the clock (strictly increasing), so `oldest` filters work with real datetimes.
Webhooks: POST /services/T000/B000/hook-secret (Slack incoming webhook, answers "ok") and /hooks/json (any JSON).

Faults apply, in the order scripted, to the next requests matching `path` (an API method name like
"chat.postMessage", or a URL path prefix like "/hooks/json"; None matches any request):
fail_next and rate_limit_next answer with an error and store nothing; hang_next and hold_next handle
the request (a message is stored) and only then delay or withhold the answer.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlsplit

API_PREFIX = "/api/"
WEBHOOK_PATH = "/services/T000/B000/hook-secret"
JSON_WEBHOOK_PATH = "/hooks/json"
HOLD_LIMIT_S = 60.0  # a held answer is released after this long at the latest


@dataclass(frozen=True)
class FakeRequest:
    """One request as received: `method` is the API method ("chat.postMessage") or the URL path."""

    method: str
    path: str
    body: Any
    headers: dict[str, str]
    fault: str | None = None


class Hold(NamedTuple):
    """`held` is set once the request is handled and its answer withheld; set `release` to answer."""

    held: threading.Event
    release: threading.Event


@dataclass
class _Fault:
    kind: str  # "status", "rate_limit", "hang", "hold"
    path: str | None
    times: int
    status: int = 500
    seconds: float = 0.0
    hold: Hold | None = None

    def matches(self, request: FakeRequest) -> bool:
        if self.path is None:
            return True
        return self.path == request.method or (self.path.startswith("/") and request.path.startswith(self.path))


@dataclass
class _Reply:
    status: int
    body: Any  # dict -> JSON, str -> text
    headers: dict[str, str] = field(default_factory=dict)


class FakeSlack:
    """The fake; state (messages, requests, faults) survives stop()/start()."""

    def __init__(self, token: str = "xoxb-fake-token", *, lenient_channels: bool = False) -> None:
        self.token = token
        self.lenient_channels = lenient_channels  # accept channel names where Slack wants ids
        self._lock = threading.Lock()
        self._requests: list[FakeRequest] = []
        self._faults: list[_Fault] = []
        self._holds: list[Hold] = []  # every hold_next(), latest last
        self._channel_ids: dict[str, str] = {}  # name -> id
        self._messages: dict[str, list[dict[str, Any]]] = {}  # channel id -> messages, oldest first
        self._posts: list[dict[str, Any]] = []
        self._updates: list[dict[str, Any]] = []
        self._last_ts = 0.0
        self._server: _Server | None = None
        self.port = 0

    # lifecycle

    def start(self) -> FakeSlack:
        """Starts listening (again, on the same port after stop())."""
        server = _Server(("127.0.0.1", self.port), _Handler)
        server.fake = self
        self.port = server.server_address[1]
        self._server = server
        threading.Thread(target=server.serve_forever, args=(0.05,), name="fake-slack", daemon=True).start()
        return self

    def stop(self) -> None:
        """Stops listening: connections are refused until start(). Held answers are released."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        self.release_all()

    def __enter__(self) -> FakeSlack:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{API_PREFIX}"

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{WEBHOOK_PATH}"

    @property
    def json_webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{JSON_WEBHOOK_PATH}"

    # scripted faults

    def fail_next(self, status: int = 500, times: int = 1, path: str | None = None) -> None:
        self._add_fault(_Fault("status", path, times, status=status))

    def rate_limit_next(self, retry_after: float = 1, times: int = 1, path: str | None = None) -> None:
        self._add_fault(_Fault("rate_limit", path, times, seconds=retry_after))

    def hang_next(self, seconds: float, times: int = 1, path: str | None = None) -> None:
        self._add_fault(_Fault("hang", path, times, seconds=seconds))

    def hold_next(self, path: str | None = None) -> Hold:
        hold = Hold(threading.Event(), threading.Event())
        with self._lock:
            self._holds.append(hold)
        self._add_fault(_Fault("hold", path, 1, hold=hold))
        return hold

    def wait_until_held(self, timeout: float) -> bool:
        """Waits until the latest hold_next() request is handled and its answer withheld; False on timeout."""
        with self._lock:
            latest = self._holds[-1] if self._holds else None
        return latest is not None and latest.held.wait(timeout)

    def release_all(self) -> None:
        """Lets every withheld answer go."""
        with self._lock:
            holds = list(self._holds)
        for hold in holds:
            hold.release.set()

    # what happened

    @property
    def requests(self) -> list[FakeRequest]:
        with self._lock:
            return list(self._requests)

    def calls(self, method: str) -> list[FakeRequest]:
        return [request for request in self.requests if request.method == method]

    def posts(self) -> list[dict[str, Any]]:
        """Messages stored by chat.postMessage, in order (each with "channel" set to the id)."""
        with self._lock:
            return [dict(message) for message in self._posts]

    def updates(self) -> list[dict[str, Any]]:
        """Bodies of successful chat.update calls, in order."""
        with self._lock:
            return [dict(update) for update in self._updates]

    def messages(self, channel: str) -> list[dict[str, Any]]:
        """A channel's current messages (thread replies included), oldest first."""
        with self._lock:
            channel_id = self._channel_ids.get(channel.lstrip("#"), channel)
            return [dict(message) for message in self._messages.get(channel_id, [])]

    def webhook_posts(self) -> list[dict[str, Any]]:
        """JSON bodies the Slack incoming webhook accepted."""
        return [r.body for r in self.requests if r.path == WEBHOOK_PATH and r.fault in (None, "hang", "hold")]

    def json_posts(self) -> list[FakeRequest]:
        """Requests the generic JSON webhook accepted (body and headers)."""
        return [r for r in self.requests if r.path == JSON_WEBHOOK_PATH and r.fault in (None, "hang", "hold")]

    def channel_id(self, channel: str) -> str:
        """The id of a channel name (created if new), e.g. "#alerts" -> "C0001"."""
        with self._lock:
            return self._ensure_channel(channel)

    # request handling (called from server threads)

    def handle(self, request: FakeRequest) -> tuple[_Reply, _Fault | None]:
        with self._lock:
            fault = self._take_fault(request)
            self._requests.append(request if fault is None else _with_fault(request, fault.kind))
            if fault is not None and fault.kind == "status":
                return _Reply(fault.status, {"ok": False, "error": "internal_error"}), fault
            if fault is not None and fault.kind == "rate_limit":
                headers = {"Retry-After": _number(fault.seconds)}
                return _Reply(429, {"ok": False, "error": "ratelimited"}, headers), fault
            return self._dispatch(request), fault

    def wait_out(self, fault: _Fault | None) -> None:
        """Delays the answer as a hang/hold fault says (outside the lock)."""
        if fault is not None and fault.kind == "hang":
            time.sleep(fault.seconds)
        if fault is not None and fault.hold is not None:
            fault.hold.held.set()
            fault.hold.release.wait(HOLD_LIMIT_S)

    def _add_fault(self, fault: _Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def _take_fault(self, request: FakeRequest) -> _Fault | None:
        for fault in self._faults:
            if fault.matches(request):
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    def _dispatch(self, request: FakeRequest) -> _Reply:
        if request.path == WEBHOOK_PATH:
            return _Reply(200, "ok") if isinstance(request.body, dict) else _Reply(400, "invalid_payload")
        if request.path == JSON_WEBHOOK_PATH:
            return _Reply(200, {"ok": True})
        if not request.path.startswith(API_PREFIX):
            return _Reply(404, "no_service")
        handler = _API.get(request.method)
        if handler is None:
            return _Reply(404, {"ok": False, "error": "unknown_method"})
        if not isinstance(request.body, dict):
            return _Reply(200, {"ok": False, "error": "invalid_json"})
        auth_error = self._auth_error(request)
        if auth_error:
            return _Reply(200, {"ok": False, "error": auth_error})
        return _Reply(200, handler(self, request.body))

    def _auth_error(self, request: FakeRequest) -> str | None:
        header = request.headers.get("authorization", "")
        body = request.body if isinstance(request.body, dict) else {}
        token = header.removeprefix("Bearer ") if header.startswith("Bearer ") else body.get("token")
        if not token:
            return "not_authed"
        return None if token == self.token else "invalid_auth"

    # Web API methods (called with the lock held)

    def _post_message(self, body: dict[str, Any]) -> dict[str, Any]:
        channel = str(body.get("channel") or "")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        if not (body.get("text") or body.get("blocks")):
            return {"ok": False, "error": "no_text"}
        channel_id = self._ensure_channel(channel) if not _looks_like_id(channel) else self._known_id(channel)
        if channel_id is None:
            return {"ok": False, "error": "channel_not_found"}
        message = {"type": "message", "user": "U0BOT", "bot_id": "B0BOT", "ts": self._next_ts()}
        message |= {key: body[key] for key in ("text", "blocks", "metadata") if body.get(key)}
        if body.get("thread_ts"):
            if self._find(channel_id, str(body["thread_ts"])) is None:
                return {"ok": False, "error": "thread_not_found"}
            message["thread_ts"] = str(body["thread_ts"])
        self._messages.setdefault(channel_id, []).append(message)
        self._posts.append(message | {"channel": channel_id})
        return {"ok": True, "channel": channel_id, "ts": message["ts"], "message": _public(message, True)}

    def _update(self, body: dict[str, Any]) -> dict[str, Any]:
        channel_id = self._channel_arg(body)
        message = self._find(channel_id, str(body.get("ts"))) if channel_id else None
        if channel_id is None:
            return {"ok": False, "error": "channel_not_found"}
        if message is None:
            return {"ok": False, "error": "message_not_found"}
        message |= {key: body[key] for key in ("text", "blocks", "metadata") if key in body}
        self._updates.append(dict(body))
        return {"ok": True, "channel": channel_id, "ts": message["ts"], "text": message.get("text", "")}

    def _history(self, body: dict[str, Any]) -> dict[str, Any]:
        channel_id = self._channel_arg(body)
        if channel_id is None:
            return {"ok": False, "error": "channel_not_found"}
        top_level = [m for m in self._messages[channel_id] if m.get("thread_ts") in (None, m["ts"])]
        selected = [m for m in reversed(top_level) if _in_range(m["ts"], body)]  # newest first, like Slack
        return _page(selected, body, "messages", _truthy(body.get("include_all_metadata")))

    def _replies(self, body: dict[str, Any]) -> dict[str, Any]:
        channel_id = self._channel_arg(body)
        if channel_id is None:
            return {"ok": False, "error": "channel_not_found"}
        parent = self._find(channel_id, str(body.get("ts")))
        if parent is None:
            return {"ok": False, "error": "thread_not_found"}
        replies = [m for m in self._messages[channel_id] if m.get("thread_ts") == parent["ts"] and m is not parent]
        selected = [parent] + [m for m in replies if _in_range(m["ts"], body)]
        return _page(selected, body, "messages", _truthy(body.get("include_all_metadata")))

    def _list(self, body: dict[str, Any]) -> dict[str, Any]:
        channels = [
            {"id": channel_id, "name": name, "is_channel": True, "is_archived": False}
            for name, channel_id in self._channel_ids.items()
        ]
        return _page(channels, body, "channels", True)

    def _auth_test(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": "https://fake.slack.com/", "team": "Fake", "user": "specwatch", "team_id": "T000",
                "user_id": "U0BOT", "bot_id": "B0BOT"}  # fmt: skip

    # channels and messages

    def _ensure_channel(self, channel: str) -> str:
        name = channel.lstrip("#")
        if name not in self._channel_ids:
            self._channel_ids[name] = f"C{len(self._channel_ids) + 1:04d}"
            self._messages[self._channel_ids[name]] = []
        return self._channel_ids[name]

    def _known_id(self, channel: str) -> str | None:
        return channel if channel in self._messages else None

    def _channel_arg(self, body: dict[str, Any]) -> str | None:
        """The channel an id-only method names; a name only with lenient_channels."""
        channel = str(body.get("channel") or "")
        if self.lenient_channels and not _looks_like_id(channel):
            return self._channel_ids.get(channel.lstrip("#"))
        return self._known_id(channel)

    def _find(self, channel_id: str, ts: str) -> dict[str, Any] | None:
        return next((m for m in self._messages.get(channel_id, []) if m["ts"] == ts), None)

    def _next_ts(self) -> str:
        self._last_ts = max(round(time.time(), 6), round(self._last_ts + 0.000001, 6))
        return f"{self._last_ts:.6f}"


_API = {
    "chat.postMessage": FakeSlack._post_message,
    "chat.update": FakeSlack._update,
    "conversations.history": FakeSlack._history,
    "conversations.replies": FakeSlack._replies,
    "conversations.list": FakeSlack._list,
    "auth.test": FakeSlack._auth_test,
}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    fake: FakeSlack

    def handle_error(self, request: object, client_address: object) -> None:
        """Quiet: clients that time out or get killed leave broken pipes behind."""


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self._serve(self.rfile.read(length) if length else b"")

    def do_GET(self) -> None:
        self._serve(b"")

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: no request log on stderr."""

    def _serve(self, raw: bytes) -> None:
        url = urlsplit(self.path)
        body = _parse_body(raw, self.headers.get("Content-Type", ""), url.query)
        method = url.path.removeprefix(API_PREFIX) if url.path.startswith(API_PREFIX) else url.path
        headers = {key.lower(): value for key, value in self.headers.items()}
        fake = self.server.fake
        reply, fault = fake.handle(FakeRequest(method, url.path, body, headers))
        fake.wait_out(fault)
        self._answer(reply)

    def _answer(self, reply: _Reply) -> None:
        is_json = not isinstance(reply.body, str)
        data = (json.dumps(reply.body) if is_json else reply.body).encode("utf-8")
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json; charset=utf-8" if is_json else "text/plain")
            self.send_header("Content-Length", str(len(data)))
            for key, value in reply.headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass  # the client gave up (timeout) or died


def _parse_body(raw: bytes, content_type: str, query: str) -> Any:
    params: dict[str, Any] = dict(parse_qsl(query))
    if content_type.startswith("application/json"):
        try:
            parsed = json.loads(raw or b"null")
        except ValueError:
            return raw.decode("utf-8", "replace")
        return params | parsed if isinstance(parsed, dict) else parsed
    if content_type.startswith("application/x-www-form-urlencoded"):
        params |= dict(parse_qsl(raw.decode("utf-8")))
    for key in ("blocks", "metadata"):  # form posts carry these as JSON strings
        if isinstance(params.get(key), str):
            params[key] = json.loads(params[key])
    return params


def _with_fault(request: FakeRequest, kind: str) -> FakeRequest:
    return FakeRequest(request.method, request.path, request.body, request.headers, kind)


def _public(message: dict[str, Any], with_metadata: bool) -> dict[str, Any]:
    return {key: value for key, value in message.items() if with_metadata or key != "metadata"}


def _page(items: list[dict[str, Any]], body: dict[str, Any], key: str, with_metadata: bool) -> dict[str, Any]:
    start = int(body.get("cursor") or 0)
    limit = int(body.get("limit") or 100)
    chunk = [_public(item, with_metadata) for item in items[start : start + limit]]
    has_more = start + limit < len(items)
    cursor = str(start + limit) if has_more else ""
    return {"ok": True, key: chunk, "has_more": has_more, "response_metadata": {"next_cursor": cursor}}


def _in_range(ts: str, body: dict[str, Any]) -> bool:
    inclusive = _truthy(body.get("inclusive"))
    oldest, latest = float(body.get("oldest") or 0), float(body.get("latest") or "inf")
    value = float(ts)
    if inclusive:
        return oldest <= value <= latest
    return oldest < value < latest


def _truthy(value: Any) -> bool:
    return value is True or str(value).lower() in ("1", "true")


def _looks_like_id(channel: str) -> bool:
    return channel[:1] in ("C", "G", "D") and channel[1:].isalnum() and channel.upper() == channel


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
