"""The connections API: list and create, read, change and delete one, and test it. It mirrors the pages and calls
the same services and selectors; secrets are write-only (the answer says which are set, never a value)."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from apps.accounts.models import Team, User
from apps.connectors.models import Connection
from apps.connectors.rules import user_manages_connection
from apps.connectors.selectors import connection_get_for_user, connection_list_for_user
from apps.connectors.services import (
    connection_delete,
    connection_save,
    connection_set_enabled,
    connection_test,
)
from apps.core.exceptions import Forbidden, ValidationFailed


class ConnectionSerializer(serializers.ModelSerializer):
    """A connection as its users may read it: settings, never a secret (`secrets_set` names the stored ones).
    `secrets_unreadable`: the stored secrets cannot be read with the server's keys (saved under a key since
    dropped), so which are set is unknown (`secrets_set` null) until an admin enters them again."""

    team: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    secrets_set = serializers.SerializerMethodField()
    secrets_unreadable = serializers.SerializerMethodField()

    class Meta:
        model = Connection
        fields = [
            "name",
            "label",
            "description",
            "kind",
            "team",
            "config",
            "enabled",
            "secrets_set",
            "secrets_unreadable",
            "last_tested_at",
            "last_test_ok",
            "last_test_message",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields

    def get_secrets_set(self, connection: Connection) -> list[str] | None:
        stored = connection.secret_keys_set()
        return None if stored is None else sorted(stored)

    def get_secrets_unreadable(self, connection: Connection) -> bool:
        return connection.secret_keys_set() is None


class ConnectionWriteSerializer(serializers.Serializer):
    """What a create or change sends. `secrets` is write-only: a value replaces, "" or null keeps the stored one,
    `"<name>:remove": true` removes it."""

    name = serializers.CharField(max_length=64, required=False)
    # A declared field named like Field's own `label` attribute: DRF's metaclass moves it aside, mypy cannot see that.
    label = serializers.CharField(max_length=150, required=False)  # type: ignore[assignment]
    description = serializers.CharField(required=False, allow_blank=True)
    kind = serializers.CharField(required=False)
    team = serializers.SlugRelatedField(slug_field="slug", queryset=Team.objects.all(), required=False)
    config = serializers.DictField(required=False)
    secrets = serializers.DictField(child=serializers.CharField(allow_blank=True, allow_null=True), required=False)
    enabled = serializers.BooleanField(required=False)
    save_even_if_test_fails = serializers.BooleanField(
        required=False,
        default=False,
        help_text="Settings and secrets are tested before saving; a failed test saves nothing (422 with the "
        "server's reason under `test`) unless this is true.",
    )


class TestResultSerializer(serializers.Serializer):
    ok = serializers.BooleanField()
    message = serializers.CharField()
    seconds = serializers.FloatField()


def _user(request: Request) -> User:
    assert isinstance(request.user, User)
    return request.user


class ConnectionViewSet(viewsets.ModelViewSet):
    """Connections the caller may see (admins: all; others: those they may use or manage). Admins create them;
    those who manage one change, test or delete it."""

    serializer_class = ConnectionSerializer
    lookup_field = "name"
    lookup_value_regex = r"[a-z0-9][a-z0-9_-]*"
    http_method_names = ["get", "post", "patch", "put", "delete", "head", "options"]

    def get_queryset(self) -> QuerySet[Connection]:
        params = self.request.query_params
        return connection_list_for_user(self.request.user, team=params.get("team"), kind=params.get("kind"))

    def get_object(self) -> Connection:
        return connection_get_for_user(self.request.user, self.kwargs["name"])

    def _body(self, request: Request) -> dict[str, Any]:
        if not isinstance(request.data, dict):
            raise ValidationFailed("Send an object.", fields={"data": ["Must be a JSON object."]})
        body = ConnectionWriteSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        return dict(body.validated_data)

    @extend_schema(request=ConnectionWriteSerializer, responses={201: ConnectionSerializer, 422: None})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Create a connection (admins): name, label, kind, team, config and the secrets its settings need. The
        settings are tested first: a failed test saves nothing (422, the reason under `test`) unless
        `save_even_if_test_fails`."""
        body = self._body(request)
        missing = [name for name in ("name", "label", "kind", "team") if name not in body]
        if missing:
            raise ValidationFailed(
                "Some fields are missing.", fields={name: ["This field is required."] for name in missing}
            )
        connection, _ = connection_save(
            actor=_user(request),
            connection=None,
            name=body["name"],
            label=body["label"],
            description=body.get("description", ""),
            kind=body["kind"],
            team=body["team"],
            config=body.get("config", {}),
            secrets=body.get("secrets", {}),
            enabled=body.get("enabled", True),
            save_even_if_test_fails=body.get("save_even_if_test_fails", False),
        )
        return Response(ConnectionSerializer(connection).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=ConnectionWriteSerializer, responses={200: ConnectionSerializer})
    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Change settings, team, secrets or `enabled`; fields not sent stay as they are. A connection's name and
        kind never change."""
        connection = self.get_object()
        if not user_manages_connection(request.user, connection):
            raise Forbidden(f'You may not change the connection "{connection.name}".')
        body = self._body(request)
        fixed = [name for name in ("name", "kind") if name in body and body[name] != getattr(connection, name)]
        if fixed:
            raise ValidationFailed(
                "These cannot change.", fields={name: ["Steps rely on it; it cannot change."] for name in fixed}
            )
        # Settings and secrets are tested before they are saved (a failed test: 422, nothing saved, unless
        # save_even_if_test_fails); a change of label, team or `enabled` alone is not about reaching the server.
        connection, _ = connection_save(
            actor=_user(request),
            connection=connection,
            kind=connection.kind,
            label=body.get("label"),
            description=body.get("description"),
            team=body.get("team"),
            config=body.get("config"),
            secrets=body.get("secrets"),
            test="config" in body or bool(body.get("secrets")),
            save_even_if_test_fails=body.get("save_even_if_test_fails", False),
        )
        if "enabled" in body:
            connection = connection_set_enabled(actor=_user(request), connection=connection, enabled=body["enabled"])
        return Response(ConnectionSerializer(connection).data)

    @extend_schema(request=ConnectionWriteSerializer, responses={200: ConnectionSerializer})
    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return self.partial_update(request, *args, **kwargs)

    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Delete; 409 with `workflows` while a published version names the connection, and with `triggers`
        ({"trigger", "workflow"} names) while an email trigger that is not paused reads its mailbox."""
        connection = self.get_object()
        connection_delete(actor=_user(request), connection=connection)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=None, responses={200: TestResultSerializer})
    @action(detail=True, methods=["post"])
    def test(self, request: Request, name: str) -> Response:
        """Test the stored settings for real and record the result (those who manage the connection)."""
        connection = self.get_object()
        result = connection_test(actor=_user(request), connection=connection)
        return Response({"ok": result.ok, "message": result.message, "seconds": result.seconds})
