"""A TCP proxy in front of PostgreSQL that makes chosen COMMITs ambiguous: the server commits, the client
never hears so (Temporal's ExecuteAndTimeout case; reliability-anchors D4).

It reads the client's side of the wire protocol (v3: untyped start-up messages, then typed messages) to
follow each transaction. When a transaction that wrote a step result (`INSERT INTO "runs_stepresult"`)
sends `COMMIT`, the proxy decides with a seeded random number whether to break it. A broken COMMIT is
forwarded; the server's answer is read up to its ReadyForQuery and dropped, and both connections are then
closed, so the client gets "server closed the connection unexpectedly" for a transaction that committed.
Nothing else is touched, and TLS is never negotiated here (the proxy answers for no server it does not know).
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import threading
from dataclasses import dataclass, field

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
RESULT_TABLE = b'"runs_stepresult"'


@dataclass
class ProxyStats:
    connections: int = 0
    commits_seen: int = 0
    result_commits_seen: int = 0
    broken: int = 0
    broken_but_failed: int = 0  # the server refused the COMMIT itself: not ambiguous, just failed
    notes: list[str] = field(default_factory=list)


class AmbiguousCommitProxy:
    """Listens on a free loopback port and forwards to (host, port)."""

    def __init__(self, upstream_host: str, upstream_port: int, *, probability: float, seed: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.probability = probability
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.stats = ProxyStats()
        self.enabled = True
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._closing = False
        self._thread = threading.Thread(target=self._accept, name="pgproxy", daemon=True)

    def start(self) -> AmbiguousCommitProxy:
        self._thread.start()
        return self

    def close(self) -> None:
        self._closing = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=10)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self.stats.connections += 1
            _Connection(self, client, server).start()

    def _doom(self) -> bool:
        with self._lock:
            self.stats.result_commits_seen += 1
            return self.enabled and self._random.random() < self.probability


def _read_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


class _Connection:
    def __init__(self, proxy: AmbiguousCommitProxy, client: socket.socket, server: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.server = server
        self.doomed = threading.Event()
        self.wrote_result = False

    def start(self) -> None:
        threading.Thread(target=self._client_to_server, daemon=True).start()
        threading.Thread(target=self._server_to_client, daemon=True).start()

    def _close(self) -> None:
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _client_to_server(self) -> None:
        try:
            # Start-up: length-prefixed messages without a type byte, until the StartupMessage itself.
            while True:
                header = _read_exact(self.client, 8)
                length, code = struct.unpack("!ii", header)
                body = _read_exact(self.client, length - 8)
                self.server.sendall(header + body)
                if code not in (SSL_REQUEST, GSSENC_REQUEST):
                    break
            while True:
                kind = _read_exact(self.client, 1)
                length = struct.unpack("!i", _read_exact(self.client, 4))[0]
                body = _read_exact(self.client, length - 4)
                if kind in (b"Q", b"P"):
                    text = body.split(b"\0", 1)[0] if kind == b"Q" else body.split(b"\0", 2)[1]
                    statement = text.strip().upper()
                    if RESULT_TABLE in text and text.lstrip().upper().startswith(b"INSERT"):
                        self.wrote_result = True
                    if kind == b"Q" and statement in (b"COMMIT", b"ROLLBACK"):
                        with self.proxy._lock:
                            self.proxy.stats.commits_seen += statement == b"COMMIT"
                        if statement == b"COMMIT" and self.wrote_result and self.proxy._doom():
                            self.doomed.set()
                        self.wrote_result = False
                self.server.sendall(kind + struct.pack("!i", length) + body)
                if kind == b"X":
                    return
        except (OSError, ConnectionError, struct.error, IndexError):
            pass
        finally:
            if not self.doomed.is_set():
                self._close()

    def _server_to_client(self) -> None:
        buffer = b""
        try:
            while True:
                chunk = self.server.recv(65536)
                if not chunk:
                    return
                if not self.doomed.is_set():
                    self.client.sendall(chunk)
                    continue
                # The COMMIT's answer: swallow it up to ReadyForQuery, then hang up on the client.
                buffer += chunk
                offset, failed = 0, False
                while len(buffer) - offset >= 5:
                    kind = buffer[offset : offset + 1]
                    length = struct.unpack("!i", buffer[offset + 1 : offset + 5])[0]
                    if len(buffer) - offset < 1 + length:
                        break
                    failed |= kind == b"E"
                    offset += 1 + length
                    if kind == b"Z":
                        with self.proxy._lock:
                            if failed:
                                self.proxy.stats.broken_but_failed += 1
                            else:
                                self.proxy.stats.broken += 1
                        return
                buffer = buffer[offset:]
        except (OSError, struct.error):
            pass
        finally:
            self._close()
