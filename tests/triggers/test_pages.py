"""Trigger pages and API by persona: the owner adds, changes, pauses, resumes, rotates and deletes; her teammate and
the manager read; the outsider may not know; a form starts a run as the person who sends it; secrets appear once."""

from __future__ import annotations

import json

import pytest
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from apps.audit.models import AuditEvent
from apps.core.secrets import secret_decrypt
from apps.runs.models import Run, ScheduleTimer, TriggerFiring
from apps.runs.triggers import trigger_create
from apps.workflows.models import Trigger

pytestmark = pytest.mark.django_db


def client_for(user) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


def test_the_owner_adds_a_schedule_with_a_preview_and_field_errors(analyst, digest_workflow):
    client = client_for(analyst)
    url = reverse("runs:trigger-new", args=[digest_workflow.slug, "schedule"])
    assert client.get(url).status_code == 200
    bad = client.post(url, {"name": "Digest", "cron": "0 8 * *", "timezone": "Mars/Olympus"})
    assert bad.status_code == 400
    page = bad.content.decode()
    assert "A schedule has 5 fields" in page and "is not a time zone name" in page and 'value="Digest"' in page
    preview = client.post(
        url, {"name": "Digest", "cron": "0 8 * * 1", "timezone": "Europe/Berlin", "action": "preview"}
    )
    assert preview.status_code == 200 and "Every Monday at 08:00" in preview.content.decode()
    assert preview.content.decode().count("08:00</time>") == 5 and not Trigger.objects.exists()
    made = client.post(url, {"name": "Digest", "cron": "0 8 * * 1", "timezone": "Europe/Berlin", "inputs": ""})
    trigger = Trigger.objects.get()
    assert made.status_code == 302 and made["Location"] == reverse("runs:trigger-detail", args=[trigger.pk])
    assert ScheduleTimer.objects.filter(trigger=trigger, fired_at__isnull=True).count() == 1
    listing = client.get(reverse("runs:triggers", args=[digest_workflow.slug])).content.decode()
    assert "Every Monday at 08:00" in listing and "Next:" in listing and "Active" in listing


def test_a_webhook_secret_is_shown_once(analyst, ticket_workflow):
    client = client_for(analyst)
    response = client.post(reverse("runs:trigger-new", args=[ticket_workflow.slug, "webhook"]), {"name": "Helpdesk"})
    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    trigger = Trigger.objects.get()
    secret = secret_decrypt(trigger.secret)
    page = response.content.decode()
    assert secret in page and "shown only this once" in page and "X-AIOS-Signature" in page
    for later in (
        reverse("runs:trigger-detail", args=[trigger.pk]),
        reverse("runs:triggers", args=[ticket_workflow.slug]),
    ):
        assert secret not in client.get(later).content.decode()
    api = APIClient()
    api.force_authenticate(analyst)
    assert secret not in json.dumps(api.get(reverse("api:trigger-detail", args=[trigger.pk])).json())
    assert secret not in "".join(AuditEvent.objects.values_list("data", flat=True))


def test_the_form_page_starts_a_run_as_whoever_sends_it(analyst, reviewer, manager, outsider, ticket_workflow):
    trigger, _ = trigger_create(
        actor=analyst,
        workflow=ticket_workflow,
        kind="form",
        name="Report a problem",
        config={"intro": "For anything broken in the office.", "next_steps": "Facilities answer within a day."},
    )
    url = reverse("runs:trigger-form", args=[trigger.pk])
    assert client_for(outsider).get(url).status_code == 404
    assert client_for(manager).get(url).status_code == 403
    assert client_for(None).get(url).status_code == 302
    rita = client_for(reviewer)
    page = rita.get(url).content.decode()
    assert "For anything broken in the office." in page and 'name="subject"' in page
    bad = rita.post(url, {"subject": "x"})
    assert bad.status_code == 400 and "Nothing was sent yet" in bad.content.decode() and not Run.objects.exists()
    sent = rita.post(url, {"subject": "Window will not close", "priority": "3"})
    assert sent.status_code == 201
    run = Run.objects.get()
    assert run.initiator == reviewer and run.trigger == "form"
    assert "Facilities answer within a day." in sent.content.decode() and f"run #{run.pk}" in sent.content.decode()
    assert TriggerFiring.objects.get().run == run
    assert client_for(manager).post(url, {"subject": "Manager tries"}).status_code == 403
    assert Run.objects.count() == 1


# The owner changes (a redirect, or the secret page); her teammate and the manager see but may not (403); the
# outsider may not know the trigger (404); anonymous people are sent to sign in.
WRITES = {
    "analyst": (302, 200),
    "reviewer": (403, 403),
    "manager": (403, 403),
    "outsider": (404, 404),
    "anonymous": (302, 302),
}


@pytest.mark.parametrize("persona", sorted(WRITES))
def test_trigger_writes_by_persona(persona, analyst, reviewer, manager, outsider, ticket_workflow):
    people = {"analyst": analyst, "reviewer": reviewer, "manager": manager, "outsider": outsider, "anonymous": None}
    trigger, _ = trigger_create(actor=analyst, workflow=ticket_workflow, kind="webhook", name="Hook")
    client = client_for(people[persona])
    secret = trigger.secret
    redirect_or_refusal, rotate_status = WRITES[persona]
    assert client.post(reverse("runs:trigger-pause", args=[trigger.pk])).status_code == redirect_or_refusal
    assert client.post(reverse("runs:trigger-resume", args=[trigger.pk])).status_code == redirect_or_refusal
    assert client.post(reverse("runs:trigger-rotate", args=[trigger.pk])).status_code == rotate_status
    edit = client.post(reverse("runs:trigger-edit", args=[trigger.pk]), {"name": "Renamed"})
    assert edit.status_code == redirect_or_refusal
    new = client.post(reverse("runs:trigger-new", args=[ticket_workflow.slug, "form"]), {"name": "Another"})
    assert new.status_code == redirect_or_refusal
    api = APIClient()
    if people[persona] is not None:
        api.force_authenticate(people[persona])
    api_status = {"analyst": 200, "reviewer": 403, "manager": 403, "outsider": 404, "anonymous": 401}[persona]
    assert api.post(reverse("api:trigger-rotate", args=[trigger.pk])).status_code == api_status
    assert (
        api.patch(reverse("api:trigger-detail", args=[trigger.pk]), {"name": "Api"}, format="json").status_code
        == api_status
    )
    made = api.post(
        reverse("api:workflow-trigger-list", args=[ticket_workflow.slug]),
        {"kind": "form", "name": "Api form"},
        format="json",
    )
    assert made.status_code == {"analyst": 201}.get(persona, api_status)
    deleted = client.post(reverse("runs:trigger-delete", args=[trigger.pk]))
    assert deleted.status_code == redirect_or_refusal
    trigger_exists = Trigger.objects.filter(pk=trigger.pk).exists()
    if persona == "analyst":
        assert not trigger_exists
        assert Trigger.objects.filter(workflow=ticket_workflow).count() == 2  # the form and the API's form
    else:
        trigger.refresh_from_db()
        assert trigger_exists and trigger.name == "Hook" and trigger.enabled and trigger.secret == secret
        assert Trigger.objects.filter(workflow=ticket_workflow).count() == 1


def test_the_api_lists_creates_pauses_and_reads_history(analyst, reviewer, digest_workflow):
    api = APIClient()
    api.force_authenticate(analyst)
    url = reverse("api:workflow-trigger-list", args=[digest_workflow.slug])
    bad = api.post(
        url, {"kind": "schedule", "name": "Digest", "config": {"cron": "61 * * * *", "timezone": "UTC"}}, format="json"
    )
    assert bad.status_code == 400 and "out of range" in bad.json()["fields"]["cron"][0]
    made = api.post(
        url,
        {"kind": "schedule", "name": "Digest", "config": {"cron": "0 8 * * 1", "timezone": "Europe/Berlin"}},
        format="json",
    )
    assert (
        made.status_code == 201
        and made.json()["description"] == "Every Monday at 08:00"
        and "secret" not in made.json()
    )
    trigger_id = made.json()["id"]
    hook = api.post(url, {"kind": "webhook", "name": "Hook"}, format="json").json()
    assert hook["secret"].startswith("whsec_") and hook["url"].endswith("/")
    paused = api.patch(reverse("api:trigger-detail", args=[trigger_id]), {"enabled": False}, format="json")
    assert paused.status_code == 200 and paused.json()["enabled"] is False
    resumed = api.patch(reverse("api:trigger-detail", args=[trigger_id]), {"enabled": True}, format="json")
    assert resumed.json()["enabled"] is True
    teammate = APIClient()
    teammate.force_authenticate(reviewer)
    listed = teammate.get(url).json()["results"]
    assert [t["name"] for t in listed] == ["Digest", "Hook"] and all("secret" not in t for t in listed)
    history = teammate.get(reverse("api:trigger-history", args=[trigger_id])).json()
    assert history["count"] == 0 and history["results"] == []
    assert api.delete(reverse("api:trigger-detail", args=[trigger_id])).status_code == 204


def test_a_schedule_page_says_what_happens_to_missed_times(analyst, digest_workflow):
    trigger, _ = trigger_create(
        actor=analyst,
        workflow=digest_workflow,
        kind="schedule",
        name="Digest",
        config={"cron": "0 8 * * 1", "timezone": "Europe/Berlin"},
    )
    page = client_for(analyst).get(reverse("runs:trigger-detail", args=[trigger.pk])).content.decode()
    assert "After downtime, each missed time runs once, oldest first (at most the 24 most recent)." in page
