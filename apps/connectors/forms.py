"""The connection form of the pages: one readable form per kind, built from the kind's settings model, with the
secrets write-only ("set" / "not set", a replace input, a remove box; blank keeps the stored value)."""

from __future__ import annotations

import ipaddress
import json
import typing
from typing import Any

from django import forms

from apps.accounts.models import Team
from apps.connectors import kinds
from apps.connectors.models import Connection
from apps.core.exceptions import ValidationFailed

LABELS = {
    "base_url": "Base URL",
    "headers": "Default headers",
    "timeout_seconds": "Timeout (seconds)",
    "test_path": "Test path",
    "auth": "Authentication",
    "username": "User name",
    "header_name": "Header name",
    "token_url": "Token URL",
    "client_id": "Client id",
    "scope": "Scope",
    "audience": "Audience",
    "token_auth_method": "Client authentication",
    "host": "Host",
    "port": "Port",
    "security": "Security",
    "from_address": "From address",
    "dialect": "Database",
    "database": "Database name",
    "statement_timeout_seconds": "Statement time limit (seconds)",
    "row_cap": "Row limit",
    "ssl": "TLS from the start (IMAPS)",
    "folder": "Folder",
    "transport": "Transport",
    "url": "Server URL",
    "command": "Program",
    "args": "Arguments",
}
CHOICE_LABELS = {
    "none": "None",
    "bearer": "Bearer token",
    "basic": "User name and password (Basic)",
    "api_key_header": "API key in a header",
    "oauth2_client_credentials": "OAuth2 client credentials",
    "client_secret_basic": "In the Authorization header (client_secret_basic)",
    "client_secret_post": "In the request body (client_secret_post)",
    "starttls": "STARTTLS (usually port 587)",
    "ssl": "TLS from the start (usually port 465)",
    "postgresql": "PostgreSQL",
    "mysql": "MySQL or MariaDB",
    "http": "Streamable HTTP (a URL)",
    "stdio": "stdio (a program; admins only)",
}
# HTTP settings that belong to one authentication method: the page groups them, and its script shows only the
# chosen method's group (without the script every group shows, and the unused ones are simply ignored).
HTTP_AUTH_GROUPS = {
    "username": "basic",
    "header_name": "api_key_header",
    "token_url": "oauth2_client_credentials",
    "client_id": "oauth2_client_credentials",
    "scope": "oauth2_client_credentials",
    "audience": "oauth2_client_credentials",
    "token_auth_method": "oauth2_client_credentials",
}


# MCP settings and secrets that belong to one transport: grouped like the HTTP authentication methods, and the
# same script shows only the chosen transport's group.
MCP_TRANSPORT_GROUPS = {"url": "http", "command": "stdio", "args": "stdio", "token": "http", "headers": "http"}


def _headers_text(headers: dict[str, str]) -> str:
    return "\n".join(f"{name}: {value}" for name, value in headers.items())


def _headers_parse(text: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise forms.ValidationError(f'Line {number}: write each header as "Name: value".')
        headers[name.strip()] = value.strip()
    return headers


def _setting_field(name: str, info: Any) -> forms.Field:
    annotation = info.annotation
    label = LABELS.get(name, name.replace("_", " ").capitalize())
    help_text = info.description or ""
    required = info.is_required()
    if typing.get_origin(annotation) is typing.Literal:
        choices = [(value, CHOICE_LABELS.get(value, value)) for value in typing.get_args(annotation)]
        return forms.ChoiceField(label=label, choices=choices, help_text=help_text)
    if annotation is bool:
        return forms.BooleanField(label=label, required=False, help_text=help_text)
    if annotation is int:
        return forms.IntegerField(label=label, required=required, help_text=help_text)
    if annotation is float:
        return forms.FloatField(label=label, required=required, help_text=help_text)
    if name == "args":
        return forms.CharField(
            label=label,
            required=False,
            widget=forms.Textarea(attrs={"rows": 3, "placeholder": "--read-only"}),
            help_text="One argument per line, passed as they are (no shell).",
        )
    if name == "headers":
        return forms.CharField(
            label=label,
            required=False,
            widget=forms.Textarea(attrs={"rows": 3, "placeholder": "Accept: application/json"}),
            help_text="One per line, as Name: value. Not secret: everyone who may use the connection sees them.",
        )
    return forms.CharField(label=label, required=required, help_text=help_text, max_length=500)


class ConnectionForm(forms.Form):
    """Name, label, description, team, the kind's settings, and its secrets. `settings_and_secrets()` gives what
    the services take; the services validate the settings again and report per field."""

    name = forms.SlugField(
        max_length=64, help_text="What steps name, e.g. erp. Lower-case letters, digits, - and _; it cannot change."
    )
    label = forms.CharField(max_length=150, help_text="What people see, e.g. ERP (production).")
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))
    team = forms.ModelChoiceField(
        queryset=Team.objects.none(), help_text="The team that owns it; its members may use it in their workflows."
    )
    save_anyway = forms.BooleanField(required=False, label="Save even though the test failed")

    def __init__(
        self,
        data: Any = None,
        *,
        kind: str,
        connection: Connection | None = None,
        initial: dict[str, Any] | None = None,
        admin: bool = False,
    ) -> None:
        self.kind = kind
        self.connection = connection
        initial = dict(initial or {})
        if connection is not None:
            initial = {
                "name": connection.name,
                "label": connection.label,
                "description": connection.description,
                "team": connection.team_id,
                **{key: value for key, value in connection.config.items() if key != "headers"},
                "headers": _headers_text(connection.config.get("headers", {})),
            }
        else:
            defaults = {name: info.default for name, info in kinds.SETTINGS[kind].model_fields.items()}
            initial = {**{k: v for k, v in defaults.items() if isinstance(v, str | int | float | bool)}, **initial}
        super().__init__(data, initial=initial)
        team_field = self.fields["team"]
        assert isinstance(team_field, forms.ModelChoiceField)
        team_field.queryset = Team.objects.order_by("name")
        team_field.empty_label = "Choose the owning team"
        if connection is not None:
            self.fields["name"].disabled = True
            self.fields["name"].help_text = "Steps name the connection by this, so it cannot change."
        for name, info in kinds.SETTINGS[kind].model_fields.items():
            self.fields[f"config_{name}"] = _setting_field(name, info)
            if name in initial and not (name == "port" and initial[name] == 0):
                value = initial[name]
                if isinstance(value, list):
                    value = "\n".join(str(item) for item in value)
                # 30.0 reads as 30 in a form.
                self.initial[f"config_{name}"] = (
                    int(value) if isinstance(value, float) and value.is_integer() else value
                )
        # Every kind reaches a network service (MCP over stdio ignores them): where it may go is the admin's.
        self._add_allowlist_fields(connection, admin=admin)
        self.secret_specs = kinds.SECRETS[kind]
        stored = connection.secret_keys_set() if connection is not None else set()
        # Saved under a key the server no longer has: shown as such, and re-entering them replaces them.
        self.secrets_unreadable = stored is None
        self.secret_state = {spec.key: spec.key in (stored or set()) for spec in self.secret_specs}
        for spec in self.secret_specs:
            self.fields[f"secret_{spec.key}"] = forms.CharField(
                label=spec.label,
                required=False,
                strip=False,
                widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
                help_text=spec.help + (" Leave empty to keep the stored value." if self.secret_state[spec.key] else ""),
            )
            if kind == kinds.MCP and spec.key == "headers":
                # Several headers, one per line: a password input holds one line only.
                self.fields["secret_headers"].widget = forms.Textarea(
                    attrs={"rows": 2, "autocomplete": "off", "spellcheck": "false", "placeholder": "X-API-Key: …"}
                )
            if self.secret_state[spec.key]:
                self.fields[f"secret_{spec.key}_remove"] = forms.BooleanField(
                    required=False, label=f"Remove the stored {spec.label.lower()}"
                )

    def _add_allowlist_fields(self, connection: Connection | None, *, admin: bool) -> None:
        """Where a connection may go: admins edit it; for a manager the fields are shown disabled (a
        disabled field keeps its stored value whatever is posted)."""
        self.fields["allowed_hosts"] = forms.CharField(
            label="Allowed destinations",
            required=False,
            widget=forms.Textarea(attrs={"rows": 3, "placeholder": "erp.example.com\n*.example.com\n10.1.2.0/24"}),
            help_text="One per line: host names (*.example.com for every name under it), or addresses and networks "
            "that are not on the public internet (an internal ERP). Empty: any public address. Admins only.",
        )
        self.fields["allowed_ports"] = forms.CharField(
            label="Allowed ports",
            required=False,
            max_length=400,
            help_text="Ports besides the protocol's own (HTTP and MCP 80, 443; SMTP 25, 465, 587; IMAP 143, "
            "993; PostgreSQL 5432; MySQL 3306), separated by commas, e.g. 8443. Admins only.",
        )
        if connection is not None:
            self.initial["allowed_hosts"] = "\n".join(connection.allowed_hosts or [])
            self.initial["allowed_ports"] = ", ".join(str(port) for port in connection.allowed_ports or [])
        if not admin:
            self.fields["allowed_hosts"].disabled = True
            self.fields["allowed_ports"].disabled = True

    def allowlists(self) -> tuple[list[str] | None, list[str] | None]:
        """The allowlists as the services take them (None for a kind without them)."""
        if "allowed_hosts" not in self.fields:
            return None, None
        hosts = [line.strip() for line in (self.cleaned_data.get("allowed_hosts") or "").splitlines()]
        ports = [part.strip() for part in (self.cleaned_data.get("allowed_ports") or "").split(",")]
        return [host for host in hosts if host], [port for port in ports if port]

    def allowlist_fields(self) -> list[forms.BoundField]:
        return [self[name] for name in ("allowed_hosts", "allowed_ports") if name in self.fields]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if self.kind == kinds.MAILBOX and "config_ssl" in cleaned and not cleaned["config_ssl"]:
            host = str(cleaned.get("config_host") or "")
            try:
                literal = ipaddress.ip_address(host.strip("[]"))
            except ValueError:
                literal = None  # a name: what it resolves to is checked when connecting
            if literal is not None and not literal.is_loopback:
                self.add_error(
                    "config_ssl",
                    f"Turn this on: {host} is not this machine, and without TLS the mailbox's password would travel "
                    "unencrypted.",
                )
        return cleaned

    def clean_config_headers(self) -> dict[str, str]:
        return _headers_parse(self.cleaned_data.get("config_headers") or "")

    def clean_config_args(self) -> list[str]:
        return [line.strip() for line in (self.cleaned_data.get("config_args") or "").splitlines() if line.strip()]

    def clean_secret_headers(self) -> str:
        """An MCP connection's extra headers, stored as one line of JSON (a secret holds no line breaks)."""
        text = self.cleaned_data.get("secret_headers") or ""
        if self.kind != kinds.MCP or not text.strip():
            return text
        try:
            return json.dumps(kinds.mcp_headers_parse(text), separators=(",", ":"))
        except ValueError as error:
            raise forms.ValidationError(str(error)) from None

    def settings_and_secrets(self) -> tuple[dict[str, Any], dict[str, str | None]]:
        """The settings (as the kind's model names them) and the secret changes (blank: keep; remove boxes)."""
        config = {
            name: self.cleaned_data.get(f"config_{name}")
            for name in kinds.SETTINGS[self.kind].model_fields
            if self.cleaned_data.get(f"config_{name}") is not None
        }
        secrets: dict[str, str | None] = {}
        for spec in self.secret_specs:
            secrets[spec.key] = self.cleaned_data.get(f"secret_{spec.key}") or None
            if self.cleaned_data.get(f"secret_{spec.key}_remove"):
                secrets[f"{spec.key}:remove"] = "yes"
        return config, secrets

    def add_refusal(self, refusal: ValidationFailed) -> None:
        """Show a service's per-field refusal under the fields it names."""
        for name, messages in refusal.fields.items():
            target = name if name in self.fields else f"config_{name}" if f"config_{name}" in self.fields else None
            if name.startswith("secrets."):
                target = f"secret_{name.split('.', 1)[1]}"
            for message in messages:
                self.add_error(target if target in self.fields else None, message)

    def setting_fields(self) -> list[tuple[forms.BoundField, str]]:
        """The settings' bound fields with the authentication method each belongs to ("" for all)."""
        result = []
        for name in kinds.SETTINGS[self.kind].model_fields:
            group = HTTP_AUTH_GROUPS.get(name, "") if self.kind == kinds.HTTP else ""
            if self.kind == kinds.MCP:
                group = MCP_TRANSPORT_GROUPS.get(name, "")
            result.append((self[f"config_{name}"], group))
        return result

    def secret_fields(self) -> list[dict[str, Any]]:
        """Per secret: its input, whether one is stored, its remove box, and the authentication method it
        belongs to (HTTP)."""
        groups = {secret: method for method, secret in kinds.HTTP_AUTH_SECRET.items()}
        return [
            {
                "field": self[f"secret_{spec.key}"],
                "is_set": self.secret_state[spec.key],
                "remove": self[f"secret_{spec.key}_remove"] if self.secret_state[spec.key] else None,
                "group": groups.get(spec.key, "")
                if self.kind == kinds.HTTP
                else MCP_TRANSPORT_GROUPS.get(spec.key, "")
                if self.kind == kinds.MCP
                else "",
            }
            for spec in self.secret_specs
        ]


# --- OpenAPI documents (apps/connectors/openapi.py) -----------------------------------------------------------


class OpenApiFetchForm(forms.Form):
    """Where under the connection's base URL its OpenAPI document is served."""

    path = forms.CharField(
        max_length=500,
        label="Path of the document",
        help_text="Under the connection's base URL, e.g. /openapi.json. Fetched with the connection's headers and "
        "authentication.",
    )


class OpenApiUploadForm(forms.Form):
    """An OpenAPI document as a file."""

    document = forms.FileField(
        label="OpenAPI file",
        help_text="OpenAPI 3.0 or 3.1, as JSON or YAML, at most 2 MB, in one file (no references to other files).",
        widget=forms.ClearableFileInput(attrs={"accept": ".json,.yaml,.yml,application/json,application/yaml"}),
    )
