"""A TCP relay in front of a real redis-server that "stops Redis" at a chosen moment.

Stopping the server itself cannot be timed to the middle of one CLI command; this relay can: the
moment a client sends `command` (a RESP bulk string such as HSET or EVALSHA), or opens its
`connection`-th connection, it closes every connection through it and stops listening, so the
client sees a dropped connection and then "connection refused", exactly as when redis-server goes
away. The server behind it keeps running.
"""

from __future__ import annotations

import socket
import threading
from types import TracebackType

from tests.support.emulator import LOOPBACK


class RedisCut:
    """Relay LOOPBACK:<free port> -> LOOPBACK:`port`; cut everything when a client sends
    `command` (after letting `skip` of them through), or when connection number `connection` opens."""

    def __init__(self, port: int, command: str = "", skip: int = 0, connection: int = 0) -> None:
        self.port = port
        self.skip = skip
        self.connection = connection
        self.pattern = b"\r\n" + command.upper().encode() + b"\r\n" if command else b""
        self.cut = threading.Event()
        self._listener = socket.create_server((LOOPBACK, 0))
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="redis-cut", daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self._listener.getsockname()[1]}/0"

    def _accept(self) -> None:
        opened = 0
        while not self.cut.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            opened += 1
            if opened == self.connection:
                self._close(client)
                self.stop()
                return
            server = socket.create_connection((LOOPBACK, self.port))
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        tail = b""
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                return
            if not data:
                self._close(src, dst)
                return
            if from_client and self.pattern and self.pattern in (tail + data).upper():
                with self._lock:
                    self.skip -= 1
                    due = self.skip < 0
                if due:
                    self.stop()
                    return
            tail = data[-len(self.pattern):]
            try:
                dst.sendall(data)
            except OSError:
                return

    @staticmethod
    def _close(*sockets: socket.socket) -> None:
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def stop(self) -> None:
        """Redis "stops": every connection is dropped, new ones are refused."""
        self.cut.set()
        self._close(self._listener)
        with self._lock:
            self._close(*self._sockets)

    def __enter__(self) -> RedisCut:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
