"""The inbox's own pages, through the HTML a reviewer uses: out of office, notifications and the nav's unread
badge, bulk approval from the "Unclaimed" view, saved views (her own and those shared with a queue), and the
inbox's query count, which must not grow with the number of items."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.messages import get_messages
from django.test import Client
from django.utils import timezone

from apps.accounts.services import team_create, user_create
from apps.approvals.models import ApprovalDecision, ApprovalQueue, ApprovalRequest, Notification, OutOfOffice, SavedView
from apps.approvals.services import absence_set, notify
from apps.audit.models import AuditEvent
from tests.approvals.items import PASSWORD, claim_workflow, member, parked_item

pytestmark = pytest.mark.django_db


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def text_of(response) -> str:
    """The page's text, whitespace collapsed, so assertions read like what a person sees."""
    return " ".join(response.content.decode().split())


def flash(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


@pytest.fixture
def rex(team):
    """Another reviewer of the Claims queue."""
    return member(team, "rex")


@pytest.fixture
def bea(db):
    """Bea reviews for Billing: the Claims queue is not hers."""
    user = user_create(username="bea", password=PASSWORD, roles=["reviewer"], first_name="Bea")
    team_create(name="Billing", members=[user])
    return user


@pytest.fixture
def claims_queue(team) -> ApprovalQueue:
    return ApprovalQueue.objects.get(key=team.group.name)


# --- out of office ----------------------------------------------------------------------------------------------


def test_the_out_of_office_page_lists_absences_and_offers_colleagues_of_her_queues(reviewer, rex, bea, team):
    absence_set(
        actor=reviewer,
        starts_on=timezone.localdate() + timedelta(days=10),
        ends_on=timezone.localdate() + timedelta(days=12),
        delegate=rex,
        note="Training in Lyon",
    )
    response = signed_in(reviewer).get("/inbox/away/")
    assert response.status_code == 200
    page = text_of(response)
    assert "<h1>Out of office</h1>" in page
    assert "Training in Lyon" in page and "Rex" in page
    assert "Remove…" in page and "Yes, remove the absence" in page
    options = re.findall(r'<option value="(\d+)"', page)
    assert options == [str(rex.pk)], "only people who work one of her queues, never herself or another team"
    assert 'type="date" id="absence-starts_on"' in page and 'type="date" id="absence-ends_on"' in page


def test_an_absence_with_a_bad_range_is_kept_as_typed_and_a_good_one_is_saved_and_removed(reviewer, rex, analyst):
    client = signed_in(reviewer)
    bad = {"starts_on": "2031-03-10", "ends_on": "2031-03-05", "delegate": str(rex.pk), "note": "Holiday"}
    response = client.post("/inbox/away/", bad)
    assert response.status_code == 400
    page = text_of(response)
    assert "The last day cannot come before the first." in page
    assert (
        'id="absence-ends_on-error"' in page and 'aria-invalid="true" aria-describedby="absence-ends_on-error"' in page
    )
    assert 'value="2031-03-10"' in page and 'value="2031-03-05"' in page and 'value="Holiday"' in page
    assert f'<option value="{rex.pk}" selected>' in page
    assert not OutOfOffice.objects.exists()

    # Someone outside her queues is not a choice, whatever the form says.
    response = client.post("/inbox/away/", {**bad, "ends_on": "2031-03-20", "delegate": str(analyst.pk)})
    assert response.status_code == 400 and "Choose who takes your items" in text_of(response)
    assert not OutOfOffice.objects.exists()

    today = timezone.localdate()
    good = {"starts_on": str(today), "ends_on": str(today + timedelta(days=3)), "delegate": str(rex.pk), "note": ""}
    response = client.post("/inbox/away/", good)
    assert response.status_code == 302 and response["Location"] == "/inbox/away/"
    absence = OutOfOffice.objects.get(user=reviewer)
    assert (absence.starts_on, absence.ends_on, absence.delegate) == (today, today + timedelta(days=3), rex)
    assert "Away now" in text_of(client.get("/inbox/away/"))
    # The inbox says she is away, until when, and who gets her items.
    inbox = text_of(client.get("/inbox/"))
    assert f"You are away until {(today + timedelta(days=3)).strftime('%A %-d %B %Y')}; new items go to Rex." in inbox

    # Nobody removes someone else's absence: it does not exist for them.
    assert signed_in(rex).post(f"/inbox/away/{absence.pk}/remove/").status_code == 404
    response = client.post(f"/inbox/away/{absence.pk}/remove/")
    assert response.status_code == 302 and not OutOfOffice.objects.exists()
    assert any(message.startswith("Removed the absence") for message in flash(response))
    assert AuditEvent.objects.filter(verb="absence.removed").count() == 1
    assert "You are away" not in text_of(client.get("/inbox/"))


# --- notifications and the badge ------------------------------------------------------------------------------


def test_the_notifications_page_lists_newest_first_says_new_in_words_and_marks_all_read(analyst, team, reviewer):
    item = parked_item(analyst, claim_workflow(analyst, team))
    notify(reviewer, item, Notification.Kind.ASSIGNED, "Check the claim: assigned to you")
    notify(reviewer, None, Notification.Kind.NEW_ITEMS, "3 new items in Claims approvals")
    Notification.objects.filter(text__startswith="Check").update(read_at=timezone.now())
    client = signed_in(reviewer)
    page = text_of(client.get("/inbox/notifications/"))
    assert "1 unread notification." in page
    newest, older = page.index("3 new items in Claims"), page.index("Check the claim: assigned")
    assert newest < older, "newest first"
    assert page.count(">New</span>") == 1 and page.index(">New</span>") < newest
    assert f'href="/inbox/items/{item.pk}/">Open the item' in page
    assert "Mark all read" in page

    response = client.post("/inbox/notifications/read/")
    assert response.status_code == 302 and flash(response) == ["Marked 1 notification read."]
    assert not Notification.objects.filter(user=reviewer, read_at__isnull=True).exists()
    page = text_of(client.get("/inbox/notifications/"))
    assert "Nothing unread." in page and ">New</span>" not in page and "Mark all read" not in page


def test_the_badge_counts_unread_after_the_page_and_is_empty_for_none(reviewer, outsider):
    client = signed_in(reviewer)
    home = text_of(client.get("/inbox/"))
    assert 'hx-get="/inbox/badge/" hx-trigger="load"' in home
    empty = client.get("/inbox/badge/")
    assert empty.status_code == 200 and empty.content.strip() == b""
    for text in ("one", "two", "three"):
        notify(reviewer, None, Notification.Kind.REMINDER, text)
    Notification.objects.filter(text="one").update(read_at=timezone.now())
    notify(outsider, None, Notification.Kind.REMINDER, "not hers")
    badge = client.get("/inbox/badge/")
    assert (
        text_of(badge)
        == '<span class="nav-badge badge">2<span class="visually-hidden"> unread notifications</span></span>'
    )
    assert "no-cache" in badge["Cache-Control"] or "no-store" in badge["Cache-Control"]
    # Signed out: nothing at all (never the sign-in page inside the nav), and no badge placeholder on the page.
    assert Client().get("/inbox/badge/").status_code == 204
    assert "/inbox/badge/" not in Client().get("/accounts/login/").content.decode()


# --- bulk approval ------------------------------------------------------------------------------------------------


@pytest.fixture
def bulk_items(analyst, team, claims_queue):
    """Two confident items (every field 0.95+) and one the model was unsure of, in a queue that allows bulk
    approval of items whose every field scores at least 0.90."""
    ApprovalQueue.objects.filter(pk=claims_queue.pk).update(bulk_threshold=0.9)
    sure = claim_workflow(analyst, team, name="Sure claims")
    unsure = claim_workflow(analyst, team, name="Unsure claims", confidence={"amount": 0.55, "claimant": 0.97})
    return parked_item(analyst, sure, name="Ann"), parked_item(analyst, sure, name="Ben"), parked_item(analyst, unsure)


def _states(items) -> list[str]:
    return [ApprovalRequest.objects.get(pk=item.pk).state for item in items]


def test_bulk_approval_through_the_pages_approves_the_qualifying_items(reviewer, bulk_items):
    first, second, unsure = bulk_items
    client = signed_in(reviewer)
    inbox = client.get("/inbox/?view=unclaimed").content.decode()
    boxes = re.findall(r'<input type="checkbox" name="items" value="(\d+)" form="bulk-form"> Select', inbox)
    assert sorted(boxes) == sorted([str(first.pk), str(second.pk)]), "no box for the unsure item"
    assert 'Select<span class="visually-hidden"> Check the claim</span>' in inbox
    assert "Review the selected for bulk approval" in inbox

    ids = [str(first.pk), str(second.pk), str(unsure.pk)]
    preview = client.post("/inbox/bulk/", {"items": ids, "back": "view=unclaimed"})
    assert preview.status_code == 200
    page = text_of(preview)
    assert "Ready to approve (2)" in page and "Cannot be approved in bulk (1)" in page
    assert "Not every field scores at least 0.90." in page
    assert "Sure claims" in page and "<dt>Claimant</dt><dd>Ann</dd>" in page and "0.95" in page
    assert "Approve 2 items" in page
    assert _states(bulk_items) == ["pending"] * 3, "a preview changes nothing"

    response = client.post(
        "/inbox/bulk/",
        {
            "items": [str(first.pk), str(second.pk)],
            "stage": "approve",
            "comment": "Both match",
            "back": "view=unclaimed",
        },
    )
    assert response.status_code == 302 and response["Location"] == "/inbox/"
    assert flash(response) == ["Approved 2 items."]
    assert _states(bulk_items) == ["approved", "approved", "pending"]
    decisions = ApprovalDecision.objects.filter(request__in=[first, second])
    assert [(d.bulk, d.reason, d.actor_id) for d in decisions] == [(True, "Both match", reviewer.pk)] * 2
    assert AuditEvent.objects.filter(verb="approval.approved").count() == 2


def test_a_bulk_batch_with_an_item_that_does_not_qualify_is_refused_whole_naming_it(reviewer, bulk_items):
    first, second, unsure = bulk_items
    decided_before = ApprovalDecision.objects.count()
    response = signed_in(reviewer).post(
        "/inbox/bulk/", {"items": [str(first.pk), str(unsure.pk), str(second.pk)], "stage": "approve"}
    )
    assert response.status_code == 400
    page = text_of(response)
    assert "Some items cannot be approved in bulk: nothing was approved." in page
    refused = page[page.index("Cannot be approved in bulk (1)") :]
    assert f'href="/inbox/items/{unsure.pk}/"' in refused and "Not every field scores at least 0.90." in refused
    assert _states(bulk_items) == ["pending"] * 3
    assert ApprovalDecision.objects.count() == decided_before


def test_bulk_approval_without_a_bulk_threshold_offers_no_boxes_and_refuses(reviewer, analyst, team):
    item = parked_item(analyst, claim_workflow(analyst, team))
    client = signed_in(reviewer)
    assert "bulk-form" not in client.get("/inbox/?view=unclaimed").content.decode()
    response = client.post("/inbox/bulk/", {"items": [str(item.pk)], "stage": "approve"})
    assert response.status_code == 400 and "queue does not allow bulk approval" in text_of(response)
    assert _states([item]) == ["pending"]
    # An item she cannot see is no item at all.
    response = signed_in(reviewer).post("/inbox/bulk/", {"items": ["999999"]})
    assert response.status_code == 302 and flash(response) == ["Tick at least one item to approve in bulk."]


# --- saved views ----------------------------------------------------------------------------------------------------


def test_a_reviewer_saves_lists_and_deletes_her_own_views(reviewer, claims_queue):
    client = signed_in(reviewer)
    query = f"view=mine&queue={claims_queue.key}&sort=due"
    response = client.post("/inbox/views/save/", {"name": "  My claims by due time ", "query": query})
    assert response.status_code == 302
    view = SavedView.objects.get(owner=reviewer)
    assert (view.name, view.query, view.shared_queue) == (
        "My claims by due time",
        "view=mine&queue=team%3Aclaims&sort=due",
        None,
    )
    assert response["Location"] == f"/inbox/?{view.query}"
    assert AuditEvent.objects.filter(verb="saved_view.created").count() == 1

    page = text_of(client.get(f"/inbox/?{view.query}"))
    link = view.query.replace("&", "&amp;")
    assert f'<a href="?{link}" aria-current="true">My claims by due time</a>' in page
    assert 'Delete<span class="visually-hidden"> the saved view My claims by due time</span>' in page

    # A second view under the same name, an empty one or a long one: refused, the name kept, the error shown.
    again = client.post("/inbox/views/save/", {"name": "My claims by due time", "query": "view=done"})
    assert again.status_code == 400
    assert "You already have a view called" in text_of(again) and 'value="My claims by due time"' in text_of(again)
    assert "Give the view a name." in text_of(client.post("/inbox/views/save/", {"name": " ", "query": ""}))
    assert "At most 80 characters." in text_of(client.post("/inbox/views/save/", {"name": "x" * 81, "query": ""}))
    assert SavedView.objects.count() == 1

    response = client.post(f"/inbox/views/{view.pk}/delete/", {"back": view.query})
    assert response.status_code == 302 and not SavedView.objects.exists()
    assert AuditEvent.objects.filter(verb="saved_view.deleted").count() == 1


def test_a_view_shared_with_a_queue_reaches_its_workers_and_nobody_else(reviewer, rex, bea, manager, claims_queue):
    client = signed_in(reviewer)
    query = f"view=unclaimed&queue={claims_queue.key}"
    # Rita does not manage the queue: no option to share, and a forged share is refused.
    assert "Share with the" not in text_of(client.get(f"/inbox/?{query}"))
    forged = client.post("/inbox/views/save/", {"name": "Claims to do", "query": query, "share": "1"})
    assert forged.status_code == 400 and "Only someone who manages the" in text_of(forged)
    assert not SavedView.objects.exists()

    ApprovalQueue.objects.filter(pk=claims_queue.pk).update(lead=reviewer)
    assert f"Share with the {claims_queue.name} queue" in text_of(client.get(f"/inbox/?{query}"))
    assert "Share with the" not in text_of(client.get("/inbox/")), "offered only with a queue filter"
    response = client.post("/inbox/views/save/", {"name": "Claims to do", "query": query, "share": "1"})
    assert response.status_code == 302
    view = SavedView.objects.get()
    assert view.shared_queue == claims_queue

    rex_page = text_of(signed_in(rex).get("/inbox/"))
    assert "Claims to do" in rex_page and f"shared with the {claims_queue.name} queue by Rita" in rex_page
    assert f"/inbox/views/{view.pk}/delete/" not in rex_page, "only its owner deletes it"
    refused = signed_in(rex).post(f"/inbox/views/{view.pk}/delete/")
    assert refused.status_code == 302 and flash(refused) == ["Only the person who saved a view can delete it."]
    for other in (bea, manager):
        assert "Claims to do" not in text_of(signed_in(other).get("/inbox/"))
        assert signed_in(other).post(f"/inbox/views/{view.pk}/delete/").status_code == 404
    assert SavedView.objects.filter(pk=view.pk).exists()


# --- the inbox's query count ---------------------------------------------------------------------------------------


def test_the_inbox_query_count_does_not_grow_with_items(
    analyst, team, reviewer, claims_queue, django_assert_max_num_queries
):
    ApprovalQueue.objects.filter(pk=claims_queue.pk).update(bulk_threshold=0.9)
    workflow = claim_workflow(analyst, team)
    client = signed_in(reviewer)
    client.post("/inbox/views/save/", {"name": "Mine", "query": "view=mine"})
    counts = []
    for total in (5, 30):
        while ApprovalRequest.objects.count() < total:
            parked_item(analyst, workflow, name=f"Claimant {ApprovalRequest.objects.count()}")
        client.get("/inbox/?view=unclaimed")  # warm the session
        # 17: the session, the user, her roles, her model permissions (2), the queues she works, the view's
        # total, its page of items, the filters' queues and workflows, the newest item, the views' counts (2),
        # her saved views, her right to work the queue, asked once for every row's bulk box (2), and her
        # absence today.
        with django_assert_max_num_queries(17) as captured:
            response = client.get("/inbox/?view=unclaimed")
        assert response.status_code == 200
        assert response.content.decode().count('name="items"') == min(total, 25)
        counts.append(len(captured))
    assert counts[0] == counts[1], f"an item more must not mean a query more: {counts}"
