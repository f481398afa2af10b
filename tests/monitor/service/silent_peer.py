"""A TCP proxy on 127.0.0.1 in front of a real server that can be frozen: it stops forwarding in both
directions without closing anything, so established connections go silent, as behind a hung proxy or
pooler (the kernel still acknowledges packets, so TCP alone never notices).

    with FreezableProxy("127.0.0.1", 5432) as proxy: ...proxy.port...; proxy.freeze(); proxy.thaw()
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from types import TracebackType

TICK_S = 0.05


class FreezableProxy:
    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.frozen = threading.Event()
        self.closed = threading.Event()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def freeze(self) -> None:
        self.frozen.set()

    def thaw(self) -> None:
        self.frozen.clear()

    def close(self) -> None:
        self.closed.set()
        for sock in [self.listener, *self.sockets]:
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> FreezableProxy:
        return self

    def __exit__(self, *_exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while not self.closed.is_set():
                client = self.listener.accept()[0]
                server = socket.create_connection(self.upstream)
                self.sockets += [client, server]
                threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        """Forwards both ways until either side closes; while frozen, reads nothing and sends nothing."""
        peer = {client: server, server: client}
        with contextlib.suppress(OSError):
            while not self.closed.is_set():
                if self.frozen.is_set():
                    self.closed.wait(TICK_S)
                    continue
                readable = select.select([client, server], [], [], TICK_S)[0]
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return self._close_pair(client, server)
                    peer[sock].sendall(data)
        self._close_pair(client, server)

    @staticmethod
    def _close_pair(client: socket.socket, server: socket.socket) -> None:
        for sock in (client, server):
            with contextlib.suppress(OSError):
                sock.close()
