"""Pages for connections: the list (all for admins; the ones a person may use for others), a team's connections,
the form per kind (test first, save only when the test passes or the person says to), the test button's
fragment, enable/disable and delete with confirmation."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from apps.accounts.models import User
from apps.connectors import kinds
from apps.connectors.forms import ConnectionForm, OpenApiFetchForm, OpenApiUploadForm
from apps.connectors.models import SECRETS_UNREADABLE, Connection, OpenApiDocument
from apps.connectors.openapi import (
    MAX_DOCUMENT_BYTES,
    openapi_document_fetch,
    openapi_document_for,
    openapi_document_load,
    openapi_document_remove,
    operations_of,
)
from apps.connectors.probes import ProbeResult
from apps.connectors.rules import user_creates_connections, user_is_admin, user_manages_connection
from apps.connectors.selectors import (
    connection_get_for_user,
    connection_history,
    connection_list_for_user,
    team_get_for_user,
    teams_for_filter,
)
from apps.connectors.services import (
    ConnectionTestFailed,
    connection_delete,
    connection_save,
    connection_set_enabled,
    connection_test,
    connection_test_unsaved,
    secrets_for_settings,
    triggers_reading,
    workflows_naming,
)
from apps.core.exceptions import ApplicationError, ValidationFailed


def _user(request: HttpRequest) -> User:
    assert isinstance(request.user, User)
    return request.user


def _kind(request: HttpRequest) -> str:
    kind = request.GET.get("kind", "")
    if kind not in kinds.KINDS:
        raise Http404("No such kind of connection.")
    return kind


def _rows(connections: Any) -> list[dict[str, Any]]:
    return [{"connection": c, "kind_label": kinds.KIND_LABELS[c.kind]} for c in connections]


@login_required
def connection_list(request: HttpRequest) -> HttpResponse:
    """Admins see every connection; others see those they may use or manage. Filter by team and kind."""
    team = request.GET.get("team") or None
    kind = request.GET.get("kind") or None
    connections = connection_list_for_user(request.user, team=team, kind=kind if kind in kinds.KINDS else None)
    return render(
        request,
        "connectors/connection_list.html",
        {
            "rows": _rows(connections),
            "teams": teams_for_filter(request.user),
            "kinds": kinds.KIND_LABELS,
            "chosen_team": team or "",
            "chosen_kind": kind or "",
            "filtered": bool(team or kind),
            "can_create": user_creates_connections(request.user),
        },
    )


@login_required
def team_connections(request: HttpRequest, slug: str) -> HttpResponse:
    """One team's connections (its members and admins; others: 404)."""
    team = team_get_for_user(request.user, slug)
    return render(
        request,
        "connectors/team_connections.html",
        {
            "team": team,
            "rows": _rows(connection_list_for_user(request.user, team=team.slug)),
            "can_create": user_creates_connections(request.user),
            "kinds": kinds.KIND_LABELS,
        },
    )


def _test_then_save(request: HttpRequest, form: ConnectionForm, connection: Connection | None) -> HttpResponse | None:
    """Validate, then `connection_save`: test the entered settings for real, and save when the test passed or
    the person ticked "save even though the test failed". Returns the redirect after a save, or None to show
    the form again (with the test's result and the reasons under the fields)."""
    if not form.is_valid():
        return None
    config, secret_changes = form.settings_and_secrets()
    allowed_hosts, allowed_ports = form.allowlists()
    try:
        saved, result = connection_save(
            actor=_user(request),
            connection=connection,
            kind=form.kind,
            name=form.cleaned_data["name"],
            label=form.cleaned_data["label"],
            description=form.cleaned_data["description"],
            team=form.cleaned_data["team"],
            config=config,
            secrets=secret_changes,
            save_even_if_test_fails=bool(form.cleaned_data.get("save_anyway")),
            allowed_hosts=allowed_hosts,
            allowed_ports=allowed_ports,
        )
    except ConnectionTestFailed as failed:
        form.test_result = failed.result  # type: ignore[attr-defined]
        form.add_error(None, "Nothing was saved because the test failed. Fix the settings, or tick the box below.")
        return None
    except ValidationFailed as refusal:
        form.add_refusal(refusal)
        return None
    note = "the test passed" if result is not None and result.ok else "the test failed, saved as asked"
    messages.success(request, f'Saved "{saved.label}" ({note}).')
    return redirect("connectors:detail", name=saved.name)


@login_required
@require_http_methods(["GET", "POST"])
def connection_new(request: HttpRequest) -> HttpResponse:
    """Admins create a connection: without `?kind=` the page asks which kind; with it, the kind's form."""
    if not user_creates_connections(request.user):
        raise PermissionDenied("Only admins create connections.")
    if "kind" not in request.GET:
        return render(request, "connectors/connection_kind.html", {"kinds": kinds.KIND_LABELS})
    kind = _kind(request)
    form = ConnectionForm(
        request.POST or None, kind=kind, initial={"team": request.GET.get("team")}, admin=user_is_admin(request.user)
    )
    if request.method == "POST":
        saved = _test_then_save(request, form, None)
        if saved is not None:
            return saved
    return render(
        request,
        "connectors/connection_form.html",
        {"form": form, "kind": kind, "kind_label": kinds.KIND_LABELS[kind], "connection": None},
        status=400 if request.method == "POST" else 200,
    )


@login_required
@require_http_methods(["GET", "POST"])
def connection_detail(request: HttpRequest, name: str) -> HttpResponse:
    """A connection: its form for those who manage it, its settings (read-only) for those who may use it, and
    its change history."""
    connection = connection_get_for_user(request.user, name)
    can_manage = user_manages_connection(request.user, connection)
    form = None
    if can_manage:
        form = ConnectionForm(
            request.POST or None, kind=connection.kind, connection=connection, admin=user_is_admin(request.user)
        )
        if request.method == "POST":
            saved = _test_then_save(request, form, connection)
            if saved is not None:
                return saved
    elif request.method == "POST":
        raise PermissionDenied("You may use this connection but not change it.")
    return render(
        request,
        "connectors/connection_detail.html",
        {
            "connection": connection,
            "kind_label": kinds.KIND_LABELS[connection.kind],
            "form": form,
            "can_manage": can_manage,
            "settings": _readable_settings(connection),
            "history": [_history_row(event) for event in connection_history(connection)] if can_manage else [],
            "openapi_document": openapi_document_for(connection) if connection.kind == kinds.HTTP else None,
        },
        status=400 if request.method == "POST" else 200,
    )


def _history_row(event: Any) -> dict[str, Any]:
    """An audit event about a connection in words: what changed (setting names), which secrets (names only)."""
    from apps.connectors.forms import LABELS

    try:
        data = json.loads(event.data or "{}")
    except ValueError:
        data = {}
    verb = str(event.verb).removeprefix("connection.")
    parts: list[str] = []
    if verb == "created":
        parts.append(f"Created for {data.get('team', 'a team')}")
    elif verb == "changed":
        fields = dict(data.get("fields", {}))
        config = fields.pop("config", {}) or {}
        names = [LABELS.get(name, name) for name in config] + [name for name in fields]
        if names:
            parts.append("Changed " + ", ".join(names))
    elif verb in ("openapi_loaded", "openapi_removed"):
        parts.append(_openapi_history_text(verb, data))
    elif verb == "tested":
        outcome = "passed" if data.get("ok") else "failed"
        parts.append(
            f"Tested ({'unsaved settings, ' if data.get('unsaved') else ''}{outcome}): {data.get('message', '')}"
        )
    else:
        parts.append(verb.capitalize())
    for key, label in (("secrets_set", "set"), ("secrets_replaced", "replaced"), ("secrets_removed", "removed")):
        if data.get(key):
            parts.append(f"secret {label}: {', '.join(data[key])}")
    return {"event": event, "text": "; ".join(parts)}


def _readable_settings(connection: Connection) -> list[tuple[str, str]]:
    """The settings as people read them, in the form's order, leaving out what the chosen authentication
    method does not use; then whether each secret the settings use is set (never its value)."""
    from apps.connectors.forms import CHOICE_LABELS, HTTP_AUTH_GROUPS, LABELS, MCP_TRANSPORT_GROUPS

    auth = connection.config.get("auth", "")
    transport = connection.config.get("transport", "")
    rows = []
    for key in kinds.SETTINGS[connection.kind].model_fields:
        if connection.kind == kinds.HTTP and HTTP_AUTH_GROUPS.get(key, auth) != auth:
            continue
        if connection.kind == kinds.MCP and MCP_TRANSPORT_GROUPS.get(key, transport) != transport:
            continue
        value = connection.config.get(key)
        if isinstance(value, list):
            text = " ".join(str(item) for item in value) or "none"
        elif key == "headers":
            text = ", ".join(f"{name}: {header}" for name, header in (value or {}).items()) or "none"
        elif isinstance(value, bool):
            text = "yes" if value else "no"
        elif isinstance(value, float) and value.is_integer():
            text = str(int(value))
        else:
            text = CHOICE_LABELS.get(str(value), str(value)) if value not in ("", None) else "—"
        rows.append((LABELS.get(key, key), text))
    stored = connection.secret_keys_set()
    used = (
        {kinds.HTTP_AUTH_SECRET.get(auth)} if connection.kind == kinds.HTTP else set(kinds.secret_keys(connection.kind))
    )
    if connection.kind == kinds.MCP and transport == "stdio":
        used = set()  # a program gets no secrets
    for spec in kinds.SECRETS[connection.kind]:
        if spec.key in used:
            state = SECRETS_UNREADABLE if stored is None else "set" if spec.key in stored else "not set"
            rows.append((spec.label, state))
    return rows


@login_required
@require_POST
def connection_test_view(request: HttpRequest, name: str | None = None) -> HttpResponse:
    """The "Test connection" button: tests what the form holds now (blank secrets: the stored ones) and answers
    with the result fragment. Without form fields, tests the stored settings and records the result."""
    connection = connection_get_for_user(request.user, name) if name else None
    if connection is not None and not user_manages_connection(request.user, connection):
        raise PermissionDenied("You may use this connection but not test or change it.")
    if connection is None and not user_creates_connections(request.user):
        raise PermissionDenied("Only admins create connections.")
    result: ProbeResult
    if connection is not None and not any(key.startswith("config_") for key in request.POST):
        result = connection_test(actor=_user(request), connection=connection)
    else:
        kind = connection.kind if connection is not None else _kind(request)
        form = ConnectionForm(request.POST, kind=kind, connection=connection)
        form.is_valid()
        problems = {name: errors for name, errors in form.errors.items() if name.startswith(("config_", "secret_"))}
        if problems:
            labels = {name: form.fields[name].label for name in problems if name in form.fields}
            text = "; ".join(
                f"{labels.get(name, name)}: {' '.join(str(error) for error in errors)}"
                for name, errors in problems.items()
            )
            result = ProbeResult(ok=False, message=f"Fix the settings first. {text}")
        else:
            config, secret_changes = form.settings_and_secrets()
            try:
                valid = kinds.settings_validate(kind, config)
                secrets = secrets_for_settings(
                    kind,
                    stored_config=connection.config if connection is not None else None,
                    stored_secrets=connection.readable_secrets() if connection is not None else {},
                    config=valid,
                    changes=secret_changes,
                )
            except ValidationFailed as refusal:
                text = "; ".join(f"{field}: {' '.join(errors)}" for field, errors in refusal.fields.items())
                result = ProbeResult(ok=False, message=f"Fix the settings first. {text}")
            else:
                result = connection_test_unsaved(
                    actor=_user(request), kind=kind, config=valid, secrets=secrets, connection=connection
                )
    if not request.htmx:  # type: ignore[attr-defined]
        level = messages.success if result.ok else messages.error
        level(request, f"Test {'passed' if result.ok else 'failed'}: {result.message}")
        return redirect(reverse("connectors:detail", args=[name]) if name else reverse("connectors:connections"))
    return render(request, "connectors/_test_result.html", {"result": result})


@login_required
@require_POST
def connection_toggle(request: HttpRequest, name: str) -> HttpResponse:
    connection = connection_get_for_user(request.user, name)
    if not user_manages_connection(request.user, connection):
        raise PermissionDenied("You may use this connection but not change it.")
    connection_set_enabled(actor=_user(request), connection=connection, enabled=not connection.enabled)
    state = "enabled: steps may use it again" if connection.enabled else "disabled: steps that name it will fail"
    messages.success(request, f'"{connection.label}" is {state}.')
    return redirect("connectors:detail", name=connection.name)


@login_required
@require_http_methods(["GET", "POST"])
def connection_delete_view(request: HttpRequest, name: str) -> HttpResponse:
    """Confirm, then delete; refused (with the workflows) while a published version names the connection or an
    email trigger that is not paused reads it."""
    connection = connection_get_for_user(request.user, name)
    if not user_manages_connection(request.user, connection):
        raise PermissionDenied("You may use this connection but not delete it.")
    if request.method == "POST":
        try:
            connection_delete(actor=_user(request), connection=connection)
        except ApplicationError as refusal:
            messages.error(request, refusal.message)
            return redirect("connectors:detail", name=connection.name)
        messages.success(request, f'Deleted the connection "{connection.label}".')
        return redirect("connectors:connections")
    return render(
        request,
        "connectors/connection_delete.html",
        {
            "connection": connection,
            "naming": workflows_naming(connection.name),
            "triggers": triggers_reading(connection.name),
        },
    )


# --- OpenAPI documents (apps/connectors/openapi.py) -----------------------------------------------------------


def _openapi_history_text(verb: str, data: dict[str, Any]) -> str:
    if verb == "openapi_removed":
        return "Removed the OpenAPI document"
    title = f'"{data.get("title")}" {data.get("api_version", "")}'.strip() if data.get("title") else "a document"
    where = "a file" if data.get("source") == "file" else data.get("location", "the API")
    return f"Loaded the OpenAPI document {title} ({data.get('operations', 0)} operations, from {where})"


def _operation_rows(connection: Connection) -> list[dict[str, Any]]:
    """The operations as the page lists them: method, path, summary, parameters and body fields in words."""
    rows = []
    for operation in operations_of(connection):
        body = operation.body
        rows.append(
            {
                "operation": operation,
                "parameters": [
                    {"name": p.name, "location": p.location, "required": p.required} for p in operation.parameters
                ],
                "body_fields": [{"name": f.name, "required": f.required} for f in body.fields()] if body else [],
                "body_text": ""
                if body is None
                else "JSON" + (" (required)" if body.required else "")
                if body.is_json
                else body.content_type,
            }
        )
    return rows


@login_required
@require_http_methods(["GET", "POST"])
def connection_openapi(request: HttpRequest, name: str) -> HttpResponse:
    """An HTTP connection's OpenAPI document: its operations for everyone who may see the connection; loading
    it (from a path under the base URL, or a file) and removing it for those who manage it. A document that
    does not parse is refused with the reason under the field, and nothing changes."""
    connection = connection_get_for_user(request.user, name)
    if connection.kind != kinds.HTTP:
        raise Http404("Only HTTP connections have an OpenAPI document.")
    can_manage = user_manages_connection(request.user, connection)
    document = openapi_document_for(connection)
    initial_path = document.source if document and document.source_kind == OpenApiDocument.Source.URL else ""
    fetch_form = OpenApiFetchForm(initial={"path": initial_path or "/openapi.json"})
    upload_form = OpenApiUploadForm()
    status = 200
    if request.method == "POST":
        if not can_manage:
            raise PermissionDenied("You may use this connection but not change it.")
        action = request.POST.get("action", "")
        try:
            if action == "remove":
                openapi_document_remove(actor=_user(request), connection=connection)
                messages.success(request, "Removed the OpenAPI document.")
                return redirect("connectors:openapi", name=connection.name)
            if action == "fetch":
                fetch_form = OpenApiFetchForm(request.POST)
                if fetch_form.is_valid():
                    loaded, lost = openapi_document_fetch(
                        actor=_user(request), connection=connection, path=fetch_form.cleaned_data["path"]
                    )
                    return _openapi_loaded(request, connection, loaded, lost)
            elif action == "upload":
                upload_form = OpenApiUploadForm(request.POST, request.FILES)
                if upload_form.is_valid():
                    upload = upload_form.cleaned_data["document"]
                    # One byte past the limit is enough for the parser to refuse it with the limit.
                    data = upload.read(MAX_DOCUMENT_BYTES + 1)
                    loaded, lost = openapi_document_load(
                        actor=_user(request),
                        connection=connection,
                        data=data,
                        source_kind=OpenApiDocument.Source.FILE,
                        source=str(upload.name),
                    )
                    return _openapi_loaded(request, connection, loaded, lost)
            else:
                messages.error(request, "Choose what to do: load from the API, upload a file, or remove.")
        except ValidationFailed as refusal:
            form = fetch_form if action == "fetch" else upload_form
            target = "path" if action == "fetch" else "document"
            for messages_list in refusal.fields.values():
                for message in messages_list:
                    form.add_error(target, message)
        except ApplicationError as refusal:
            messages.error(request, refusal.message)
            return redirect("connectors:openapi", name=connection.name)
        status = 400
    return render(
        request,
        "connectors/connection_openapi.html",
        {
            "connection": connection,
            "document": document,
            "operations": _operation_rows(connection) if document else [],
            "can_manage": can_manage,
            "fetch_form": fetch_form,
            "upload_form": upload_form,
            "action": request.POST.get("action", "") if request.method == "POST" else "",
        },
        status=status,
    )


def _openapi_loaded(
    request: HttpRequest, connection: Connection, document: OpenApiDocument, lost: dict[str, list[str]]
) -> HttpResponse:
    count = document.operations.count()
    title = f' "{document.title}"' if document.title else ""
    messages.success(request, f"Loaded the OpenAPI document{title}: {count} operation{'s' if count != 1 else ''}.")
    for operation, workflows in sorted(lost.items()):
        messages.warning(
            request,
            f'Published versions of {", ".join(workflows)} call "{operation}", which this document no longer has: '
            "their runs will fail at that step until they are changed and published again.",
        )
    return redirect("connectors:openapi", name=connection.name)
