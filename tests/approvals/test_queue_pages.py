"""The queue pages and the queue API's writes, through what a lead, an admin and a reviewer use: the list in words,
one queue's settings as a form (plain text for those who only see it), rows that grow and shrink without
JavaScript, members added and removed (never the last person who could decide waiting items), who may write
what, and the list's query count, which must not grow with the number of queues."""

from __future__ import annotations

import html
import json

import pytest
from django.contrib.messages import get_messages
from django.test import Client
from django.utils.html import strip_tags
from guardian.shortcuts import get_groups_with_perms

from apps.accounts.services import team_create, user_create
from apps.approvals.models import ApprovalQueue
from apps.approvals.services import approval_queue_create, approval_queue_update
from apps.audit.models import AuditEvent
from tests.approvals.items import PASSWORD, api, claim_workflow, member, parked_item

pytestmark = pytest.mark.django_db

BERLIN_WEEK = {"time_zone": "Europe/Berlin", "working_days": [0, 1, 2, 3, 4], "day_start": "09:00", "day_end": "17:00"}


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def text_of(response) -> str:
    """The page's text without its tags, whitespace collapsed, so assertions read like what a person sees."""
    return " ".join(html.unescape(strip_tags(response.content.decode())).split())


def flash(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def audited(verb: str, queue: ApprovalQueue) -> list[dict]:
    events = AuditEvent.objects.filter(verb=verb, target_id=str(queue.pk)).order_by("pk")
    return [json.loads(event.data) for event in events]


@pytest.fixture
def claims_queue(team) -> ApprovalQueue:
    return ApprovalQueue.objects.get(key=team.group.name)


@pytest.fixture
def lena(team, claims_queue):
    """Lena reviews for Claims and leads its queue (she is no admin)."""
    user = member(team, "lena")
    ApprovalQueue.objects.filter(pk=claims_queue.pk).update(lead=user)
    claims_queue.refresh_from_db()
    return user


@pytest.fixture
def adam(admin_user_role):
    return admin_user_role


@pytest.fixture
def bea(db):
    """Bea reviews for Billing: the Claims queue does not exist for her."""
    user = user_create(username="bea", password=PASSWORD, roles=["reviewer"], first_name="Bea")
    team_create(name="Billing", members=[user])
    return user


def settings_post(lead, **overrides) -> dict:
    """A complete, valid settings form as the browser sends it, with `lead` (a person or None) as the lead."""
    body = {
        "name": "Claims approvals",
        "description": "Claims above the automatic limit.",
        "lead": str(lead.pk) if lead else "",
        "escalation_group": "",
        "hours_mode": "business",
        "time_zone": "Europe/Berlin",
        "working_days": ["0", "1", "2", "3", "4"],
        "day_start": "09:00",
        "day_end": "17:00",
        "holiday": ["2025-12-25"],
        "sla_hours": "4",
        "escalation_at": ["50", "100"],
        "escalation_action": ["remind", "reassign"],
        "policy": "k_of_n",
        "required_approvals": "2",
        "separation_of_duties": "1",
        "confirm_below": "85",
        "bulk_threshold": "",
        "audit_sample_rate": "5",
        "assignment": "round_robin",
        "reason_code": ["wrong_amount", "missing_document"],
        "reason_label": ["The amount is wrong", "A document is missing"],
        "save": "1",
    }
    body.update(overrides)
    return body


# --- the list -----------------------------------------------------------------------------------------------------


def test_the_list_words_each_queue_and_tells_her_part(lena, reviewer, adam, analyst, team, claims_queue):
    approval_queue_update(
        actor=lena, queue=claims_queue, calendar=BERLIN_WEEK, sla_hours=4, policy="k_of_n", required_approvals=2
    )
    parked_item(analyst, claim_workflow(analyst, team))
    page = text_of(signed_in(lena).get("/inbox/queues/"))
    assert "4 business hours, Mon–Fri 09:00–17:00 Europe/Berlin" in page
    assert "2 different reviewers must approve" in page
    assert "Claims approvals team:claims Claims Lena" in page
    assert "1 item waiting" in page
    assert "You manage it" in page and "You work it" in page
    assert "New queue" not in page  # a lead is no admin

    rita = text_of(signed_in(reviewer).get("/inbox/queues/"))
    assert "Claims approvals" in rita and "You work it" in rita and "You manage it" not in rita

    admin_page = signed_in(adam).get("/inbox/queues/")
    assert admin_page.status_code == 200 and "New queue" in text_of(admin_page)


def test_a_queue_without_due_time_says_so(lena, claims_queue):
    approval_queue_update(actor=lena, queue=claims_queue, sla_hours=None, calendar={})
    assert "No due time" in text_of(signed_in(lena).get("/inbox/queues/"))
    approval_queue_update(actor=lena, queue=claims_queue, sla_hours=8)
    assert "8 hours, around the clock" in text_of(signed_in(lena).get("/inbox/queues/"))


def test_the_list_is_empty_for_an_outsider_and_shows_no_other_teams_queue(outsider, bea, claims_queue):
    assert "No queues are shared with you yet" in text_of(signed_in(outsider).get("/inbox/queues/"))
    page = text_of(signed_in(bea).get("/inbox/queues/"))
    assert "Billing approvals" in page and "Claims approvals" not in page


def test_the_list_query_count_does_not_grow_with_queues(reviewer, team, claims_queue, django_assert_max_num_queries):
    client = signed_in(reviewer)
    counts = []
    for total in (3, 12):
        while ApprovalQueue.objects.count() < total:
            number = ApprovalQueue.objects.count()
            approval_queue_create(
                actor=None,
                key=f"extra-{number}",
                name=f"Extra {number}",
                team=team,
                workers=[team.group],
                calendar=BERLIN_WEEK,
                sla_hours=number,
            )
        client.get("/inbox/queues/")  # warm the session
        # 9: the session, the user, her roles, her model permissions (2), the queues she works, the queues with
        # their team, lead and waiting items, and those she manages (2).
        with django_assert_max_num_queries(9) as captured:
            response = client.get("/inbox/queues/")
        assert response.status_code == 200
        assert text_of(response).count("You work it") == total
        counts.append(len(captured))
    assert counts[0] == counts[1], f"a queue more must not mean a query more: {counts}"


# --- one queue's settings -------------------------------------------------------------------------------------------


def test_the_lead_gets_a_form_the_reviewer_reads_text_and_an_outsider_gets_404(
    lena, reviewer, adam, outsider, bea, claims_queue
):
    approval_queue_update(actor=lena, queue=claims_queue, calendar=BERLIN_WEEK, sla_hours=4, confirm_below=0.85)
    for person in (lena, adam):
        page = signed_in(person).get("/inbox/queues/team:claims/")
        assert page.status_code == 200
        markup = page.content.decode()
        assert 'name="sla_hours" value="4"' in markup and 'name="confirm_below" value="85"' in markup
        assert 'value="Europe/Berlin" selected' in markup and "Members" in markup
    read = signed_in(reviewer).get("/inbox/queues/team:claims/")
    assert read.status_code == 200
    assert "<input" not in read.content.decode().split('id="settings-heading"')[1]
    page = text_of(read)
    assert "Only the queue's lead or an admin can change these." in page
    assert "4 business hours, Mon–Fri 09:00–17:00 Europe/Berlin" in page and "85 % confidence" in page
    assert "Add a member" not in page
    for stranger in (outsider, bea):
        assert signed_in(stranger).get("/inbox/queues/team:claims/").status_code == 404
        assert signed_in(stranger).post("/inbox/queues/team:claims/", settings_post(lena)).status_code == 404


def test_a_settings_post_with_several_mistakes_keeps_the_input_shows_each_error_and_saves_nothing(lena, claims_queue):
    before = ApprovalQueue.objects.filter(pk=claims_queue.pk).values().get()
    body = settings_post(
        lena,
        name="",
        sla_hours="four",
        confirm_below="150",
        time_zone="Mars/Olympus",
        escalation_at=["50", "0"],
        escalation_action=["remind", "notify_lead"],
        reason_code=["wrong amount", "wrong_amount"],
        reason_label=["Amount", "Amount again"],
        policy="k_of_n",
        required_approvals="two",
    )
    response = signed_in(lena).post("/inbox/queues/team:claims/", body)
    assert response.status_code == 400
    page = text_of(response)
    markup = response.content.decode()
    assert "Nothing was saved." in page
    for message in (
        "Give the queue a name of at most 150 characters.",
        "Enter a number of business hours, e.g. 8, or leave it empty for no due time.",
        "Enter a percentage from 0 to 100.",
        "Unknown time zone 'Mars/Olympus'.",
        "Enter a percentage of the due time above 0 and at most 300.",
        "Use letters, digits, - and _ (at most 64).",
        "Enter a whole number from 1 to 20.",
    ):
        assert message in page, message
    # Each row's problem sits under that row: step 2 and reason 1.
    assert 'id="escalation-error-1"' in markup and 'id="escalation-error-0"' not in markup
    assert 'id="reason-error-0"' in markup
    # What she typed is still there.
    for kept in ('value="four"', 'value="150"', 'value="wrong amount"', 'value="Amount again"', 'value="two"'):
        assert kept in markup, kept
    assert ApprovalQueue.objects.filter(pk=claims_queue.pk).values().get() == before
    assert audited("approval_queue.updated", claims_queue) == []


def test_a_valid_settings_post_saves_converts_units_and_audits(lena, adam, claims_queue):
    supervisors = team_create(name="Supervisors", members=[])
    body = settings_post(lena, escalation_group=str(supervisors.group.pk))
    response = signed_in(lena).post("/inbox/queues/team:claims/", body, follow=True)
    assert response.status_code == 200
    assert 'Saved the settings of "Claims approvals".' in text_of(response)
    claims_queue.refresh_from_db()
    assert claims_queue.calendar == {**BERLIN_WEEK, "holidays": ["2025-12-25"]}
    assert claims_queue.sla_hours == 4
    assert claims_queue.escalation == [{"at": 0.5, "action": "remind"}, {"at": 1.0, "action": "reassign"}]
    assert (claims_queue.policy, claims_queue.required_approvals, claims_queue.separation_of_duties) == (
        "k_of_n",
        2,
        True,
    )
    assert (claims_queue.confirm_below, claims_queue.bulk_threshold, claims_queue.audit_sample_rate) == (
        0.85,
        None,
        0.05,
    )
    assert claims_queue.assignment == "round_robin"
    assert claims_queue.reason_codes == [
        {"code": "wrong_amount", "label": "The amount is wrong"},
        {"code": "missing_document", "label": "A document is missing"},
    ]
    assert claims_queue.lead == lena and claims_queue.escalation_group == supervisors.group
    changed = {
        name: change
        for event in audited("approval_queue.updated", claims_queue)
        for name, change in event["changed"].items()
    }
    assert changed["sla_hours"] == [None, 4.0] and changed["confirm_below"] == [0.9, 0.85]
    assert changed["escalation_group"] == [None, "team:supervisors"]
    # The page shows what was saved, in the form's units.
    markup = response.content.decode()
    assert 'name="confirm_below" value="85"' in markup and 'name="escalation_at" value="50"' in markup
    # Around the clock, with midnight as the closing time written 00:00.
    signed_in(lena).post("/inbox/queues/team:claims/", settings_post(lena, hours_mode="always"))
    claims_queue.refresh_from_db()
    assert claims_queue.calendar == {}
    signed_in(lena).post("/inbox/queues/team:claims/", settings_post(lena, day_start="00:00", day_end="00:00"))
    claims_queue.refresh_from_db()
    assert (claims_queue.calendar["day_start"], claims_queue.calendar["day_end"]) == ("00:00", "24:00")


def test_rows_are_added_and_removed_without_javascript_keeping_the_input(lena, claims_queue):
    client = signed_in(lena)
    added = client.post("/inbox/queues/team:claims/", settings_post(lena, name="Typed, not saved", add_row="holidays"))
    assert added.status_code == 200
    markup = added.content.decode()
    assert markup.count('name="holiday"') == 2 and 'id="holiday-1"' in markup and "autofocus" in markup
    assert 'value="Typed, not saved"' in markup
    added = client.post("/inbox/queues/team:claims/", settings_post(lena, add_row="escalation"))
    assert added.content.decode().count('name="escalation_at"') == 3
    added = client.post("/inbox/queues/team:claims/", settings_post(lena, add_row="reasons"))
    assert added.content.decode().count('name="reason_code"') == 3

    removed = client.post("/inbox/queues/team:claims/", settings_post(lena, remove_row="escalation-0"))
    markup = removed.content.decode()
    assert markup.count('name="escalation_at"') == 1 and 'name="escalation_at" value="100"' in markup
    removed = client.post("/inbox/queues/team:claims/", settings_post(lena, remove_row="reasons-1"))
    assert "missing_document" not in removed.content.decode()
    claims_queue.refresh_from_db()
    assert claims_queue.name == "Claims approvals" and claims_queue.escalation == []  # nothing was saved
    # A blank row left behind means nothing when the form is saved.
    client.post("/inbox/queues/team:claims/", settings_post(lena, holiday=["", "2025-12-26"]))
    claims_queue.refresh_from_db()
    assert claims_queue.calendar["holidays"] == ["2025-12-26"]


# --- members ------------------------------------------------------------------------------------------------------


def test_members_through_the_page_with_the_last_worker_refusal(lena, analyst, outsider, team, claims_queue):
    client = signed_in(lena)
    page = text_of(client.get("/inbox/queues/team:claims/"))
    assert "Claims team Group · 3 people, 2 with the reviewer role Works its items Names it in approval steps" in page

    # Otto has no reviewer role: he is listed, with what he lacks.
    response = client.post(
        "/inbox/queues/team:claims/members/", {"action": "add", "member": f"user:{outsider.pk}", "right": "work"}
    )
    assert response.status_code == 302 and flash(response) == ["Otto: works its items."]
    page = text_of(client.get("/inbox/queues/team:claims/"))
    assert (
        "Otto Person · otto Works its items ⚠ Cannot work items until an admin gives this person the reviewer role."
        in page
    )
    assert audited("approval_queue.member_added", claims_queue)[-1] == {
        "user": "otto",
        "right": "work",
        "note": "no reviewer role",
    }

    # An item waits: the team is the only way anyone works the queue, so it stays.
    parked_item(analyst, claim_workflow(analyst, team))
    group = f"group:{team.group.pk}"
    refused = client.post("/inbox/queues/team:claims/members/", {"action": "remove", "member": group})
    assert refused.status_code == 400
    assert 'Nobody else can work the "Claims approvals" queue and 1 item is waiting in it' in text_of(refused)
    assert team.group in get_groups_with_perms(claims_queue)

    # With Rex working it himself, the team may go.
    rex = member(team, "rex")
    client.post("/inbox/queues/team:claims/members/", {"action": "add", "member": f"user:{rex.pk}", "right": "work"})
    removed = client.post("/inbox/queues/team:claims/members/", {"action": "remove", "member": group})
    assert removed.status_code == 302 and flash(removed)[-1] == "Removed the Claims team from the queue."
    assert team.group not in get_groups_with_perms(claims_queue)
    assert audited("approval_queue.member_removed", claims_queue) == [
        {"group": "team:claims", "rights": ["work", "use"]}
    ]


def test_members_through_the_api(lena, adam, reviewer, analyst, team, claims_queue):
    url = "/api/approval-queues/team:claims/members/"
    listed = api(lena).get(url)
    assert listed.status_code == 200
    assert listed.json()["count"] == 1 and listed.json()["next"] is None
    assert listed.json()["results"] == [
        {
            "kind": "group",
            "user": None,
            "group": "team:claims",
            "name": "Claims team",
            "rights": ["work", "use"],
            "can_work": True,
            "note": "",
            "people": 3,
            "reviewers": 2,
        }
    ]
    added = api(adam).post(url, {"user": "rita", "right": "use"}, format="json")
    assert added.status_code == 201
    people = {row["user"]: row["rights"] for row in added.json()["results"] if row["kind"] == "person"}
    assert people == {"rita": ["use"]}
    assert api(adam).post(url, {"user": "rita", "right": "use"}, format="json").status_code == 200  # no change
    assert api(adam).post(url, {"user": "rita", "group": "team:claims"}, format="json").status_code == 400
    assert api(adam).post(url, {"user": "nobody"}, format="json").status_code == 400

    parked_item(analyst, claim_workflow(analyst, team))
    refused = api(lena).delete(url, {"group": "team:claims", "right": "work"}, format="json")
    assert refused.status_code == 400
    assert "nobody could decide them" in json.dumps(refused.json())
    gone = api(lena).delete(url, {"group": "team:claims", "right": "use"}, format="json")
    assert gone.status_code == 200
    assert [row["rights"] for row in gone.json()["results"] if row["kind"] == "group"] == [["work"]]
    assert api(lena).delete(url, {"user": "ana"}, format="json").status_code == 400  # not a member


# --- who may write what ---------------------------------------------------------------------------------------------


def test_admins_create_queues_through_the_page_and_the_api(adam, lena, team):
    response = signed_in(adam).post(
        "/inbox/queues/", {"key": "claims-large", "name": "Large claims", "team": str(team.pk), "lead": str(lena.pk)}
    )
    assert response.status_code == 302 and response["Location"] == "/inbox/queues/claims-large/"
    queue = ApprovalQueue.objects.get(key="claims-large")
    assert queue.lead == lena and set(get_groups_with_perms(queue, attach_perms=True)[team.group]) == {
        "work_approvalqueue",
        "use_approvalqueue",
    }
    taken = signed_in(adam).post("/inbox/queues/", {"key": "claims-large", "name": "Again"})
    assert taken.status_code == 400 and 'A queue "claims-large" already exists.' in text_of(taken)
    assert 'value="Again"' in taken.content.decode()

    created = api(adam).post(
        "/api/approval-queues/",
        {"key": "payments", "name": "Payments", "team": "claims", "lead": "lena", "sla_hours": 8, "policy": "all"},
        format="json",
    )
    assert created.status_code == 201, created.json()
    assert (created.json()["lead"], created.json()["sla_hours"], created.json()["policy"]) == ("lena", 8.0, "all")
    bad = api(adam).post("/api/approval-queues/", {"key": "x y", "name": "Bad", "sla_hours": -1}, format="json")
    assert bad.status_code == 400
    assert audited("approval_queue.created", ApprovalQueue.objects.get(key="payments"))


@pytest.mark.parametrize("persona", ["lead", "reviewer", "analyst", "manager", "outsider", "anonymous"])
def test_writes_by_persona_change_nothing_unless_she_manages_the_queue(
    persona, lena, reviewer, analyst, manager, outsider, team, claims_queue
):
    people = {"lead": lena, "reviewer": reviewer, "analyst": analyst, "manager": manager, "outsider": outsider}
    client = Client()
    rest = api(people[persona]) if persona != "anonymous" else None
    if persona != "anonymous":
        client.force_login(people[persona])
    before = ApprovalQueue.objects.filter(pk=claims_queue.pk).values().get()
    grants = dict(get_groups_with_perms(claims_queue, attach_perms=True))

    # Page writes: settings, a row more, a member more or less, a new queue.
    writes = [
        ("/inbox/queues/team:claims/", settings_post(lena, name="Renamed")),
        ("/inbox/queues/team:claims/", settings_post(lena, add_row="holidays")),
        ("/inbox/queues/team:claims/members/", {"action": "add", "member": f"group:{team.group.pk}", "right": "work"}),
        ("/inbox/queues/team:claims/members/", {"action": "remove", "member": f"user:{reviewer.pk}"}),
    ]
    # Those who cannot see the queue may not learn it exists (404); those who see it are told no (403).
    sees = persona in ("lead", "reviewer", "analyst")
    refused = {"anonymous": 302}.get(persona, 403 if sees else 404)
    for url, body in writes:
        status = client.post(url, body).status_code
        if persona == "lead":
            assert status in (200, 302, 400), url
        else:
            assert status == refused, f"{persona} POST {url}"
    assert client.post("/inbox/queues/", {"key": "mine", "name": "Mine"}).status_code == (
        302 if persona == "anonymous" else 403
    )

    # API writes.
    if rest is not None:
        url = "/api/approval-queues/team:claims/"
        api_refused = 403 if sees else 404
        assert rest.post("/api/approval-queues/", {"key": "mine", "name": "Mine"}, format="json").status_code == 403
        if persona != "lead":
            assert rest.patch(url, {"name": "Renamed"}, format="json").status_code == api_refused
            assert rest.post(f"{url}members/", {"user": "ana"}, format="json").status_code == api_refused
            assert rest.delete(f"{url}members/", {"group": "team:claims"}, format="json").status_code == api_refused
    assert not ApprovalQueue.objects.filter(key="mine").exists()
    if persona != "lead":
        assert ApprovalQueue.objects.filter(pk=claims_queue.pk).values().get() == before
        assert dict(get_groups_with_perms(claims_queue, attach_perms=True)) == grants
        assert audited("approval_queue.updated", claims_queue) == []
        assert audited("approval_queue.member_added", claims_queue) == []
