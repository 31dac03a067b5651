"""Writes about connections: create, change (settings, team, secrets), enable and disable, test, delete, and
re-encrypt every secret with the newest key. Every change is audited in the same transaction; the audit says
which secret was set, replaced or removed, never its value.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from django.apps import apps as django_apps
from django.contrib.contenttypes.models import ContentType
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone
from guardian.shortcuts import assign_perm, remove_perm
from guardian.utils import get_group_obj_perms_model, get_user_obj_perms_model

from apps.accounts.models import Team, User
from apps.audit.services import audit_record
from apps.connectors import kinds
from apps.connectors.forms import LABELS
from apps.connectors.models import SECRETS_UNREADABLE, Connection
from apps.connectors.probes import ProbeResult
from apps.connectors.rules import USE, user_creates_connections, user_is_admin, user_manages_connection
from apps.core.exceptions import ApplicationError, Conflict, Forbidden, Unprocessable, ValidationFailed
from apps.core.http import Destinations, destinations_parse
from apps.core.secrets import encrypted_fields, secret_rotate

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
# Words the connection pages use in their addresses (/connections/new/, /connections/teams/...).
RESERVED_NAMES = {"new", "teams"}
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _require_manager(actor: User | None, connection: Connection) -> None:
    if actor is not None and not user_manages_connection(actor, connection):
        raise Forbidden(f'You may not change the connection "{connection.name}".')


def secrets_merge(kind: str, current: dict[str, str], changes: dict[str, str | None]) -> dict[str, str]:
    """`current` with `changes` applied: a value replaces, None or "" keeps the current one (a write-only
    field left blank), and the key "<name>:remove" set to anything truthy removes it. Unknown keys are errors."""
    allowed = set(kinds.secret_keys(kind))
    merged = dict(current)
    unknown = []
    broken: dict[str, list[str]] = {}
    for key, value in changes.items():
        base, _, remove = key.partition(":")
        if base not in allowed or (remove and remove != "remove"):
            unknown.append(key)
        elif remove:
            if value:
                merged.pop(base, None)
        elif value:
            if _CONTROL_CHARACTER.search(str(value)):
                # A line break would end a header or a protocol command early; the libraries that refuse it
                # quote the value in their error, so it is refused here, before it is stored or sent.
                broken[f"secrets.{base}"] = ["Must be one line without control characters (a pasted line break?)."]
            merged[base] = str(value)
    if unknown:
        raise ValidationFailed(
            "Unknown secrets.", fields={"secrets": [f"{kind} connections keep only: {', '.join(sorted(allowed))}."]}
        )
    if broken:
        raise ValidationFailed("A secret is not valid.", fields=broken)
    return merged


def _check_secrets(kind: str, config: dict[str, Any], secrets: dict[str, str], *, unreadable: bool = False) -> None:
    """Refuse secrets that are malformed or missing for `config`, per field. `unreadable`: the stored ones cannot
    be read with the server's keys, which is why one is missing, and the message says so."""
    problems = kinds.secrets_problems(kind, secrets)
    if problems:
        raise ValidationFailed("A secret is not valid.", fields=problems)
    missing = kinds.secrets_missing(kind, config, secrets)
    if missing:
        labels = {spec.key: spec.label for spec in kinds.SECRETS[kind]}
        why = " The stored one cannot be read with the server's keys: enter it again." if unreadable else ""
        raise ValidationFailed(
            "A secret is missing.",
            fields={f"secrets.{key}": [f"{labels[key]} is needed for these settings.{why}"] for key in missing},
        )


# The settings that say where a connection's secrets are sent (and whether over TLS). When one changes, the
# stored secrets are not kept: a person who may manage the connection but never saw its password must not be able
# to point it at a server of theirs and have the stored password delivered there.
ADDRESS_SETTINGS: dict[str, tuple[str, ...]] = {
    kinds.HTTP: ("base_url", "token_url"),
    kinds.SMTP: ("host", "port", "security"),
    kinds.SQL: ("host", "port", "dialect"),
    kinds.MAILBOX: ("host", "port", "ssl"),
    kinds.MCP: ("transport", "url", "command"),
}


def _starts_a_program(kind: str, config: dict[str, Any] | None) -> bool:
    return kind == kinds.MCP and bool(config) and (config or {}).get("transport") == "stdio"


def _check_program_rights(
    actor: User | None, kind: str, *, config: dict[str, Any] | None, stored_config: dict[str, Any] | None
) -> None:
    """Only admins set up, change or try out an MCP connection that starts a program (stdio): the program runs on
    the workers (and, when tested, on the web server) with their rights. Others are refused under the transport
    field. Testing a stored stdio connection unchanged stays with its managers: the program is the admin's."""
    if actor is None or user_is_admin(actor):
        return
    if not (_starts_a_program(kind, config) or _starts_a_program(kind, stored_config)):
        return
    raise ValidationFailed(
        "Only admins set up connections that start a program.",
        fields={
            "transport": [
                "Only admins may create or change an MCP connection that starts a program (stdio): it runs on the "
                "workers with their rights. Ask an admin, or use a Streamable HTTP server."
            ]
        },
    )


def address_changes(kind: str, before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The address settings that differ between `before` and `after` (both validated settings)."""
    return [key for key in ADDRESS_SETTINGS[kind] if before.get(key) != after.get(key)]


def _secrets_used(kind: str, config: dict[str, Any]) -> set[str]:
    if kind == kinds.HTTP:
        used = kinds.HTTP_AUTH_SECRET.get(str(config.get("auth")))
        return {used} if used else set()
    return set(kinds.secret_keys(kind))


def secrets_for_settings(
    kind: str,
    *,
    stored_config: dict[str, Any] | None,
    stored_secrets: dict[str, str],
    config: dict[str, Any],
    changes: dict[str, str | None],
) -> dict[str, str]:
    """The secrets to use with settings `config`: the stored ones with `changes` applied (secrets_merge), unless
    an address setting differs from `stored_config` (None: a new connection). Then no stored secret is kept, and
    each one the new settings use that was stored (and not removed) or is required must be entered again:
    ValidationFailed per secret field, saying why. Used for both the test and the save."""
    moved = address_changes(kind, stored_config, config) if stored_config is not None else []
    if not moved:
        return secrets_merge(kind, stored_secrets, changes)
    merged = secrets_merge(kind, {}, changes)
    removed = {key.partition(":")[0] for key, value in changes.items() if key.endswith(":remove") and value}
    again = set(kinds.secrets_missing(kind, config, merged)) | {
        key for key in _secrets_used(kind, config) if key in stored_secrets and key not in removed
    }
    again -= set(merged)
    if again:
        labels = {spec.key: spec.label for spec in kinds.SECRETS[kind]}
        where = ", ".join(LABELS.get(key, key) for key in moved)
        raise ValidationFailed(
            "Enter the secrets again: the address changed.",
            fields={
                f"secrets.{key}": [
                    f"Enter the {labels[key].lower()} again: the {where} changed, and a stored secret is only sent "
                    "to the address it was entered for."
                ]
                for key in sorted(again)
            },
        )
    return merged


def allowlists_clean(
    actor: User | None,
    *,
    hosts: list[str] | None,
    ports: Sequence[int | str] | None,
    stored: tuple[list[str], list[int]] = ([], []),
) -> tuple[list[str], list[int], Destinations] | None:
    """The allowlists an administrator entered (None when neither was given, or they equal `stored`): validated
    (ValidationFailed per field) and normalised. Only admins change them (Forbidden otherwise, a field error):
    they bound where a connection's settings and steps' templates can send requests, so a manager of the
    connection, who chooses those, must not also widen them."""
    if hosts is None and ports is None:
        return None
    destinations, problems = destinations_parse(
        hosts if hosts is not None else stored[0], ports if ports is not None else stored[1]
    )
    if problems:
        raise ValidationFailed("The allowed destinations are not valid.", fields=problems)
    clean_hosts = [*destinations.hosts, *(str(network) for network in destinations.networks)]
    clean_ports = sorted(destinations.ports)
    if (clean_hosts, clean_ports) == (list(stored[0]), list(stored[1])):
        return None
    if actor is not None and not user_is_admin(actor):
        raise ValidationFailed(
            "Only admins change where a connection may go.",
            fields={"allowed_hosts": ["Only admins change the allowed destinations and ports of a connection."]},
        )
    return clean_hosts, clean_ports, destinations


def _secrets_diff(before: dict[str, str], after: dict[str, str]) -> dict[str, list[str]]:
    """Which secrets were set, replaced or removed: names only."""
    diff = {
        "secrets_set": sorted(set(after) - set(before)),
        "secrets_replaced": sorted(key for key in set(after) & set(before) if after[key] != before[key]),
        "secrets_removed": sorted(set(before) - set(after)),
    }
    return {key: value for key, value in diff.items() if value}


def _record_test(connection: Connection, result: ProbeResult | None) -> None:
    if result is None:
        return
    connection.last_tested_at = timezone.now()
    connection.last_test_ok = result.ok
    connection.last_test_message = result.message[:2000]


def _check_new(name: str, label: str) -> None:
    """A new connection's name and label, refused per field."""
    fields: dict[str, list[str]] = {}
    if name in RESERVED_NAMES:
        fields["name"] = [f'"{name}" is a word the pages use in addresses; choose another name.']
    elif not _NAME.match(name or ""):
        fields["name"] = ["Lower-case letters, digits, - and _ only, starting with a letter or digit (at most 64)."]
    elif Connection.objects.filter(name=name).exists():
        fields["name"] = [f'A connection named "{name}" already exists.']
    if not (label or "").strip():
        fields["label"] = ["Give the connection a label people recognise."]
    if fields:
        raise ValidationFailed("The connection cannot be saved.", fields=fields)


@transaction.atomic
def connection_create(
    *,
    actor: User | None,
    name: str,
    label: str,
    kind: str,
    team: Team,
    config: dict[str, Any],
    secrets: dict[str, str | None] | None = None,
    description: str = "",
    enabled: bool = True,
    test: ProbeResult | None = None,
    allowed_hosts: list[str] | None = None,
    allowed_ports: Sequence[int | str] | None = None,
) -> Connection:
    """Create a connection owned by `team`, whose group gets `use_connection` on it. `config` is validated for
    `kind`; `secrets` must hold what the settings need (e.g. the password of a SQL connection). `test` is the
    result of testing these settings before saving, recorded as the connection's last test. `allowed_hosts` and
    `allowed_ports` limit and widen where it may go (apps.core.http.Destinations). Admins only."""
    if actor is not None and not user_creates_connections(actor):
        raise Forbidden("Only admins create connections.")
    _check_new(name, label)
    allowlists = allowlists_clean(actor, hosts=allowed_hosts, ports=allowed_ports)
    valid = kinds.settings_validate(kind, config)
    merged = secrets_merge(kind, {}, secrets or {})
    _check_secrets(kind, valid, merged)
    connection = Connection(
        name=name,
        label=label.strip(),
        description=description,
        kind=kind,
        team=team,
        config=valid,
        enabled=enabled,
        created_by=actor if actor is not None and actor.is_authenticated else None,
    )
    if allowlists is not None:
        connection.allowed_hosts, connection.allowed_ports = allowlists[0], allowlists[1]
    connection.secrets = merged
    _record_test(connection, test)
    connection.save()
    assign_perm(USE, team.group, connection)
    audit_record(
        actor=actor,
        verb="connection.created",
        target=connection,
        data={
            "kind": kind,
            "team": team.slug,
            "label": connection.label,
            "config": valid,
            "enabled": enabled,
            **(
                {"allowed_hosts": connection.allowed_hosts, "allowed_ports": connection.allowed_ports}
                if allowlists is not None
                else {}
            ),
            "secrets_set": sorted(merged),
            **({"test_ok": test.ok} if test else {}),
        },
    )
    return connection


@transaction.atomic
def connection_update(
    *,
    actor: User | None,
    connection: Connection,
    label: str | None = None,
    description: str | None = None,
    team: Team | None = None,
    config: dict[str, Any] | None = None,
    secrets: dict[str, str | None] | None = None,
    test: ProbeResult | None = None,
    allowed_hosts: list[str] | None = None,
    allowed_ports: Sequence[int | str] | None = None,
) -> Connection:
    """Change a connection's settings, team, secrets or (admins only) allowed destinations and ports (None:
    unchanged; a blank secret keeps the stored one). Moving it to another team moves the team's use permission
    with it. Audited with the changed settings, the allowlists before and after, and the names of the changed
    secrets."""
    _require_manager(actor, connection)
    locked = Connection.objects.select_for_update().get(pk=connection.pk)
    _check_program_rights(actor, locked.kind, config=config, stored_config=locked.config)
    changed: dict[str, Any] = {}
    allowlists = allowlists_clean(
        actor,
        hosts=allowed_hosts,
        ports=allowed_ports,
        stored=(list(locked.allowed_hosts or []), list(locked.allowed_ports or [])),
    )
    if allowlists is not None:
        changed["allowlists"] = {
            "before": {"hosts": locked.allowed_hosts, "ports": locked.allowed_ports},
            "after": {"hosts": allowlists[0], "ports": allowlists[1]},
        }
        locked.allowed_hosts, locked.allowed_ports = allowlists[0], allowlists[1]
    if label is not None:
        if not label.strip():
            raise ValidationFailed("The connection cannot be saved.", fields={"label": ["A label is needed."]})
        if label.strip() != locked.label:
            changed["label"] = locked.label = label.strip()
    if description is not None and description != locked.description:
        changed["description"] = locked.description = description
    stored_config = dict(locked.config)
    if config is not None:
        valid = kinds.settings_validate(locked.kind, config)
        config_changes = {key: value for key, value in valid.items() if locked.config.get(key) != value}
        if config_changes:
            changed["config"] = config_changes
            locked.config = valid
    # Secrets saved under a key since dropped start as none: what is entered replaces them, and a change that
    # enters none leaves them stored as they are (the key may come back).
    before = locked.readable_secrets()
    after = secrets_for_settings(
        locked.kind, stored_config=stored_config, stored_secrets=before, config=locked.config, changes=secrets or {}
    )
    _check_secrets(locked.kind, locked.config, after, unreadable=locked.secret_keys_set() is None)
    secret_changes = _secrets_diff(before, after)
    if secret_changes:
        locked.secrets = after
    old_team = locked.team
    if team is not None and team.pk != locked.team_id:
        changed["team"] = team.slug
        locked.team = team
    if not changed and not secret_changes and test is None:
        return locked
    _record_test(locked, test)
    locked.save()
    if "team" in changed:
        remove_perm(USE, old_team.group, locked)
        assign_perm(USE, locked.team.group, locked)
    if changed or secret_changes:
        audit_record(
            actor=actor,
            verb="connection.changed",
            target=locked,
            data={"fields": changed, **secret_changes, **({"test_ok": test.ok} if test else {})},
        )
    return locked


class ConnectionTestFailed(Unprocessable):
    """Testing the settings before saving failed and saving anyway was not asked for: nothing was saved.
    `result` is the test's outcome (the server's reason in its message)."""

    def __init__(self, result: ProbeResult) -> None:
        super().__init__(
            f"Nothing was saved because the test failed: {result.message}",
            extra={"test": {"ok": result.ok, "message": result.message, "seconds": result.seconds}},
        )
        self.result = result


def connection_save(
    *,
    actor: User | None,
    connection: Connection | None,
    kind: str,
    config: dict[str, Any] | None,
    secrets: dict[str, str | None] | None,
    name: str = "",
    label: str | None = None,
    description: str | None = None,
    team: Team | None = None,
    enabled: bool = True,
    test: bool = True,
    save_even_if_test_fails: bool = False,
    allowed_hosts: list[str] | None = None,
    allowed_ports: Sequence[int | str] | None = None,
) -> tuple[Connection, ProbeResult | None]:
    """Create (`connection` None) or change a connection, testing the resulting settings for real first when
    `test`: a failed test saves nothing (ConnectionTestFailed, 422, with the server's reason; the attempt is
    audited) unless `save_even_if_test_fails`. The test runs outside any transaction; the result is recorded as
    the connection's last test. Changing where the connection goes requires its secrets again
    (`secrets_for_settings`), for the test as for the save. Used by the pages and the API alike."""
    from apps.connectors.probes import probe

    if connection is None:
        if actor is not None and not user_creates_connections(actor):
            raise Forbidden("Only admins create connections.")
        _check_new(name, label or "")
        if team is None:
            raise ValidationFailed("The connection cannot be saved.", fields={"team": ["Choose the owning team."]})
    else:
        _require_manager(actor, connection)
        kind = connection.kind
    _check_program_rights(
        actor, kind, config=config, stored_config=connection.config if connection is not None else None
    )
    valid = kinds.settings_validate(kind, config if config is not None else connection.config if connection else {})
    candidate = secrets_for_settings(
        kind,
        stored_config=connection.config if connection is not None else None,
        stored_secrets=connection.readable_secrets() if connection is not None else {},
        config=valid,
        changes=secrets or {},
    )
    _check_secrets(kind, valid, candidate, unreadable=connection is not None and connection.secret_keys_set() is None)
    stored = (list(connection.allowed_hosts or []), list(connection.allowed_ports or [])) if connection else ([], [])
    allowlists = allowlists_clean(actor, hosts=allowed_hosts, ports=allowed_ports, stored=stored)
    # The test goes where the saved connection would: within the allowlists being saved, or the stored ones.
    destinations = allowlists[2] if allowlists is not None else connection.destinations() if connection else None
    result = probe(kind, valid, candidate, destinations=destinations) if test else None
    if result is not None and not result.ok and not save_even_if_test_fails:
        with transaction.atomic():
            audit_record(
                actor=actor,
                verb="connection.tested",
                target=connection,
                data={"ok": False, "message": result.message[:500], "unsaved": True, "kind": kind},
            )
        raise ConnectionTestFailed(result)
    if connection is None:
        assert team is not None
        saved = connection_create(
            actor=actor,
            name=name,
            label=label or "",
            description=description or "",
            kind=kind,
            team=team,
            config=valid,
            secrets=secrets,
            enabled=enabled,
            test=result,
            allowed_hosts=allowed_hosts,
            allowed_ports=allowed_ports,
        )
    else:
        saved = connection_update(
            actor=actor,
            connection=connection,
            label=label,
            description=description,
            team=team,
            config=valid if config is not None else None,
            secrets=secrets,
            test=result,
            allowed_hosts=allowed_hosts,
            allowed_ports=allowed_ports,
        )
    return saved, result


@transaction.atomic
def connection_set_enabled(*, actor: User | None, connection: Connection, enabled: bool) -> Connection:
    """Enable or disable a connection. Steps that name a disabled connection fail with a clear error."""
    _require_manager(actor, connection)
    updated = (
        Connection.objects.filter(pk=connection.pk)
        .exclude(enabled=enabled)
        .update(enabled=enabled, updated_at=timezone.now())
    )
    connection.enabled = enabled
    if updated:
        audit_record(actor=actor, verb="connection.enabled" if enabled else "connection.disabled", target=connection)
    return connection


def workflows_naming(name: str) -> list[str]:
    """The names of the workflows whose published versions name connection `name` in a step's `connection`
    setting, or in the `connection` of the step an agent's tool runs (`config.tools[].step`): every step type names
    its connection there (StepType.uses). The workflows app sits above this one, so its table is read by model
    name, not imported."""
    version_model = django_apps.get_model("workflows", "WorkflowVersion")
    in_step = Q(graph__steps__contains=[{"config": {"connection": name}}])
    in_tool = Q(graph__steps__contains=[{"config": {"tools": [{"step": {"config": {"connection": name}}}]}}])
    versions: QuerySet[Any] = version_model.objects.filter(in_step | in_tool, state="published")
    return sorted(set(versions.values_list("workflow__name", flat=True)))


def triggers_reading(name: str) -> list[dict[str, str]]:
    """The email triggers that read mailbox connection `name` and are not paused, as {"trigger", "workflow"} names,
    by workflow. A paused one reads nothing until it is resumed, and then reports a missing connection itself. The
    triggers live in the workflows app, above this one: read by model name, not imported."""
    trigger_model = django_apps.get_model("workflows", "Trigger")
    triggers: QuerySet[Any] = trigger_model.objects.filter(kind="email", enabled=True, config__connection=name)
    return [
        {"trigger": trigger, "workflow": workflow}
        for trigger, workflow in triggers.order_by("workflow__name", "name").values_list("name", "workflow__name")
    ]


def _triggers_text(triggers: list[dict[str, str]]) -> str:
    return ", ".join(f'the email trigger "{row["trigger"]}" of workflow "{row["workflow"]}"' for row in triggers)


@transaction.atomic
def connection_delete(*, actor: User | None, connection: Connection) -> None:
    """Delete a connection, unless a published version names it (their runs would fail) or an email trigger that
    is not paused reads it (its mail would stop arriving): refused, naming those workflows and triggers."""
    _require_manager(actor, connection)
    naming = workflows_naming(connection.name)
    reading = triggers_reading(connection.name)
    if naming or reading:
        reasons = []
        if naming:
            reasons.append(
                f'The connection "{connection.name}" is named by published versions of: {", ".join(naming)}. '
                "Disable it instead, or publish versions that do not name it first."
            )
        if reading:
            them = "it" if len(reading) == 1 else "them"
            reasons.append(
                f'The connection "{connection.name}" is read by {_triggers_text(reading)}: pause or delete {them} '
                "first."
            )
        raise Conflict(
            " ".join(reasons),
            extra={**({"workflows": naming} if naming else {}), **({"triggers": reading} if reading else {})},
        )
    audit_record(
        actor=actor,
        verb="connection.deleted",
        target=connection,
        data={"kind": connection.kind, "team": connection.team.slug},
    )
    # Object permissions are generic rows that no foreign key removes with the object.
    content_type = ContentType.objects.get_for_model(Connection)
    for model in (get_user_obj_perms_model(), get_group_obj_perms_model()):
        model._default_manager.filter(content_type=content_type, object_pk=str(connection.pk)).delete()
    connection.delete()


def connection_test(*, actor: User | None, connection: Connection) -> ProbeResult:
    """Test the stored settings for real (a request, a session, a login) and record the outcome. The attempt
    happens outside any transaction; only the test fields are written afterwards."""
    from apps.connectors.probes import probe

    _require_manager(actor, connection)
    try:
        secrets = connection.secrets
    except ApplicationError:
        result = ProbeResult(ok=False, message=f"Not tested: the stored secrets {SECRETS_UNREADABLE}.")
    else:
        result = probe(connection.kind, connection.config, secrets, destinations=connection.destinations())
    with transaction.atomic():
        fields = {
            "last_tested_at": timezone.now(),
            "last_test_ok": result.ok,
            "last_test_message": result.message[:2000],
        }
        Connection.objects.filter(pk=connection.pk).update(**fields)
        for key, value in fields.items():
            setattr(connection, key, value)
        audit_record(
            actor=actor,
            verb="connection.tested",
            target=connection,
            data={"ok": result.ok, "message": result.message[:500]},
        )
    return result


def connection_test_unsaved(
    *, actor: User | None, kind: str, config: dict[str, Any], secrets: dict[str, str], connection: Connection | None
) -> ProbeResult:
    """Test settings a person has entered but not saved (of `connection`, or of a new one); audited, not
    recorded as the connection's last test (the stored settings may differ)."""
    from apps.connectors.probes import probe

    if connection is not None:
        _require_manager(actor, connection)
    elif actor is not None and not user_creates_connections(actor):
        raise Forbidden("Only admins create connections.")
    try:
        if connection is None or config != connection.config:
            _check_program_rights(
                actor, kind, config=config, stored_config=connection.config if connection is not None else None
            )
    except ValidationFailed as refusal:
        # Nothing is started: the refusal is the test's answer, under the button like any other.
        return ProbeResult(ok=False, message=" ".join(refusal.fields["transport"]))
    result = probe(kind, config, secrets, destinations=connection.destinations() if connection is not None else None)
    audit_record(
        actor=actor,
        verb="connection.tested",
        target=connection,
        data={"ok": result.ok, "message": result.message[:500], "unsaved": True, "kind": kind},
    )
    return result


def credentials_rotate() -> dict[str, int]:
    """Re-encrypt every stored secret with the first configured key: every column registered with
    apps.core.secrets.register_encrypted_field (connection secrets, model endpoint tokens, webhook signing
    secrets, and whatever an app adds later). Each row is rewritten in its own short transaction, so a large
    installation is never locked at once. Returns counts per registered column's name ({"connections": n,
    "model_endpoints": n, "webhook_secrets": n, ...}) and "failed" (rows no configured key could read; they keep
    their old form)."""
    counts = {column.name: 0 for column in encrypted_fields()}
    counts["failed"] = 0
    for column in encrypted_fields():
        model = django_apps.get_model(column.model)
        manager = model._default_manager
        for pk in manager.exclude(**{column.field: ""}).values_list("pk", flat=True):
            with transaction.atomic():
                stored = manager.select_for_update().filter(pk=pk).values_list(column.field, flat=True).first()
                if not stored:
                    continue
                try:
                    rotated = secret_rotate(stored)
                except Exception:  # counted and reported; the row keeps its old form
                    counts["failed"] += 1
                    continue
                # A plain UPDATE: the row's other fields, history and updated_at are not what changed.
                manager.filter(pk=pk).update(**{column.field: rotated})
                counts[column.name] += 1
    if any(count for name, count in counts.items() if name != "failed"):
        audit_record(actor=None, verb="credentials.rotated", data=counts)
    return counts
