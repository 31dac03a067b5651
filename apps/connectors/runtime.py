"""What steps use at run time: a connection resolved for a run's workflow, and the HTTP authentication it
brings (with OAuth2 client-credentials tokens fetched, cached and refreshed).

Steps never see the model: `connection_for_step` hands them a frozen `ResolvedConnection` whose repr hides the
secrets, after checking that the run's workflow may use it. Anything a step shows (errors, outputs) passes
through `redact` first, so a secret an outside server echoes back never lands in a run's record.
"""

from __future__ import annotations

import base64
import json
import math
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit

from django.core.cache import cache

from apps.connectors.kinds import KINDS
from apps.connectors.models import Connection
from apps.connectors.rules import workflow_uses_connection
from apps.core import http
from apps.core.exceptions import ApplicationError
from apps.core.secrets import secret_decrypt, secret_encrypt

# A cached token is used until this many seconds before it expires, so a request never leaves with a token
# that expires on the way.
TOKEN_EXPIRY_MARGIN_SECONDS = 30
_TOKEN_CACHE_PREFIX = "connectors:oauth2"  # noqa: S105 - a cache key prefix, not a credential
REDACTED = "[secret]"


class ConnectionUnavailable(ApplicationError):
    """A step named a connection it cannot use now: unknown, disabled, of another kind, or not usable by the
    run's workflow. The message names the connection."""


class ConnectionFailed(ApplicationError):
    """Reaching the outside system failed before the step's own request (an OAuth2 token could not be had)."""

    def __init__(self, message: str, *, uncertain: bool = False) -> None:
        super().__init__(message)
        self.uncertain = uncertain


@dataclass(frozen=True)
class ResolvedConnection:
    """A connection as a step sees it: `config` (the kind's settings) and `secrets` (decrypted). The repr and
    str name only the connection, so a traceback or a log line never shows a secret. `cache_key` keys what is
    derived from the secrets (an access token); empty: nothing is cached (an unsaved connection being tested).
    `destinations`: the administrator's allowlists, which every request of the connection goes through."""

    name: str
    kind: str
    config: dict[str, Any]
    secrets: dict[str, str] = field(repr=False)
    cache_key: str = field(default="", repr=False)
    destinations: http.Destinations | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        return f"ResolvedConnection(name={self.name!r}, kind={self.kind!r})"

    __str__ = __repr__

    def secret_values(self) -> list[str]:
        """Every secret value, for redaction."""
        return [value for value in self.secrets.values() if value]


def resolve(connection: Connection) -> ResolvedConnection:
    """The step-side view of a stored connection (no permission check: callers have made it)."""
    return ResolvedConnection(
        name=connection.name,
        kind=connection.kind,
        config=dict(connection.config),
        secrets=connection.secrets,
        cache_key=f"{connection.pk}:{connection.secrets_version}",
        destinations=connection.destinations(),
    )


def connection_for_step(name: str, *, kind: str, workflow_id: int | None) -> ResolvedConnection:
    """The connection `name` of `kind` for a step of a run of workflow `workflow_id`. Raises
    ConnectionUnavailable when it does not exist, is disabled, is of another kind, or the workflow may not
    use it (its team's group lacks `use_connection`; for a workflow without a team, its owner may not use it).
    Checked at every run, since a right can be withdrawn after publishing."""
    if kind not in KINDS:
        raise ConnectionUnavailable(f'"{kind}" is not a kind of connection (connection "{name}").')
    connection = Connection.objects.select_related("team").filter(name=name).first()
    if connection is None:
        raise ConnectionUnavailable(f'There is no connection "{name}".')
    if connection.kind != kind:
        raise ConnectionUnavailable(f'The connection "{name}" is a {connection.kind} connection, not {kind}.')
    if not connection.enabled:
        raise ConnectionUnavailable(f'The connection "{name}" is disabled.')
    if not workflow_uses_connection(workflow_id, connection):
        raise ConnectionUnavailable(f'This workflow may not use the connection "{name}".')
    try:
        return resolve(connection)
    except ApplicationError as error:
        raise ConnectionUnavailable(f'The secrets of the connection "{name}" cannot be read: {error.message}') from None


def redact(value: Any, needles: Iterable[str]) -> Any:
    """`value` (a string, or JSON-like data) with every occurrence of each needle replaced by "[secret]".
    Needles shorter than 4 characters are left alone: they would blank out ordinary text."""
    words = sorted({form for needle in needles for form in _needle_forms(needle)}, key=len, reverse=True)
    if not words:
        return value
    if isinstance(value, str):
        for word in words:
            value = value.replace(word, REDACTED)
        return value
    if isinstance(value, dict):
        return {redact(str(key), words): redact(item, words) for key, item in value.items()}
    if isinstance(value, list):
        return [redact(item, words) for item in value]
    return value


def _needle_forms(needle: str) -> set[str]:
    """`needle` as it can appear in a message: itself, escaped as Python's repr and a bytes repr write it, as
    JSON writes it, and each line of a secret with line breaks (a library quoting the value escapes it; one
    printing it splits it). Forms shorter than 4 characters are left out."""
    if not needle:
        return set()
    forms = {
        needle,
        repr(needle)[1:-1],
        repr(needle.encode("utf-8", errors="backslashreplace"))[2:-1],
        json.dumps(needle)[1:-1],
        json.dumps(needle, ensure_ascii=False)[1:-1],
        *re.split(r"[\x00-\x1f\x7f]+", needle),
    }
    return {form for form in forms if len(form) >= 4}


def secret_needles(resolved: ResolvedConnection, headers: dict[str, str] | None = None) -> list[str]:
    """What must never appear in what a step shows: the secrets, and the authentication header values built
    from them (a Basic header's base64, an access token)."""
    needles = resolved.secret_values()
    for name, value in (headers or {}).items():
        if name.lower() == "authorization":
            needles.append(value.split(" ", 1)[-1])  # the credentials, not the scheme's name
        elif name.lower() == str(resolved.config.get("header_name", "")).lower():
            needles.append(value)
    return needles


def http_auth_headers(resolved: ResolvedConnection, *, refresh: bool = False) -> dict[str, str]:
    """The headers that authenticate a request over HTTP connection `resolved`. For OAuth2 client credentials
    the access token comes from the cache, or from the token endpoint when there is none, it is about to
    expire, or `refresh` is set (after a 401). Raises ConnectionFailed when no token can be had."""
    config, secrets = resolved.config, resolved.secrets
    auth = config.get("auth", "none")
    if auth == "bearer":
        return {"Authorization": f"Bearer {secrets.get('token', '')}"}
    if auth == "basic":
        pair = f"{config.get('username', '')}:{secrets.get('password', '')}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode()}
    if auth == "api_key_header":
        return {str(config["header_name"]): secrets.get("api_key", "")}
    if auth == "oauth2_client_credentials":
        return {"Authorization": f"Bearer {oauth2_access_token(resolved, refresh=refresh)}"}
    return {}


def _token_cache_key(resolved: ResolvedConnection) -> str:
    return f"{_TOKEN_CACHE_PREFIX}:{resolved.cache_key}"


def oauth2_access_token(resolved: ResolvedConnection, *, refresh: bool = False) -> str:
    """A valid access token for `resolved` (client credentials grant, RFC 6749 section 4.4), cached until
    shortly before it expires, per connection and secrets version. The cached token is stored encrypted: the
    cache is not a place for credentials in the clear."""
    key = _token_cache_key(resolved)
    if resolved.cache_key and not refresh:
        stored = cache.get(key)
        if isinstance(stored, dict) and float(stored.get("use_until", 0)) > time.time():
            try:
                return secret_decrypt(str(stored.get("token", "")))
            except ApplicationError:
                pass  # written with a key no longer configured: fetch a new one
    token, lifetime = _fetch_token(resolved)
    if resolved.cache_key and lifetime > TOKEN_EXPIRY_MARGIN_SECONDS:
        # The cache's own expiry counts whole seconds; the entry says to the fraction when to stop using it.
        use_until = time.time() + lifetime - TOKEN_EXPIRY_MARGIN_SECONDS
        entry = {"token": secret_encrypt(token), "use_until": use_until}
        cache.set(key, entry, timeout=math.ceil(lifetime - TOKEN_EXPIRY_MARGIN_SECONDS))
    return token


def oauth2_forget_token(resolved: ResolvedConnection) -> None:
    if resolved.cache_key:
        cache.delete(_token_cache_key(resolved))


def _fetch_token(resolved: ResolvedConnection) -> tuple[str, float]:
    config, secret = resolved.config, resolved.secrets.get("client_secret", "")
    form: dict[str, str] = {"grant_type": "client_credentials"}
    if config.get("scope"):
        form["scope"] = str(config["scope"])
    if config.get("audience"):
        form["audience"] = str(config["audience"])
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
    client_id = str(config.get("client_id", ""))
    if config.get("token_auth_method") == "client_secret_post":
        form.update(client_id=client_id, client_secret=secret)
    else:
        # RFC 6749 section 2.3.1: both parts form-encoded before they are joined for Basic.
        pair = f"{urlencode({'': client_id})[1:]}:{urlencode({'': secret})[1:]}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
    token_url = str(config.get("token_url", ""))
    host = urlsplit(token_url).hostname or token_url
    timeout = min(float(config.get("timeout_seconds", 30)), 30.0)
    started = time.monotonic()
    try:
        response = http.request(
            "POST",
            token_url,
            headers=headers,
            body=urlencode(form).encode(),
            timeout=timeout,
            destinations=resolved.destinations,
        )
    except http.OutboundError as error:
        raise ConnectionFailed(
            f'The token endpoint of connection "{resolved.name}" could not be reached: {error}', uncertain=False
        ) from None
    needles = secret_needles(resolved, headers)
    if response.status != 200:
        reason = redact(response.text(), needles)[:300]  # redacted before cut: no piece of a secret survives
        raise ConnectionFailed(
            f'The token endpoint of connection "{resolved.name}" ({host}) answered HTTP {response.status}: {reason}'
        )
    try:
        payload = response.json()
    except ValueError:
        payload = None
    token = payload.get("access_token") if isinstance(payload, dict) else None
    if not isinstance(token, str) or not token:
        raise ConnectionFailed(f'The token endpoint of connection "{resolved.name}" ({host}) sent no access_token.')
    try:
        lifetime = float(payload.get("expires_in", 300))
    except (TypeError, ValueError):
        lifetime = 300.0
    # The lifetime counts from when the server issued the token, which is no later than our request left.
    return token, max(lifetime - (time.monotonic() - started), 0.0)


def join_url(base_url: str, url: str) -> str:
    """`url` under the connection's `base_url`: a path is joined to it; an absolute URL must have the same
    origin (scheme, host and port). "." segments are dropped; a ".." segment, written or percent-encoded, is
    refused: run data in a URL template must not steer a request carrying the connection's credentials to
    another endpoint. Raises ConnectionUnavailable for a URL that leaves the origin or climbs."""
    base = urlsplit(base_url)
    absolute = "://" in url.split("?", 1)[0] or url.startswith("//")
    if absolute:
        target = urlsplit(url)
        if (target.scheme, target.hostname, target.port) != (base.scheme, base.hostname, base.port):
            raise ConnectionUnavailable(
                f"The URL {url[:200]!r} leaves the connection's address ({base.scheme}://{base.netloc}): give a path."
            )
        path, query, fragment = target.path, target.query, target.fragment
        prefix = f"{target.scheme}://{target.netloc}"
    else:
        relative = urlsplit(url)
        if relative.scheme or relative.netloc:
            raise ConnectionUnavailable(f"The URL {url[:200]!r} is not a path under the connection's address.")
        path = base.path.rstrip("/") + "/" + relative.path.lstrip("/") if url else base.path
        query, fragment = relative.query, relative.fragment
        prefix = f"{base.scheme}://{base.netloc}"
    segments = []
    for segment in path.split("/"):
        decoded = segment
        for _ in range(3):  # a server or proxy may decode more than once: %252e%252e is ".." to it
            decoded = unquote(decoded)
        parts = re.split(r"[/\\]", decoded)
        # "..;x" is ".." to Java servers (Tomcat, Jetty, Spring drop a segment's ";" parameters).
        if any(part.split(";", 1)[0] == ".." for part in parts):
            raise ConnectionUnavailable(
                f'The URL {url[:200]!r} has a ".." segment: give a path under the connection\'s address '
                f"({base_url}), without climbing out of it."
            )
        if decoded != ".":
            segments.append(segment)
    joined = prefix + "/".join(segments)
    if path.endswith("/.") or (path.endswith("/") and not joined.endswith("/")):
        joined += "/"
    if query:
        joined += "?" + query
    if fragment:
        joined += "#" + fragment
    return joined
