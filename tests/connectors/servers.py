"""Outside systems for the connection tests, over real sockets: an HTTP API that records every request it
receives (headers included) and an OAuth2 token endpoint (client credentials grant, RFC 6749 section 4.4).

    with ApiServer() as api:
        api.clients["erp-client"] = "s3cret"          # client id -> client secret
        ...
        api.requests                                  # what arrived, in order

The API answers 401 to a bearer token it never issued or has revoked (`api.revoke_tokens()`), echoes the request
body, and serves `/echo-headers` (returns the headers it received, as an API that echoes them would: the step
must redact what it shows). `/status/<n>` answers with that status (and the headers it received).
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    header_list: list[tuple[str, str]] = field(default_factory=list)  # as received, repeats included


@dataclass
class ApiServer:
    """An HTTP API with a token endpoint at /oauth/token; see the module docstring."""

    token_lifetime: float = 3600.0
    clients: dict[str, str] = field(default_factory=dict)
    # Bearer tokens accepted as they are (a static API token), besides issued OAuth2 tokens.
    static_tokens: set[str] = field(default_factory=set)
    basic_users: dict[str, str] = field(default_factory=dict)
    api_keys: dict[str, str] = field(default_factory=dict)  # header name (lower case) -> key
    requests: list[Received] = field(default_factory=list)
    token_requests: list[Received] = field(default_factory=list)
    _issued: dict[str, float] = field(default_factory=dict)  # token -> expiry (monotonic)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="api-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> ApiServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def revoke_tokens(self) -> None:
        """Every issued token stops working (as after a key rotation on the provider's side)."""
        with self._lock:
            self._issued.clear()

    def _issue(self) -> str:
        token = "at-" + secrets.token_hex(12)
        with self._lock:
            self._issued[token] = time.monotonic() + self.token_lifetime
        return token

    def _authorised(self, headers: dict[str, str]) -> bool:
        authorization = headers.get("authorization", "")
        if authorization.startswith("Bearer "):
            token = authorization[len("Bearer ") :]
            with self._lock:
                expiry = self._issued.get(token)
            return token in self.static_tokens or (expiry is not None and expiry > time.monotonic())
        if authorization.startswith("Basic "):
            user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
            return self.basic_users.get(user) == password
        for name, key in self.api_keys.items():
            if headers.get(name) == key:
                return True
        return not (self.clients or self.static_tokens or self.basic_users or self.api_keys)


def _handler_for(server: ApiServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self, status: int, payload: Any) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _token(self, received: Received) -> None:
            server.token_requests.append(received)
            form = {key: values[0] for key, values in parse_qs(received.body.decode()).items()}
            client_id, client_secret = form.get("client_id", ""), form.get("client_secret", "")
            authorization = received.headers.get("authorization", "")
            if authorization.startswith("Basic "):
                pair = base64.b64decode(authorization[6:]).decode()
                client_id, _, client_secret = (unquote(part) for part in pair.partition(":"))
            if form.get("grant_type") != "client_credentials":
                self._answer(400, {"error": "unsupported_grant_type"})
            elif server.clients.get(client_id) != client_secret or not client_secret:
                self._answer(401, {"error": "invalid_client", "error_description": "Client authentication failed."})
            else:
                token = server._issue()
                self._answer(
                    200, {"access_token": token, "token_type": "Bearer", "expires_in": int(server.token_lifetime)}
                )

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {name.lower(): value for name, value in self.headers.items()}
            received = Received(self.command, self.path, headers, body, list(self.headers.items()))
            path = urlsplit(self.path).path
            if path == "/oauth/token":
                self._token(received)
                return
            server.requests.append(received)
            if not server._authorised(headers):
                self._answer(401, {"error": "unauthorised"})
            elif path.endswith("/echo-headers"):
                self._answer(200, {"headers": headers})
            elif "/status/" in path and "pad=" in self.path:
                # `?pad=<n>`: n characters, then the Authorization header it received, as plain text.
                pad = int(parse_qs(urlsplit(self.path).query)["pad"][0])
                data = ("x" * pad + headers.get("authorization", "")).encode()
                self.send_response(int(path.rsplit("/", 1)[-1]))
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            elif "/status/" in path:
                # Echoes the headers in the error, as some APIs do: the step must redact what it reports.
                self._answer(int(path.rsplit("/", 1)[-1]), {"error": "as asked", "headers": headers})
            else:
                try:
                    echo: Any = json.loads(body) if body else None
                except ValueError:
                    echo = body.decode(errors="replace")
                self._answer(200, {"ok": True, "path": path, "echo": echo})

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    return Handler
