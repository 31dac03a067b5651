"""The "external system" of the fault tests: a loopback HTTP server whose side effects are counted in a
ledger of its own (a SQLite file, never the app database, so an app rollback cannot hide a duplicate).

Every request must carry an `Idempotency-Key` header. Per key the ledger holds `(key, body_hash,
raw_deliveries, effective_applies, first_at, last_at)`: raw deliveries count every request that arrived,
effective applies count the times the effect really happened. In the default mode the effect is applied
only the first time a key is seen (the sink deduplicates, as a payment API does) and repeats get the first
answer again; with `dedupe=False` every delivery applies (an outside system that cannot deduplicate, for
at-most-once tests). A key reused with another body is refused with 422.

Each delivery is also recorded with its start and end time, so a test can tell whether two executions of
the same step overlapped. A delivery can be held open (a per-key delay, or `?delay=<seconds>` in the URL)
so a test can kill the caller mid-call, and made to fail first (`?fail_first=<n>`: the first n deliveries
of a key answer 503 without applying), to exercise retries.

The server runs in a thread of the test process (ThreadingHTTPServer on a free loopback port):

    with Sink(tmp_path / "sink.sqlite3") as sink:
        url = f"{sink.url}/effect/{{{{ input.n }}}}"
        ...
        assert all(row.effective_applies == 1 for row in sink.ledger().values())
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (
    key TEXT PRIMARY KEY,
    body_hash TEXT NOT NULL,
    raw_deliveries INTEGER NOT NULL,
    effective_applies INTEGER NOT NULL,
    body_conflicts INTEGER NOT NULL DEFAULT 0,
    first_at REAL NOT NULL,
    last_at REAL NOT NULL,
    first_response TEXT
);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    path TEXT NOT NULL,
    body_hash TEXT NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL,
    status INTEGER,
    applied INTEGER NOT NULL DEFAULT 0,
    peer TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS deliveries_key ON deliveries (key);
"""


@dataclass(frozen=True)
class LedgerRow:
    key: str
    body_hash: str
    raw_deliveries: int
    effective_applies: int
    body_conflicts: int
    first_at: float
    last_at: float


@dataclass(frozen=True)
class Delivery:
    id: int
    key: str
    path: str
    started_at: float
    ended_at: float | None  # None while the request is still being handled
    status: int | None
    applied: bool
    peer: str = ""  # the caller's address (the scale-out test tells its hosts apart by it)


class Sink:
    """A side-effect sink with its own SQLite ledger; see the module docstring."""

    def __init__(self, ledger_path: Path | str, *, dedupe: bool = True, host: str = "127.0.0.1") -> None:
        self.ledger_path = Path(ledger_path)
        self.dedupe = dedupe
        self.default_delay = 0.0
        self._delays: dict[str, float] = {}
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.ledger_path, check_same_thread=False, isolation_level=None)
        self._db.executescript(_SCHEMA)
        self._in_flight = 0
        self._stopped = False
        self._server = ThreadingHTTPServer((host, 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="sink", daemon=True)

    # lifecycle ---------------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self._server.server_address[0]}:{self.port}"

    def start(self) -> Sink:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the ledger (safe to call twice)."""
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        with self._lock:
            self._db.close()

    def __enter__(self) -> Sink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # configuration -----------------------------------------------------------------------------------------

    def set_delay(self, key: str, seconds: float) -> None:
        """Hold every delivery of `key` open for `seconds` before applying it (0 removes the delay)."""
        with self._lock:
            if seconds:
                self._delays[key] = seconds
            else:
                self._delays.pop(key, None)

    # reading the ledger ------------------------------------------------------------------------------------

    def ledger(self) -> dict[str, LedgerRow]:
        """Every key seen so far, with its counts."""
        with self._lock:
            rows = self._db.execute(
                "SELECT key, body_hash, raw_deliveries, effective_applies, body_conflicts, first_at, last_at "
                "FROM ledger"
            ).fetchall()
        return {row[0]: LedgerRow(*row) for row in rows}

    def deliveries(self, key: str | None = None) -> list[Delivery]:
        """Deliveries in arrival order (of one key, or all)."""
        query = "SELECT id, key, path, started_at, ended_at, status, applied, peer FROM deliveries"
        args: tuple[Any, ...] = ()
        if key is not None:
            query, args = query + " WHERE key = ?", (key,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY id", args).fetchall()
        return [Delivery(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6]), r[7]) for r in rows]

    def in_flight(self) -> int:
        """Requests being handled right now (held open by a delay, or applying)."""
        with self._lock:
            return self._in_flight

    def duplicate_effects(self) -> int:
        """Effects applied more than once, summed over keys (0 is the invariant)."""
        return sum(max(row.effective_applies - 1, 0) for row in self.ledger().values())

    def max_concurrent_deliveries(self) -> dict[str, int]:
        """Per key, the most deliveries that were in progress at the same moment (1 = never overlapped).
        A delivery still open counts as lasting until now."""
        now = time.time()
        by_key: dict[str, list[tuple[float, float]]] = {}
        for delivery in self.deliveries():
            end = delivery.ended_at if delivery.ended_at is not None else now
            by_key.setdefault(delivery.key, []).append((delivery.started_at, end))
        result = {}
        for key, spans in by_key.items():
            events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
            level = peak = 0
            for _, step in events:  # at equal times an end (-1) sorts before a start: touching is not overlap
                level += step
                peak = max(peak, level)
            result[key] = peak
        return result

    # handling one request (called from the server's threads) -----------------------------------------------

    def _arrive(self, key: str, path: str, body_hash: str, peer: str = "") -> int:
        now = time.time()
        with self._lock:
            self._in_flight += 1
            self._db.execute("BEGIN IMMEDIATE")
            cursor = self._db.execute(
                "INSERT INTO deliveries (key, path, body_hash, started_at, peer) VALUES (?, ?, ?, ?, ?)",
                (key, path, body_hash, now, peer),
            )
            self._db.execute(
                "INSERT INTO ledger (key, body_hash, raw_deliveries, effective_applies, first_at, last_at) "
                "VALUES (?, ?, 1, 0, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET raw_deliveries = raw_deliveries + 1, last_at = excluded.last_at",
                (key, body_hash, now, now),
            )
            self._db.execute("COMMIT")
            return int(cursor.lastrowid or 0)

    def _delay_for(self, key: str, query: dict[str, list[str]]) -> float:
        """The longest of the key's delay, the default delay and the URL's `?delay=`."""
        with self._lock:
            delay = self._delays.get(key, self.default_delay)
        return max(delay, float(query.get("delay", ["0"])[0] or 0))

    def _apply(
        self, delivery_id: int, key: str, body_hash: str, body: Any, fail_first: int
    ) -> tuple[int, dict[str, Any]]:
        """Decide and record what this delivery does; returns (status, response body)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                stored_hash, effective, first_response = self._db.execute(
                    "SELECT body_hash, effective_applies, first_response FROM ledger WHERE key = ?",
                    (key,),
                ).fetchone()
                earlier = self._db.execute(
                    "SELECT COUNT(*) FROM deliveries WHERE key = ? AND id < ?", (key, delivery_id)
                ).fetchone()[0]
                applied = False
                if stored_hash != body_hash and self.dedupe:
                    self._db.execute("UPDATE ledger SET body_conflicts = body_conflicts + 1 WHERE key = ?", (key,))
                    status, response = 422, {"error": "Idempotency-Key reused with another body", "key": key}
                elif earlier < fail_first:
                    status, response = 503, {"error": "failing on purpose", "delivery": earlier + 1, "key": key}
                elif effective == 0 or not self.dedupe:
                    applied = True
                    effective += 1
                    status = 200
                    response = {"key": key, "applied": True, "effect": effective, "delivery": earlier + 1, "echo": body}
                    self._db.execute(
                        "UPDATE ledger SET effective_applies = ?, first_response = COALESCE(first_response, ?) "
                        "WHERE key = ?",
                        (effective, json.dumps(response), key),
                    )
                else:
                    # A repeat of an applied request: answer as the first time (a replay), nothing happens.
                    status = 200
                    response = {**json.loads(first_response), "applied": False, "delivery": earlier + 1}
                self._db.execute(
                    "UPDATE deliveries SET ended_at = ?, status = ?, applied = ? WHERE id = ?",
                    (time.time(), status, int(applied), delivery_id),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            finally:
                self._in_flight -= 1
        return status, response


def _handler_for(sink: Sink) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the ledger is the log

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw_body = self.rfile.read(length) if length else b""
            key = self.headers.get("Idempotency-Key", "")
            if not key:
                self._answer(400, {"error": "Idempotency-Key header is required"})
                return
            parts = urlsplit(self.path)
            query = parse_qs(parts.query)
            body_hash = hashlib.sha256(raw_body).hexdigest()
            try:
                body: Any = json.loads(raw_body) if raw_body else None
            except ValueError:
                body = raw_body.decode("utf-8", errors="replace")
            delivery_id = sink._arrive(key, parts.path, body_hash, str(self.client_address[0]))
            delay = sink._delay_for(key, query)
            if delay > 0:
                time.sleep(delay)
            fail_first = int(query.get("fail_first", ["0"])[0] or 0)
            status, response = sink._apply(delivery_id, key, body_hash, body, fail_first)
            self._answer(status, response)

        def _answer(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except OSError:
                pass  # the caller died mid-call (the fault tests do that on purpose)

        do_POST = do_PUT = do_PATCH = do_DELETE = do_GET = _handle

    return Handler
