"""L6 for the approvals API's lists that were answered whole: notifications, absences and a queue's members are
paged like every list (limit/offset, at most AIOS_API_MAX_PAGE_SIZE), each page walks on without repeating a row,
and nobody else's rows appear on any page."""

from __future__ import annotations

import datetime

import pytest
from django.utils import timezone

from apps.accounts.services import team_create, user_create
from apps.approvals.membership import queue_member_add
from apps.approvals.models import ApprovalQueue, Notification, OutOfOffice
from tests.approvals.items import PASSWORD, api, claim_workflow, member, parked_item
from tests.support.paging import assert_paging_refused, walk

pytestmark = pytest.mark.django_db


@pytest.fixture
def bea(db):
    """Bea reviews for Billing: another team, with rows of her own in every list."""
    user = user_create(username="bea", password=PASSWORD, roles=["reviewer"], first_name="Bea")
    team_create(name="Billing", members=[user])
    return user


def test_notifications_are_paged_newest_first_and_only_ones_own(reviewer, bea):
    mine = [Notification.objects.create(user=reviewer, kind="assigned", text=f"item {n}") for n in range(7)]
    # Same creation time for some: the id breaks the tie, so no page repeats or skips one.
    Notification.objects.filter(pk__in=[n.pk for n in mine[:4]]).update(created_at=timezone.now())
    theirs = [Notification.objects.create(user=bea, kind="assigned", text=f"bea {n}") for n in range(3)]
    client = api(reviewer)

    walked = walk(client, "/api/notifications/", limit=2)
    expected = list(
        Notification.objects.filter(user=reviewer).order_by("-created_at", "-pk").values_list("pk", flat=True)
    )
    assert walked == expected and len(walked) == 7
    assert not set(walked) & {n.pk for n in theirs}
    assert walk(api(bea), "/api/notifications/", limit=100) == [n.pk for n in reversed(theirs)]
    assert_paging_refused(client, "/api/notifications/")
    # More than the page the inbox's bell shows (50): the API reaches every one.
    Notification.objects.bulk_create([Notification(user=reviewer, kind="reminder", text=f"old {n}") for n in range(60)])
    assert len(walk(client, "/api/notifications/", limit=100)) == 67


def test_absences_are_paged_soonest_first_and_only_ones_own(reviewer, analyst, bea):
    today = timezone.localdate()
    mine = [
        OutOfOffice.objects.create(
            user=reviewer,
            starts_on=today + datetime.timedelta(days=10 * (n // 2)),  # two by two on the same day
            ends_on=today + datetime.timedelta(days=10 * (n // 2) + 2),
            delegate=analyst,
        )
        for n in range(5)
    ]
    OutOfOffice.objects.create(  # over: not listed
        user=reviewer,
        starts_on=today - datetime.timedelta(days=9),
        ends_on=today - datetime.timedelta(days=1),
        delegate=analyst,
    )
    theirs = OutOfOffice.objects.create(user=bea, starts_on=today, ends_on=today, delegate=analyst)
    client = api(reviewer)

    walked = walk(client, "/api/absences/", limit=2)
    assert walked == [a.pk for a in sorted(mine, key=lambda a: (a.starts_on, a.pk))]
    assert theirs.pk not in walked
    assert walk(api(bea), "/api/absences/", limit=2) == [theirs.pk]
    assert_paging_refused(client, "/api/absences/")


@pytest.fixture
def claims_queue(team) -> ApprovalQueue:
    return ApprovalQueue.objects.get(key=team.group.name)


def test_a_queues_members_are_paged_and_another_teams_never_appear(admin_user_role, team, claims_queue, bea):
    lena = member(team, "lena")
    ApprovalQueue.objects.filter(pk=claims_queue.pk).update(lead=lena)
    claims_queue.refresh_from_db()
    people = [member(team, f"person{n}") for n in range(5)]
    for person in people:
        queue_member_add(actor=admin_user_role, queue=claims_queue, user=person, right="use")
    billing = ApprovalQueue.objects.get(key="team:billing")
    queue_member_add(actor=admin_user_role, queue=billing, user=bea, right="use")
    client = api(lena)
    url = "/api/approval-queues/team:claims/members/"

    rows = walk(client, url, limit=2, key="name")
    assert rows[0] == "Claims team" and set(rows[1:]) == {p.display_name for p in people}
    assert "Billing team" not in rows and "Bea" not in rows
    assert_paging_refused(client, url)
    # A queue Lena does not manage is not hers to list, page or not.
    assert client.get("/api/approval-queues/team:billing/members/?limit=2").status_code == 404

    # A change answers the members after it, paged the same way; a bad limit refuses it before anything changes.
    refused = client.post(f"{url}?limit=101", {"user": "bea", "right": "use"}, format="json")
    assert refused.status_code == 400 and "limit" in refused.json()["fields"]
    assert walk(client, url, limit=100, key="name") == rows
    added = client.post(f"{url}?limit=2", {"user": "rita", "right": "use"}, format="json")
    assert added.status_code == 201
    body = added.json()
    assert body["count"] == 7 and len(body["results"]) == 2 and body["next"]
    removed = client.delete(url, {"user": "rita"}, format="json")
    assert removed.status_code == 200 and removed.json()["count"] == 6


def test_an_inbox_view_is_paged_like_every_list_and_shows_only_her_queues(analyst, reviewer, team):
    """With `view`, the list is that inbox view in its sort, paged by limit and offset (it was 25 a page by
    `page`), with the view and every view's count beside the page."""
    workflow = claim_workflow(analyst, team)
    items = [parked_item(analyst, workflow, amount=100.0 + n) for n in range(5)]
    bill = user_create(username="bill", password=PASSWORD, roles=["analyst"])
    beth = user_create(username="beth", password=PASSWORD, roles=["reviewer"])
    ledger = team_create(name="Ledger", members=[bill, beth])
    theirs = parked_item(bill, claim_workflow(bill, ledger, name="Ledger check", queue="team:ledger"))
    client = api(reviewer)
    url = "/api/approvals/?view=unclaimed&sort=oldest"

    assert walk(client, url, limit=2) == [item.pk for item in items]
    assert theirs.pk not in walk(client, url, limit=100)
    first = client.get(f"{url}&limit=2").json()
    assert first["view"] == "unclaimed" and first["counts"]["unclaimed"] == 5 and first["count"] == 5
    assert_paging_refused(client, url)
    assert walk(api(beth), url, limit=2) == [theirs.pk]
