"""Connections: named, team-owned ways to reach an outside system (an HTTP API, an SMTP server, a SQL database,
a mailbox, an MCP server), with their secrets encrypted at rest.

Who may do what is a matter of object permissions (django-guardian), never of names: the owning team's group
holds `use_connection` (steps of the team's workflows may name it); `manage_connection` lets someone change it;
admins manage every connection.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from django.conf import settings
from django.db import models
from simple_history.models import HistoricalRecords

from apps.connectors.kinds import KIND_LABELS, KINDS, summary
from apps.core.exceptions import ApplicationError
from apps.core.http import Destinations, destinations_parse
from apps.core.secrets import secret_decrypt, secret_encrypt

# How lists and pages describe secrets that were saved under a key the server no longer has.
SECRETS_UNREADABLE = "cannot be read with the server's keys: re-enter them (or restore the key)"


class Connection(models.Model):
    """One connection. `config` holds the kind's non-secret settings (validated by `apps.connectors.kinds`);
    `secrets_encrypted` is one Fernet token of a JSON object of the kind's secrets (`apps.core.secrets`), never
    a plain column, never rendered, exported or audited. `last_test_*` record the last test of the stored
    settings.
    """

    class Kind(models.TextChoices):
        HTTP = "http", KIND_LABELS["http"]
        SMTP = "smtp", KIND_LABELS["smtp"]
        SQL = "sql", KIND_LABELS["sql"]
        MAILBOX = "mailbox", KIND_LABELS["mailbox"]
        MCP = "mcp", KIND_LABELS["mcp"]

    name = models.SlugField(max_length=64, unique=True, help_text="What steps name; it cannot change.")
    label = models.CharField(max_length=150)
    description = models.TextField(blank=True)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    team = models.ForeignKey("accounts.Team", on_delete=models.PROTECT, related_name="connections")
    config = models.JSONField(default=dict)
    secrets_encrypted = models.TextField(blank=True)
    enabled = models.BooleanField(default=True)
    # Where the connection may go, set by administrators only (apps.core.http.Destinations): host names and
    # networks (empty: any public address), and ports besides the kind's own (80 and 443 for HTTP). Managers of
    # the connection see them but cannot change them: they bound what its templates and settings can reach.
    allowed_hosts = models.JSONField(default=list, blank=True)
    allowed_ports = models.JSONField(default=list, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    last_tested_at = models.DateTimeField(null=True, blank=True)
    last_test_ok = models.BooleanField(null=True, blank=True)
    last_test_message = models.TextField(blank=True)

    history = HistoricalRecords(excluded_fields=["secrets_encrypted"])

    class Meta:
        ordering = ["name"]
        permissions = [
            ("use_connection", "Name the connection in steps"),
            ("manage_connection", "Change the connection's settings and secrets"),
        ]
        constraints = [
            models.CheckConstraint(condition=models.Q(kind__in=list(KINDS)), name="connection_kind_known"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def secrets(self) -> dict[str, str]:
        """The decrypted secrets (raises ApplicationError when no configured key decrypts them)."""
        if not self.secrets_encrypted:
            return {}
        value = json.loads(secret_decrypt(self.secrets_encrypted))
        return {str(key): str(item) for key, item in value.items()} if isinstance(value, dict) else {}

    @secrets.setter
    def secrets(self, value: dict[str, str]) -> None:
        kept = {key: item for key, item in value.items() if item}
        self.secrets_encrypted = secret_encrypt(json.dumps(kept, sort_keys=True)) if kept else ""

    def destinations(self) -> Destinations:
        """The administrator's allowlists as the outbound door applies them (stored entries were validated)."""
        return destinations_parse(self.allowed_hosts or [], self.allowed_ports or [])[0]

    def secret_keys_set(self) -> set[str] | None:
        """Which secrets are set (for "set" / "not set"), never their values. None when no configured key reads
        them (saved under a key since dropped): lists and pages say so rather than fail, an admin re-enters them,
        and steps keep failing with the reason (`apps.connectors.runtime.connection_for_step`).

        Remembered for the stored ciphertext it was read from: a list row, its serializer fields and its form all
        ask, and only the names are kept, never a value."""
        remembered = self.__dict__.get("_secret_keys")
        if remembered is not None and remembered[0] == self.secrets_encrypted:
            return None if remembered[1] is None else set(remembered[1])
        try:
            names: frozenset[str] | None = frozenset(self.secrets)
        except ApplicationError:
            names = None
        self.__dict__["_secret_keys"] = (self.secrets_encrypted, names)
        return None if names is None else set(names)

    def readable_secrets(self) -> dict[str, str]:
        """The decrypted secrets, or {} when no configured key reads them: what a change starts from, so entering
        them again replaces what cannot be read (and a change that enters none leaves it stored as it was)."""
        try:
            return self.secrets
        except ApplicationError:
            return {}

    @property
    def secrets_version(self) -> str:
        """Changes whenever the secrets or settings change (and on re-encryption): keys caches of what was
        derived from them (an OAuth2 access token), so a replaced secret is never answered from a cache."""
        material = json.dumps(self.config, sort_keys=True) + "\x00" + self.secrets_encrypted
        return hashlib.sha256(material.encode()).hexdigest()[:16]

    @property
    def summary(self) -> str:
        return summary(self.kind, self.config)

    def public(self) -> dict[str, Any]:
        """What anyone who may use the connection may read: name, kind, description and the settings."""
        return {
            "name": self.name,
            "label": self.label,
            "kind": self.kind,
            "description": self.description,
            "config": dict(self.config),
        }


# --- OpenAPI documents of HTTP connections (apps/connectors/openapi.py parses and stores them) ---------------


class OpenApiDocument(models.Model):
    """The OpenAPI document an HTTP connection describes its API with, as parsed when it was loaded: where it
    came from (a path under the base URL, or an uploaded file), its title and versions, and a hash of the
    text. Its operations are `OpenApiOperation` rows. Kept apart from `Connection`, so the rows every step run
    reads stay small; deleted with the connection."""

    class Source(models.TextChoices):
        URL = "url", "Fetched from the API"
        FILE = "file", "Uploaded file"

    connection = models.OneToOneField(Connection, on_delete=models.CASCADE, related_name="openapi_document")
    source_kind = models.CharField(max_length=8, choices=Source.choices)
    source = models.CharField(max_length=500, help_text="The path under the base URL, or the file's name.")
    title = models.CharField(max_length=300, blank=True)
    api_version = models.CharField(max_length=100, blank=True)
    openapi_version = models.CharField(max_length=20)
    sha256 = models.CharField(max_length=64)
    size_bytes = models.PositiveIntegerField()
    notes = models.JSONField(
        default=list, blank=True, help_text="What the step cannot use (skipped operations), and the servers named."
    )
    loaded_at = models.DateTimeField()
    loaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    def __str__(self) -> str:
        return f"{self.connection.name}: {self.title or 'OpenAPI document'}"


class OpenApiOperation(models.Model):
    """One operation of a connection's OpenAPI document, with its `$ref`s resolved: what `http.request` steps
    name (`operation_id`: the document's operationId, or "METHOD /path" when it has none) and what they build
    a request from. `spec` holds the parameters (name, in, required, description, JSON Schema) and the request
    body (content type, required, JSON Schema), as `apps.connectors.openapi.Operation` describes."""

    document = models.ForeignKey(OpenApiDocument, on_delete=models.CASCADE, related_name="operations")
    position = models.PositiveIntegerField()
    operation_id = models.CharField(max_length=300)
    method = models.CharField(max_length=8)
    path = models.CharField(max_length=1000)
    summary = models.CharField(max_length=500, blank=True)
    spec = models.JSONField(default=dict)

    class Meta:
        ordering = ["document", "position"]
        constraints = [
            models.UniqueConstraint(fields=["document", "operation_id"], name="openapi_operation_id_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.method} {self.path}"
