"""L6 for the triggers API: a workflow's triggers (answered whole before) and a trigger's history (paged by page
number before) are paged like every list, walk every row once, cap the limit, and show no other workflow's rows."""

from __future__ import annotations

import datetime

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from apps.accounts.services import team_create, user_create
from apps.runs.models import TriggerFiring
from apps.runs.triggers import trigger_create
from tests.support.paging import assert_paging_refused, walk
from tests.triggers.conftest import DIGEST_SCHEMA, publish

pytestmark = pytest.mark.django_db


def _client(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_a_workflows_triggers_and_a_triggers_history_are_paged(analyst, reviewer, digest_workflow):
    # Created in the reverse of their names' order: the list is by name.
    triggers = [
        trigger_create(actor=analyst, workflow=digest_workflow, kind="webhook", name=f"Hook {4 - n}")[0]
        for n in range(5)
    ]
    billing = user_create(username="bill", password="x-Unused-9", roles=["analyst"])
    other = publish(
        billing,
        "Billing digest",
        schema=DIGEST_SCHEMA,
        fields={"at": "input.scheduled_at"},
        team=team_create(name="Billing", members=[billing]),
    )
    foreign, _ = trigger_create(actor=billing, workflow=other, kind="webhook", name="Hook 0")
    now = timezone.now()
    firings = [
        TriggerFiring.objects.create(
            trigger=triggers[0], at=now - datetime.timedelta(minutes=n // 2), outcome="started", detail=f"{n}"
        )
        for n in range(7)
    ]
    TriggerFiring.objects.create(trigger=foreign, at=now, outcome="started")
    teammate = _client(reviewer)

    url = f"/api/workflows/{digest_workflow.slug}/triggers/"
    assert walk(teammate, url, limit=2) == [t.pk for t in sorted(triggers, key=lambda t: (t.name, t.pk))]
    assert foreign.pk not in walk(teammate, url, limit=100)
    history = f"/api/triggers/{triggers[0].pk}/history/"
    assert walk(teammate, history, limit=3) == [f.pk for f in sorted(firings, key=lambda f: (f.at, f.pk), reverse=True)]
    for address in (url, history):
        assert_paging_refused(teammate, address)
    # Another team's workflow and trigger are not there to page through.
    assert teammate.get(f"/api/workflows/{other.slug}/triggers/?limit=2").status_code == 404
    assert teammate.get(f"/api/triggers/{foreign.pk}/history/?limit=2").status_code == 404
