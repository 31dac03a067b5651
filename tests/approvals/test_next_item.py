""" "Next item" under contention: reviewers pressing it at once, each in a thread with its own connection to the
real PostgreSQL, never get the same item, and together they empty the queue."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from django.db import connection

from apps.approvals.models import ApprovalActivity, ApprovalRequest
from apps.audit.models import AuditEvent
from apps.runs.services import run_start
from tests.approvals.items import api, claim_workflow, member, parked_items
from tests.support.figures import record_figure

REVIEWERS = 8
ITEMS = 30


@pytest.mark.django_db(transaction=True)
def test_concurrent_next_item_never_claims_an_item_twice(analyst, team, reviewer):
    reviewers = [reviewer] + [member(team, f"reviewer{i}") for i in range(1, REVIEWERS)]
    workflow = claim_workflow(analyst, team)
    runs = [
        run_start(actor=analyst, workflow=workflow, inputs={"amount": float(i), "name": f"Claimant {i}"})[0]
        for i in range(ITEMS)
    ]
    items = parked_items(runs)
    claims: list[tuple[str, int]] = []
    errors: list[str] = []
    start = threading.Barrier(REVIEWERS)

    def work(person):
        client = api(person)
        try:
            start.wait()
            while True:
                response = client.post("/api/approvals/next/")
                if response.status_code == 204:
                    return
                if response.status_code != 200:
                    errors.append(f"{person.username}: {response.status_code} {response.content[:200]!r}")
                    return
                claims.append((person.username, response.json()["id"]))
        finally:
            connection.close()

    threads = [threading.Thread(target=work, args=(person,)) for person in reviewers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    per_item = Counter(item_id for _, item_id in claims)
    double_claims = sum(1 for count in per_item.values() if count > 1)
    held = dict(ApprovalRequest.objects.filter(pk__in=[i.pk for i in items]).values_list("pk", "assignee__username"))
    recorded = Counter(
        ApprovalActivity.objects.filter(request__in=items, kind="claimed").values_list("request_id", flat=True)
    )
    ok = (
        not errors
        and double_claims == 0
        and set(per_item) == {i.pk for i in items}
        and all(held[item_id] == username for username, item_id in claims)
        and recorded == per_item
        and AuditEvent.objects.filter(verb="approval.claimed").count() == ITEMS
    )
    record_figure(
        f"B10-lite next_item reviewers {REVIEWERS} items {ITEMS} claims {len(claims)} "
        f"double_claims {double_claims} busiest {max(Counter(u for u, _ in claims).values(), default=0)} "
        f"{'ok' if ok else 'miss'}"
    )
    assert not errors, errors
    assert double_claims == 0, per_item
    assert len(claims) == ITEMS and set(per_item) == {i.pk for i in items}
    assert all(held[item_id] == username for username, item_id in claims)
    assert recorded == per_item
    assert AuditEvent.objects.filter(verb="approval.claimed").count() == ITEMS
    assert not ApprovalRequest.objects.filter(state="pending", assignee__isnull=True).exists()
