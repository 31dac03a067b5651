"""The kinds of connection: their non-secret settings (pydantic models, validated on every write) and the
secrets each kind keeps encrypted.

A kind's settings are what analysts may read (they pick connections by them); anything that opens a door (a
password, a token, a client secret, an API key) is a secret: write-only, stored as one encrypted token, and
never shown, exported, logged or audited.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from apps.core.exceptions import ValidationFailed

HTTP, SMTP, SQL, MAILBOX, MCP = "http", "smtp", "sql", "mailbox", "mcp"
KINDS = (HTTP, SMTP, SQL, MAILBOX, MCP)
KIND_LABELS = {
    HTTP: "HTTP API",
    SMTP: "SMTP (email out)",
    SQL: "SQL database",
    MAILBOX: "Mailbox (email in, IMAP)",
    MCP: "MCP server",
}

_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.\-]{0,251}[A-Za-z0-9])?$|^\[?[0-9A-Fa-f:.]+\]?$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# Credentials go in the authentication settings, which are secret; these in plain default headers would be
# readable by every analyst who may use the connection.
_CREDENTIAL_HEADERS = {"authorization", "proxy-authorization", "cookie"}


class KindSettings(BaseModel):
    """Base of every kind's settings: unknown keys are errors, so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


def _check_host(value: str) -> str:
    if not value or not _HOST.match(value) or "://" in value:
        raise ValueError("Give a host name or an IP address only, e.g. mail.example.com (no scheme, no port).")
    return value


class HttpSettings(KindSettings):
    """An HTTP API: base URL, default headers, timeout and how requests authenticate."""

    base_url: str = Field(description="Requests name a path under this URL, e.g. https://erp.example.com/api/")
    headers: dict[str, str] = Field(default_factory=dict, description="Sent with every request. Not secret.")
    timeout_seconds: float = Field(30, gt=0, le=300, description="Longest wait for an answer.")
    test_path: str = Field("", description="What the test calls (GET), relative to the base URL; empty: the base URL.")
    auth: Literal["none", "bearer", "basic", "api_key_header", "oauth2_client_credentials"] = "none"
    username: str = Field("", description="Basic authentication: the user name.")
    header_name: str = Field("", description="API key authentication: the header that carries the key.")
    token_url: str = Field("", description="OAuth2: the token endpoint.")
    client_id: str = Field("", description="OAuth2: the client id.")
    scope: str = Field("", description="OAuth2: the scopes to ask for, separated by spaces (optional).")
    audience: str = Field("", description="OAuth2: the audience to ask for (optional; some providers need it).")
    token_auth_method: Literal["client_secret_basic", "client_secret_post"] = Field(
        "client_secret_basic", description="OAuth2: how the client proves itself to the token endpoint."
    )

    @field_validator("base_url", "token_url")
    @classmethod
    def _url(cls, value: str, info: Any) -> str:
        if not value and info.field_name == "token_url":
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("Give a URL starting with http:// or https://.")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ValueError("No user name, password, query or fragment here: put credentials in the authentication.")
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, header in value.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f'"{name}" is not a valid header name.')
            if name.lower() in _CREDENTIAL_HEADERS:
                raise ValueError(f'"{name}" carries credentials: choose an authentication method instead.')
            if "\n" in header or "\r" in header:
                raise ValueError(f'The value of "{name}" must be one line.')
        return value

    @field_validator("test_path")
    @classmethod
    def _test_path(cls, value: str) -> str:
        if "://" in value or value.startswith("//"):
            raise ValueError("Give a path under the base URL, e.g. /health.")
        return value

    @model_validator(mode="after")
    def _auth_settings(self) -> HttpSettings:
        if self.auth == "basic" and not self.username:
            raise ValueError("username: Basic authentication needs a user name.")
        if self.auth == "api_key_header" and not _HEADER_NAME.match(self.header_name or ""):
            raise ValueError("header_name: API key authentication needs the name of the header, e.g. X-API-Key.")
        if self.auth == "oauth2_client_credentials":
            if not self.token_url:
                raise ValueError("token_url: OAuth2 client credentials need the token endpoint's URL.")
            if not self.client_id:
                raise ValueError("client_id: OAuth2 client credentials need a client id.")
        return self


class SmtpSettings(KindSettings):
    """An SMTP server that sends mail for steps."""

    host: str = Field(description="e.g. smtp.example.com")
    port: int = Field(587, ge=1, le=65535)
    security: Literal["none", "starttls", "ssl"] = Field(
        "starttls", description="starttls upgrades a plain connection (port 587); ssl is TLS from the start (465)."
    )
    username: str = Field("", description="Empty: the server takes mail without signing in.")
    from_address: str = Field(description="The sender of the mail steps send, e.g. billing@example.com")

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return _check_host(value)

    @field_validator("from_address")
    @classmethod
    def _from(cls, value: str) -> str:
        address = value.rsplit("<", 1)[-1].rstrip(">").strip()
        if not re.fullmatch(r"[^@\s<>]+@[^@\s<>]+", address):
            raise ValueError("Give an email address, e.g. billing@example.com")
        return value


class SqlSettings(KindSettings):
    """A SQL database (PostgreSQL, or MySQL / MariaDB) that `sql.query` steps read or write."""

    dialect: Literal["postgresql", "mysql"] = Field("postgresql", description="MySQL also covers MariaDB.")
    host: str
    port: int = Field(0, ge=0, le=65535, description="Empty: the usual port (5432 for PostgreSQL, 3306 for MySQL).")
    database: str = Field(min_length=1, max_length=128)
    username: str = Field(min_length=1, max_length=128)
    statement_timeout_seconds: float = Field(30, gt=0, le=600, description="Default limit for one statement.")
    row_cap: int = Field(1000, ge=1, le=100_000, description="Default limit on the rows a query returns.")

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return _check_host(value)

    @model_validator(mode="after")
    def _default_port(self) -> SqlSettings:
        if not self.port:
            self.port = 5432 if self.dialect == "postgresql" else 3306
        return self


class MailboxSettings(KindSettings):
    """An IMAP mailbox that email triggers read."""

    host: str
    port: int = Field(993, ge=1, le=65535)
    ssl: bool = Field(
        True,
        description="TLS from the start (port 993). Off only for a mail server on this machine: the password would "
        "travel unencrypted, so any other server is refused when connecting.",
    )
    username: str = Field(min_length=1)
    folder: str = Field("INBOX", min_length=1, max_length=200)

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return _check_host(value)


# Headers the MCP transport sets itself (framing, content negotiation, the session): a connection's extra headers
# must not replace them. Authorization comes from the bearer token when one is set.
MCP_RESERVED_HEADERS = {
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "content-type",
    "accept",
    "mcp-session-id",
    "mcp-protocol-version",
    "last-event-id",
}
MCP_MAX_ARGS = 64


class McpSettings(KindSettings):
    """An MCP server whose tools steps and agents call: over Streamable HTTP (`url`), or a program on the workers
    that speaks MCP on its standard input and output (`command` and `args`; only admins set these up)."""

    transport: Literal["http", "stdio"] = Field(
        "http", description="http: a server at a URL (Streamable HTTP). stdio: a program the workers start."
    )
    url: str = Field("", description="Streamable HTTP: the server's endpoint, e.g. https://tools.example.com/mcp")
    command: str = Field(
        "", description="stdio: the program's absolute path on the workers, e.g. /opt/mcp/bin/inventory-server"
    )
    args: list[str] = Field(default_factory=list, description="stdio: the program's arguments, one per line.")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("Give a URL starting with http:// or https://.")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ValueError("No user name, password, query or fragment here: put credentials in the secrets.")
        return value

    @field_validator("args")
    @classmethod
    def _args(cls, value: list[str]) -> list[str]:
        if len(value) > MCP_MAX_ARGS:
            raise ValueError(f"At most {MCP_MAX_ARGS} arguments.")
        for argument in value:
            if "\x00" in argument or "\n" in argument or "\r" in argument or len(argument) > 1000:
                raise ValueError("Each argument is one line of at most 1000 characters.")
        return value

    @model_validator(mode="after")
    def _transport_settings(self) -> McpSettings:
        if self.transport == "http":
            if not self.url:
                raise ValueError("url: Streamable HTTP needs the server's URL.")
            if self.command or self.args:
                raise ValueError("command: a Streamable HTTP server is reached by its URL; leave the program empty.")
            return self
        if self.url:
            raise ValueError("url: a stdio server is a program on the workers; leave the URL empty.")
        if not self.command:
            raise ValueError("command: stdio needs the absolute path of the program to start.")
        if not os.path.isabs(self.command):
            raise ValueError("command: give the program's absolute path, e.g. /opt/mcp/bin/server (no search path).")
        if not os.path.isfile(self.command):
            raise ValueError(f"command: there is no program at {self.command} on this machine.")
        if not os.access(self.command, os.X_OK):
            raise ValueError(f"command: {self.command} is not executable.")
        return self


def mcp_headers_parse(text: str) -> dict[str, str]:
    """An MCP connection's extra-headers secret as a dict: a JSON object of header names to values (what the
    form stores), or "Name: value" lines. Raises ValueError naming the header, never its value."""
    text = (text or "").strip()
    if not text:
        return {}
    headers: dict[str, str] = {}
    if text.startswith("{"):
        try:
            loaded = json.loads(text)
        except ValueError:
            raise ValueError("Write the headers as a JSON object or as Name: value lines.") from None
        if not isinstance(loaded, dict) or not all(isinstance(v, str) for v in loaded.values()):
            raise ValueError("Write the headers as a JSON object of names to text values.")
        headers = {str(name): value for name, value in loaded.items()}
    else:
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            name, colon, value = line.partition(":")
            if not colon or not name.strip():
                raise ValueError(f'Line {number}: write each header as "Name: value".')
            headers[name.strip()] = value.strip()
    for name, value in headers.items():
        if not _HEADER_NAME.match(name):
            raise ValueError(f'"{name[:100]}" is not a valid header name.')
        if name.lower() in MCP_RESERVED_HEADERS:
            raise ValueError(f'"{name}" is set by the MCP transport and cannot be given.')
        if any(ord(character) < 32 or ord(character) == 127 for character in value):
            raise ValueError(f'The value of "{name}" must be one line.')
    return headers


@dataclass(frozen=True)
class SecretSpec:
    """One secret a kind keeps: its key in the encrypted object, its label, and when it is needed."""

    key: str
    label: str
    help: str = ""


SETTINGS: dict[str, type[KindSettings]] = {
    HTTP: HttpSettings,
    SMTP: SmtpSettings,
    SQL: SqlSettings,
    MAILBOX: MailboxSettings,
    MCP: McpSettings,
}

SECRETS: dict[str, tuple[SecretSpec, ...]] = {
    HTTP: (
        SecretSpec("token", "Bearer token", "Bearer authentication."),
        SecretSpec("password", "Password", "Basic authentication."),
        SecretSpec("api_key", "API key", "API key authentication: the header's value."),
        SecretSpec("client_secret", "Client secret", "OAuth2 client credentials."),
    ),
    SMTP: (SecretSpec("password", "Password", "For the user name above."),),
    SQL: (SecretSpec("password", "Password", "For the user name above."),),
    MAILBOX: (SecretSpec("password", "Password", "For the user name above."),),
    MCP: (
        SecretSpec("token", "Bearer token", "Streamable HTTP: sent as Authorization: Bearer … (optional)."),
        SecretSpec(
            "headers",
            "Extra headers",
            "Streamable HTTP: headers sent with every request and kept secret, e.g. X-API-Key: … (optional). "
            "One per line, as Name: value.",
        ),
    ),
}

# Which secret each HTTP authentication method needs.
HTTP_AUTH_SECRET = {
    "bearer": "token",
    "basic": "password",
    "api_key_header": "api_key",
    "oauth2_client_credentials": "client_secret",
}


def secret_keys(kind: str) -> tuple[str, ...]:
    return tuple(spec.key for spec in SECRETS[kind])


def settings_validate(kind: str, data: Any) -> dict[str, Any]:
    """`data` as the kind's valid settings (defaults filled in), or ValidationFailed with a message per field."""
    if kind not in SETTINGS:
        raise ValidationFailed(
            f'"{kind}" is not a kind of connection.', fields={"kind": [f"One of {', '.join(KINDS)}."]}
        )
    if not isinstance(data, dict):
        raise ValidationFailed("The settings must be an object.", fields={"config": ["Must be an object."]})
    try:
        return SETTINGS[kind].model_validate(data).model_dump()
    except ValidationError as error:
        fields: dict[str, list[str]] = {}
        for problem in error.errors():
            name = ".".join(str(part) for part in problem["loc"]) or "config"
            message = str(problem["msg"]).removeprefix("Value error, ")
            # Checks across fields name the field they are about as a prefix ("username: ...").
            field, _, rest = message.partition(": ")
            if name == "config" and rest and field in SETTINGS[kind].model_fields:
                name, message = field, rest
            fields.setdefault(name, []).append(message)
        raise ValidationFailed("Some settings are not valid.", fields=fields) from None


def secrets_missing(kind: str, config: dict[str, Any], secrets: dict[str, str]) -> list[str]:
    """The keys of the secrets this configuration needs but `secrets` lacks."""
    if kind == HTTP:
        needed = HTTP_AUTH_SECRET.get(str(config.get("auth")))
        return [needed] if needed and not secrets.get(needed) else []
    if kind == MAILBOX:
        return [] if secrets.get("password") else ["password"]
    # A SQL user may sign in without a password (a server that trusts its network), so none is required.
    if kind == SMTP and config.get("username") and not secrets.get("password"):
        return ["password"]
    return []


def secrets_problems(kind: str, secrets: dict[str, str]) -> dict[str, list[str]]:
    """Secrets that are present but not usable, per secret field ("secrets.<key>"); empty when all are fine."""
    if kind == MCP and secrets.get("headers"):
        try:
            mcp_headers_parse(secrets["headers"])
        except ValueError as error:
            return {"secrets.headers": [str(error)]}
    return {}


def summary(kind: str, config: dict[str, Any]) -> str:
    """One line that says where a connection goes, for lists (never a secret)."""
    get = config.get
    if kind == HTTP:
        auth = str(get("auth", ""))
        auth_label = {"none": "no authentication", "oauth2_client_credentials": "OAuth2"}.get(auth, auth)
        return f"{get('base_url', '')} ({auth_label.replace('_', ' ')})"
    if kind == SQL:
        return f"{get('dialect')}://{get('username')}@{get('host')}:{get('port')}/{get('database')}"
    if kind == SMTP:
        return f"{get('host')}:{get('port')} ({get('security')}), from {get('from_address')}"
    if kind == MAILBOX:
        return f"{get('username')}@{get('host')}:{get('port')} / {get('folder')}"
    if kind == MCP:
        if get("transport") == "stdio":
            return f"stdio: {' '.join([str(get('command', '')), *map(str, get('args') or [])])}"[:300]
        return f"Streamable HTTP: {get('url', '')}"
    return ""
