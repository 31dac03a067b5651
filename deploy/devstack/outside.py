"""Stand-ins for the outside systems the gallery templates talk to: an ERP's and a CMS's HTTP APIs.

    python -m deploy.devstack.outside --port 8030 --directory .data/outside

The embedded stack starts it so that the templates run end to end on a fresh machine: "Invoice review" posts
approved invoices to `/erp/invoices`, "Marketing copy" publishes descriptions to `/cms/products/<sku>`. It
listens on 127.0.0.1 only and behaves as a careful API does:

- A write (POST, PUT, PATCH) takes a JSON object. Anything else is a 415 or a 400 with the reason.
- `Idempotency-Key` is honoured: the first request with a key takes effect and is answered 201; a repeat
  with the same body gets the same answer again (200, `Idempotent-Replayed: true`) and changes nothing; the
  same key with another body is a 422. That is what lets the product retry a post without posting twice.
- Every request that took effect is kept, one JSON line each, in `<directory>/received.jsonl`, and listed
  on `GET /` so a person trying the demo sees what "the ERP" received.
- `GET /health` answers 200.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import json
import signal
import sys
import threading
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .config import LOOPBACK

MAX_BODY_BYTES = 1024 * 1024
SYSTEMS = {"erp": "ERP", "cms": "CMS"}


class Ledger:
    """What took effect, by idempotency key, kept in memory and appended to `received.jsonl`."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "received.jsonl"
        self._lock = threading.Lock()
        self._by_key: dict[str, dict[str, Any]] = {}
        self.entries: list[dict[str, Any]] = []
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a crash; the rest is still good
                self._remember(entry)

    def _remember(self, entry: dict[str, Any]) -> None:
        self.entries.append(entry)
        if entry.get("idempotency_key"):
            self._by_key[entry["idempotency_key"]] = entry

    def apply(self, method: str, path: str, key: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Take effect once per key: (status, answer)."""
        body_hash = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        with self._lock:
            earlier = self._by_key.get(key) if key else None
            if earlier is not None:
                if earlier["body_sha256"] != body_hash or earlier["path"] != path:
                    return 422, {"error": "This Idempotency-Key was used for another request."}
                return 200, earlier["answer"]
            answer = {"id": str(uuid.uuid4()), "status": "accepted"}
            entry = {
                "received_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "method": method,
                "path": path,
                "idempotency_key": key,
                "body_sha256": body_hash,
                "body": body,
                "answer": answer,
            }
            with self.path.open("a", encoding="utf-8") as file:
                file.write(json.dumps(entry) + "\n")
            self._remember(entry)
            return 201, answer


def make_handler(ledger: Ledger) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "AIOS-outside-stand-in"

        def log_message(self, format: str, *args: Any) -> None:
            return  # the ledger is the log

        def _send(
            self, status: int, payload: Any, *, content_type: str = "application/json", replayed: bool = False
        ) -> None:
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            if replayed:
                self.send_header("Idempotent-Replayed", "true")
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/health":
                self._send(200, {"status": "ok"})
            elif self.path == "/":
                self._send(200, _page(ledger.entries).encode(), content_type="text/html; charset=utf-8")
            else:
                self._send(404, {"error": "Not found. This stand-in only accepts writes under /erp/ and /cms/."})

        def _write(self) -> None:
            system = self.path.strip("/").split("/", 1)[0]
            if system not in SYSTEMS:
                self._send(404, {"error": "Not found: write under /erp/ or /cms/."})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                self._send(413, {"error": f"The body is larger than {MAX_BODY_BYTES} bytes."})
                return
            if "json" not in (self.headers.get("Content-Type") or ""):
                self._send(415, {"error": "Send JSON (Content-Type: application/json)."})
                return
            try:
                body = json.loads(self.rfile.read(length) or b"null")
            except ValueError as error:
                self._send(400, {"error": f"The body is not JSON: {error}"})
                return
            if not isinstance(body, dict):
                self._send(400, {"error": "The body must be a JSON object."})
                return
            status, answer = ledger.apply(self.command, self.path, self.headers.get("Idempotency-Key", ""), body)
            self._send(status, answer, replayed=status == 200)

        do_POST = do_PUT = do_PATCH = _write

    return Handler


def _page(entries: list[dict[str, Any]]) -> str:
    rows = "".join(
        "<tr><td>{}</td><td>{}</td><td>{} {}</td><td><pre>{}</pre></td></tr>".format(
            html.escape(entry["received_at"]),
            html.escape(SYSTEMS.get(entry["path"].strip("/").split("/", 1)[0], "?")),
            html.escape(entry["method"]),
            html.escape(entry["path"]),
            html.escape(json.dumps(entry["body"], indent=2, ensure_ascii=False)),
        )
        for entry in reversed(entries)
    )
    empty = "<p>Nothing received yet. Run “Invoice review” or “Marketing copy” to see posts here.</p>"
    empty = "" if entries else empty
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        "<title>Outside systems (demo stand-ins)</title></head><body>"
        "<h1>What the demo ERP and CMS received</h1>"
        "<p>These are stand-ins the development stack runs in place of your ERP and CMS. Newest first.</p>"
        f"{empty}<table><thead><tr><th scope='col'>Received (UTC)</th><th scope='col'>System</th>"
        f"<th scope='col'>Request</th><th scope='col'>Body</th></tr></thead><tbody>{rows}</tbody></table>"
        "</body></html>"
    )


def serve(port: int, directory: Path, *, host: str = LOOPBACK) -> ThreadingHTTPServer:
    """A started server (in a thread of its own) on `host`:`port`; stop it with `.shutdown()`."""
    server = ThreadingHTTPServer((host, port), make_handler(Ledger(directory)))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="outside", daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--directory", type=Path, required=True)
    options = parser.parse_args(argv)
    server = serve(options.port, options.directory)
    print(f"Outside-system stand-ins (ERP, CMS) on http://{LOOPBACK}:{options.port}/", flush=True)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
