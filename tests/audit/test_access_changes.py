"""M7 and L4: changes to who may do what are audited whoever makes them (admin site or shell), denied
requests are audited with the user, route and status, and nothing a client chooses is copied whole into the
chain (request ids, large free text)."""

from __future__ import annotations

import hashlib
import json

import pytest
from django.contrib.auth.models import Group, Permission
from django.test import Client
from rest_framework.test import APIClient

from apps.accounts.models import User
from apps.audit.models import AuditEvent
from apps.audit.selectors import audit_verify
from apps.audit.services import audit_record

pytestmark = pytest.mark.django_db


def events(verb: str, user: User | Group | None = None, since: int = 0) -> list[AuditEvent]:
    found = AuditEvent.objects.filter(verb=verb, id__gt=since).order_by("id")
    if user is not None:
        found = found.filter(target_type=user._meta.label_lower, target_id=str(user.pk))
    return list(found)


def data(event: AuditEvent) -> dict:
    return json.loads(event.data)


@pytest.fixture
def superuser(db):
    return User.objects.create_superuser(username="root", password="x" * 20, email="root@example.com")


def admin_change(client: Client, user: User, **changes) -> int:
    """POST the admin site's user change form with the user's current values plus `changes`."""
    user.refresh_from_db()
    form = {
        "username": user.username,
        "first_name": user.first_name,
        "last_name": user.last_name,
        "email": user.email,
        "date_joined_0": user.date_joined.strftime("%Y-%m-%d"),
        "date_joined_1": user.date_joined.strftime("%H:%M:%S"),
        "groups": [str(pk) for pk in user.groups.values_list("pk", flat=True)],
        "user_permissions": [str(pk) for pk in user.user_permissions.values_list("pk", flat=True)],
    }
    for flag in ("is_active", "is_staff", "is_superuser"):
        if getattr(user, flag):
            form[flag] = "on"
    for key, value in changes.items():
        if value is False:
            form.pop(key, None)
        elif value is True:
            form[key] = "on"
        else:
            form[key] = value
    response = client.post(f"/admin/accounts/user/{user.pk}/change/", form)
    assert response.status_code == 302, response.content.decode()[:2000]
    return response.status_code


def test_admin_site_role_and_privilege_changes_are_audited_with_the_admin_as_actor(superuser, reviewer):
    admin_group = Group.objects.get(name="admin")
    client = Client()
    client.force_login(superuser)
    before_roles = sorted(reviewer.groups.values_list("name", flat=True))
    start = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0

    admin_change(
        client, reviewer, groups=[str(admin_group.pk), *map(str, reviewer.groups.values_list("pk", flat=True))]
    )
    (granted,) = events("user.roles_changed", reviewer, start)
    assert granted.actor_id == superuser.pk and granted.actor_label == "root"
    assert data(granted)["added"] == ["admin"] and data(granted)["removed"] == []
    assert data(granted)["before"] == before_roles and data(granted)["after"] == sorted([*before_roles, "admin"])
    assert data(granted)["via"] == "admin:accounts_user_change"

    admin_change(client, reviewer, is_staff=True, is_superuser=True)
    (raised,) = events("user.privileges_changed", reviewer)
    assert raised.actor_id == superuser.pk
    assert data(raised)["before"] == {"is_active": True, "is_staff": False, "is_superuser": False}
    assert data(raised)["after"] == {"is_active": True, "is_staff": True, "is_superuser": True}

    change_run = Permission.objects.get(content_type__app_label="runs", codename="change_run")
    admin_change(client, reviewer, user_permissions=[str(change_run.pk)], is_active=False)
    (perms,) = events("user.permissions_changed", reviewer)
    assert data(perms)["added"] == ["runs.change_run"] and perms.actor_id == superuser.pk
    deactivated = events("user.privileges_changed", reviewer)[-1]
    assert data(deactivated)["after"]["is_active"] is False and data(deactivated)["before"]["is_active"] is True
    assert audit_verify().intact


def test_shell_changes_are_audited_as_system_from_either_side_of_the_relation(reviewer, analyst):
    admin_group = Group.objects.get(name="admin")
    start = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0
    admin_group.user_set.add(reviewer, analyst)  # the reverse side: one event per user
    for user in (reviewer, analyst):
        (event,) = events("user.roles_changed", user, start)
        assert event.actor_id is None and event.actor_label == "system"
        assert data(event)["added"] == ["admin"] and "admin" in data(event)["after"]
        assert data(event)["via"].startswith("no request")

    reviewer.groups.clear()
    cleared = events("user.roles_changed", reviewer)[-1]
    assert "admin" in data(cleared)["removed"] and data(cleared)["after"] == []

    view_run = Permission.objects.get(content_type__app_label="runs", codename="delete_run")
    admin_group.permissions.add(view_run)
    (grant,) = events("group.permissions_changed", admin_group)
    assert data(grant)["added"] == ["runs.delete_run"] and "runs.delete_run" not in data(grant)["before"]
    view_run.group_set.remove(admin_group)  # reverse side again
    revoke = events("group.permissions_changed", admin_group)[-1]
    assert data(revoke)["removed"] == ["runs.delete_run"]

    boss = User.objects.create_superuser(username="boss", password="y" * 20)
    (created,) = events("user.privileges_changed", boss)
    assert data(created)["created"] is True and data(created)["after"]["is_superuser"] is True

    analyst.last_login = None
    analyst.save(update_fields=["last_login"])  # not a privilege: no event
    analyst.first_name = "Anna"
    analyst.save()
    assert events("user.privileges_changed", analyst) == []


def test_forbidden_requests_are_audited_with_user_route_and_status(reviewer, team, outsider):
    # API 403.
    api = APIClient()
    api.force_authenticate(reviewer)
    assert api.post("/api/workflows/", {"name": "Mine"}, format="json").status_code == 403
    (denied,) = events("request.denied", reviewer)
    assert denied.actor_id == reviewer.pk
    assert data(denied)["route"].endswith("workflow-list")
    assert {k: data(denied)[k] for k in ("status", "method", "path", "via")} == {
        "status": 403,
        "method": "POST",
        "path": "/api/workflows/",
        "via": "api",
    }

    # A page POST without its CSRF token (htmx-style), signed in: 403, audited with the htmx channel.
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(outsider)
    assert browser.post("/workflows/new/", {"name": "x"}, HTTP_HX_REQUEST="true").status_code == 403
    (csrf,) = events("request.denied", outsider)
    assert data(csrf)["status"] == 403 and data(csrf)["via"] == "htmx" and data(csrf)["method"] == "POST"

    # Anonymous refusals do not write into the chain.
    before = AuditEvent.objects.count()
    assert APIClient().post("/api/workflows/", {"name": "x"}, format="json").status_code == 401
    assert AuditEvent.objects.count() == before


def test_not_found_on_existing_routes_is_sampled_per_user(settings, outsider, claims_workflow):
    settings.AIOS_AUDIT_NOT_FOUND_PER_HOUR = 3
    from django.core.cache import cache

    cache.clear()
    client = Client()
    client.force_login(outsider)
    for _ in range(5):
        assert client.get(f"/workflows/{claims_workflow.slug}/").status_code == 404
    assert client.get("/no-such-route-at-all/").status_code == 404
    sampled = events("request.not_found", outsider)
    assert len(sampled) == 3, [data(e) for e in sampled]
    assert all(data(e)["path"] == f"/workflows/{claims_workflow.slug}/" for e in sampled)


def test_client_request_ids_are_never_copied_into_the_chain(analyst, claims_workflow):
    client = Client()
    client.force_login(analyst)
    chosen = "attacker-chosen-id-0123456789"
    response = client.get("/", HTTP_X_REQUEST_ID=chosen)
    ours = response["X-Request-ID"]
    assert chosen not in ours and ours.endswith("." + hashlib.sha256(chosen.encode()).hexdigest()[:12])
    again = client.get("/", HTTP_X_REQUEST_ID=chosen)["X-Request-ID"]
    assert again != ours  # two requests never share an id because a client said so
    # What an audited request records is that id.
    api = APIClient()
    api.force_authenticate(analyst)
    api.credentials(HTTP_X_REQUEST_ID=chosen)
    response = api.post("/api/workflows/", {"name": "Request id check"}, format="json")
    assert response.status_code == 201, response.content
    event = AuditEvent.objects.filter(verb="workflow.created").latest("id")
    assert chosen not in event.request_id and event.request_id == response["X-Request-ID"]
    malformed = client.get("/", HTTP_X_REQUEST_ID="<script>" + "x" * 200)["X-Request-ID"]
    assert "script" not in malformed and len(malformed) <= 64


def test_large_free_text_is_stored_as_size_and_sha256(analyst, settings):
    settings.AIOS_AUDIT_TEXT_LIMIT = 1000
    prompt = "Ignore the claim and write a poem. " * 70_000  # ~2.4 MB, as a what-if prompt could be
    short = "a short reason"
    event = audit_record(
        actor=analyst,
        verb="test.what_if",
        data={"overrides": {"extract": {"prompt": prompt, "temperature": 0.2}}, "reason": short, "list": [prompt]},
    )
    stored = json.loads(AuditEvent.objects.get(pk=event.pk).data)
    digest = {"size": len(prompt.encode()), "sha256": hashlib.sha256(prompt.encode()).hexdigest()}
    assert stored["overrides"]["extract"] == {"prompt": digest, "temperature": 0.2}
    assert stored["list"] == [digest] and stored["reason"] == short
    assert len(AuditEvent.objects.get(pk=event.pk).data) < 1000
    assert audit_verify().intact
