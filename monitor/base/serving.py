"""HTTP servers on uvicorn, each in a thread of its own: HTTP intake and /metrics, /healthz, /readyz.

    server = ThreadedServer(app, "127.0.0.1", 0, name="intake-http", request_timeout_s=30)
    server.start()    # the socket is bound here: OSError when the address is taken; port 0 picks one
    server.url        # http://127.0.0.1:PORT
    server.stop()     # should_exit, then the running requests get `stop_timeout_s` to finish

uvicorn runs its own asyncio loop in the thread and, off the main thread, installs no signal handlers:
the daemon and the commands keep theirs. Every connection must deliver a whole request, headers and
body, within `request_timeout_s` of connecting (or of the previous reply); a slower client is answered
408 and its connection closed, so slow connections cannot pile up.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

KEEP_ALIVE_S = 5
TIMEOUT_BODY = b'{"error": "request not received in time"}'
TIMEOUT_REPLY = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    b"content-length: " + str(len(TIMEOUT_BODY)).encode() + b"\r\nconnection: close\r\n\r\n" + TIMEOUT_BODY
)


class DeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on receiving each request. uvicorn bounds only the idle
    time between requests (keep-alive); a client trickling its headers or body would hold its
    connection for ever. The deadline runs from the connection (or the previous reply) until the
    request's last body byte; while the application works on a received request it does not run."""

    request_timeout_s = 30.0  # set per server: see `deadline_protocol`

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.deadline: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self.arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.request_received():
            self.disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.request_received():  # a pipelined request, already complete
            self.disarm()
        elif not self.transport.is_closing():
            self.arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm()
        super().connection_lost(exc)

    def request_received(self) -> bool:
        cycle = self.cycle
        return cycle is not None and not cycle.response_complete and not cycle.more_body

    def arm(self) -> None:
        self.disarm()
        self.deadline = self.loop.call_later(self.request_timeout_s, self.expired)

    def disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def expired(self) -> None:
        self.deadline = None
        if self.transport.is_closing():
            return
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
        log.info("closing the connection from %s: no whole request within %gs", client, self.request_timeout_s)
        cycle = self.cycle
        if cycle is None or cycle.response_complete or not cycle.response_started:
            self.transport.write(TIMEOUT_REPLY)
        self.transport.close()


def deadline_protocol(request_timeout_s: float) -> type[DeadlineProtocol]:
    """A DeadlineProtocol class with this deadline (uvicorn builds the protocol from a class)."""
    return type("DeadlineProtocol", (DeadlineProtocol,), {"request_timeout_s": request_timeout_s})


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (IPv4 or IPv6); OSError when it cannot be bound."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(False)
    return sock


class ThreadedServer:
    """One ASGI app served by uvicorn from a daemon thread."""

    def __init__(
        self,
        app: Any,
        host: str,
        port: int,
        *,
        name: str,
        request_timeout_s: float = 10.0,
        stop_timeout_s: float = 10.0,
    ) -> None:
        self.host = host
        self.name = name
        self.stop_timeout_s = stop_timeout_s
        self.socket = bind(host, port)
        self.port: int = self.socket.getsockname()[1]
        config = uvicorn.Config(
            app,
            http=deadline_protocol(request_timeout_s),
            loop="asyncio",
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_keep_alive=KEEP_ALIVE_S,
            timeout_graceful_shutdown=max(1, round(stop_timeout_s)),
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.serve, name=name, daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def serve(self) -> None:
        try:
            self.server.run(sockets=[self.socket])
        except Exception:
            log.exception("%s: the HTTP server failed", self.name)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Stops taking connections; requests being handled get `stop_timeout_s` to finish."""
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout=self.stop_timeout_s + 5)
        self.socket.close()
