"""A small OpenID Connect provider for tests, speaking the real protocol over a real socket.

It serves discovery (/.well-known/openid-configuration), a JWKS with an RSA key made when it starts, an
authorization endpoint that approves whichever person the test chose (`provider.person`) without a login page, a
token endpoint that checks the client's secret, the code's redirect URI and its PKCE verifier and issues an ID token
signed with that key (with the nonce it was given), and a userinfo endpoint for the access token.

`provider.fault` makes the next ID tokens wrong in one way, for the tests of what the client must refuse:
"bad_signature" (signed with another key under the same key id), "wrong_audience", "wrong_issuer" or "expired".
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

KEY_ID = "test-key-1"


@dataclass
class Provider:
    """The provider's state, which the test reads and changes between sign-ins."""

    client_id: str
    client_secret: str
    redirect_uris: list[str]
    person: dict[str, Any] = field(default_factory=dict)  # the claims of whoever the authorization endpoint approves
    fault: str | None = None
    url: str = ""
    key: Any = None
    other_key: Any = None
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    access_tokens: dict[str, dict[str, Any]] = field(default_factory=dict)
    # What the token endpoint saw, one entry per exchange: whether PKCE verified and a nonce came back.
    exchanges: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def issuer(self) -> str:
        return self.url

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.url}/authorize",
            "token_endpoint": f"{self.url}/token",
            "userinfo_endpoint": f"{self.url}/userinfo",
            "jwks_uri": f"{self.url}/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
        }

    def jwks(self) -> dict[str, Any]:
        jwk = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        return {"keys": [{**jwk, "kid": KEY_ID, "alg": "RS256", "use": "sig"}]}

    def id_token(self, claims: dict[str, Any], nonce: str | None) -> str:
        now = int(time.time())
        payload = {
            **claims,
            "iss": self.issuer,
            "aud": self.client_id,
            "iat": now,
            "exp": now + 300,
            "auth_time": now,
        }
        if nonce is not None:
            payload["nonce"] = nonce
        key = self.key
        if self.fault == "bad_signature":
            key = self.other_key
        elif self.fault == "wrong_audience":
            payload["aud"] = "some-other-client"
        elif self.fault == "wrong_issuer":
            payload["iss"] = "http://attacker.example"
        elif self.fault == "expired":
            payload["iat"], payload["exp"] = now - 1200, now - 600
        return jwt.encode(payload, key, algorithm="RS256", headers={"kid": KEY_ID})


def _handler(provider: Provider) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _json(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = {name: values[0] for name, values in parse_qs(parts.query).items()}
            if parts.path == "/.well-known/openid-configuration":
                return self._json(200, provider.discovery())
            if parts.path == "/jwks":
                return self._json(200, provider.jwks())
            if parts.path == "/authorize":
                return self._authorize(query)
            if parts.path == "/userinfo":
                return self._userinfo()
            return self._json(404, {"error": "not_found"})

        def do_POST(self) -> None:
            if urlsplit(self.path).path != "/token":
                return self._json(404, {"error": "not_found"})
            length = int(self.headers.get("Content-Length") or 0)
            form = {name: values[0] for name, values in parse_qs(self.rfile.read(length).decode()).items()}
            return self._token(form)

        def _authorize(self, query: dict[str, str]) -> None:
            if query.get("client_id") != provider.client_id or query.get("redirect_uri") not in provider.redirect_uris:
                return self._json(400, {"error": "invalid_request", "error_description": "unknown client or redirect"})
            if query.get("response_type") != "code" or "openid" not in query.get("scope", "").split():
                return self._json(400, {"error": "invalid_request"})
            code = secrets.token_urlsafe(24)
            with provider.lock:
                provider.codes[code] = {
                    "claims": dict(provider.person),
                    "nonce": query.get("nonce"),
                    "challenge": query.get("code_challenge"),
                    "method": query.get("code_challenge_method"),
                    "redirect_uri": query["redirect_uri"],
                }
            self.send_response(302)
            self.send_header(
                "Location", f"{query['redirect_uri']}?{urlencode({'code': code, 'state': query['state']})}"
            )
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _token(self, form: dict[str, str]) -> None:
            client_id, client_secret = form.get("client_id"), form.get("client_secret")
            basic = self.headers.get("Authorization", "")
            if basic.startswith("Basic "):
                client_id, _, client_secret = base64.b64decode(basic[6:]).decode().partition(":")
            if client_id != provider.client_id or client_secret != provider.client_secret:
                return self._json(401, {"error": "invalid_client"})
            with provider.lock:
                grant = provider.codes.pop(form.get("code", ""), None)  # a code works once
            if form.get("grant_type") != "authorization_code" or grant is None:
                return self._json(400, {"error": "invalid_grant"})
            if form.get("redirect_uri") != grant["redirect_uri"]:
                return self._json(400, {"error": "invalid_grant", "error_description": "redirect_uri differs"})
            verifier = form.get("code_verifier", "")
            expected = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
            pkce_ok = grant["method"] == "S256" and bool(verifier) and expected == grant["challenge"]
            provider.exchanges.append({"pkce_verified": pkce_ok, "nonce_sent": bool(grant["nonce"])})
            if grant["challenge"] and not pkce_ok:
                return self._json(400, {"error": "invalid_grant", "error_description": "PKCE verification failed"})
            access = secrets.token_urlsafe(24)
            with provider.lock:
                provider.access_tokens[access] = grant["claims"]
            return self._json(
                200,
                {
                    "access_token": access,
                    "token_type": "Bearer",
                    "expires_in": 300,
                    "id_token": provider.id_token(grant["claims"], grant["nonce"]),
                },
            )

        def _userinfo(self) -> None:
            header = self.headers.get("Authorization", "")
            claims = provider.access_tokens.get(header[7:]) if header.startswith("Bearer ") else None
            if claims is None:
                return self._json(401, {"error": "invalid_token"})
            return self._json(200, claims)

    return Handler


@contextmanager
def oidc_provider(*, client_id: str, client_secret: str, redirect_uris: list[str]) -> Iterator[Provider]:
    """A provider on a free loopback port for the duration of the block (its RSA keys are made here)."""
    provider = Provider(client_id=client_id, client_secret=client_secret, redirect_uris=redirect_uris)
    provider.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    provider.other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(provider))
    provider.url = f"http://localhost:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="oidc-provider", daemon=True)
    thread.start()
    try:
        yield provider
    finally:
        server.shutdown()
        server.server_close()
