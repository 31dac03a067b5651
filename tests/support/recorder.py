"""A recording TCP proxy on loopback: forwards every byte both ways and keeps what the client sent.

Put between the product and a server, it proves what did and did not reach the server (a PII canary,
any request at all during a replay) from the bytes on the wire, not from the product's own records.
"""

from __future__ import annotations

import socket
import threading
from contextlib import suppress


class RecordingProxy:
    """`url` forwards to `upstream_port`; `sent` holds every byte clients sent upstream."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._sent = bytearray()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def sent(self) -> bytes:
        with self._lock:
            return bytes(self._sent)

    def clear(self) -> None:
        with self._lock:
            self._sent.clear()

    def close(self) -> None:
        with suppress(OSError):
            self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pipe, args=(downstream, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, downstream, False), daemon=True).start()

    def _pipe(self, source: socket.socket, target: socket.socket, record: bool) -> None:
        try:
            while data := source.recv(65536):
                if record:
                    with self._lock:
                        self._sent.extend(data)
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
