"""The audit viewer: who may read the trail (admins and auditors; for everyone else it does not exist), the
filters by each field with bad values as form errors, keyset pages with a pinned query count, one event
with its place in its stream, and "Verify now" run by a real Celery worker."""

from __future__ import annotations

import os
import re
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from apps.audit.models import AuditEvent, AuditVerification
from apps.audit.selectors import audit_verify
from apps.audit.services import audit_anchor_write, audit_checkpoint_write, audit_record
from apps.audit.verification import audit_verification_run
from apps.runs.services import run_start

PAGES = ["audit:events", "audit:verify", "audit:export"]


@pytest.fixture(autouse=True)
def _checkpoints_in_tmp(settings, tmp_path):
    settings.AIOS_AUDIT_CHECKPOINT_DIR = tmp_path / "checkpoints"


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def listed_ids(response: Any) -> list[int]:
    return [int(pk) for pk in re.findall(r'href="/audit/events/(\d+)/"', response.content.decode())]


@pytest.fixture
def events(analyst, reviewer, claims_workflow, sample_claim) -> dict[str, Any]:
    """Events by several people about several objects: the fixtures' own, a run's, and a few by hand."""
    run, _ = run_start(actor=analyst, workflow=claims_workflow, inputs={"claim_text": sample_claim})
    audit_record(actor=reviewer, verb="approval.decided", target=claims_workflow, data={"decision": "approve"})
    return {"run": run, "workflow": claims_workflow}


# --- who may read it ----------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_admins_and_auditors_read_the_trail_and_everyone_else_gets_404(
    events, auditor, admin_user_role, analyst, reviewer, manager, outsider
):
    event = AuditEvent.objects.order_by("id").first()
    verification = AuditVerification.objects.create(requested_at=timezone.now(), requested_by_label="aude")
    urls = [
        *(reverse(name) for name in PAGES),
        reverse("audit:event", args=[event.pk]),
        reverse("audit:verification", args=[verification.pk]),
    ]
    for user in (auditor, admin_user_role):
        client = client_for(user)
        for url in urls:
            assert client.get(url).status_code == 200, (user.username, url)
        assert client.get(urls[0], HTTP_HX_REQUEST="true").status_code == 200
        assert 'href="/audit/"' in client.get("/").content.decode()  # the nav link
    for user in (analyst, reviewer, manager, outsider):
        client = client_for(user)
        for url in urls:
            assert client.get(url).status_code == 404, (user.username, url)
            assert client.get(url, HTTP_HX_REQUEST="true").status_code == 404, (user.username, url)
        assert client.post(reverse("audit:verify")).status_code == 404
        assert client.post(reverse("audit:export"), {"run": events["run"].pk}).status_code == 404
        assert 'href="/audit/"' not in client.get("/").content.decode()
    assert not AuditVerification.objects.exclude(pk=verification.pk).exists()
    assert not AuditEvent.objects.filter(verb__startswith="audit.").exists()
    anonymous = Client()
    for url in urls:
        response = anonymous.get(url)
        assert response.status_code == 302 and "/accounts/login/" in response["Location"]


# --- filters ------------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_list_filters_by_each_field(events, auditor, analyst, reviewer):
    client = client_for(auditor)
    everything = listed_ids(client.get("/audit/"))
    newest_first = list(AuditEvent.objects.order_by("-id").values_list("id", flat=True)[:50])
    assert everything == newest_first

    def only(query: dict[str, Any]) -> list[int]:
        response = client.get("/audit/", query)
        assert response.status_code == 200, (query, response.content.decode()[:2000])
        return listed_ids(response)

    by_reviewer = only({"actor": reviewer.username})
    assert by_reviewer == list(
        AuditEvent.objects.filter(actor_label=reviewer.username).order_by("-id").values_list("id", flat=True)
    )
    assert by_reviewer and AuditEvent.objects.get(pk=by_reviewer[0]).verb == "approval.decided"

    started = only({"verb": "run.started"})
    assert started == list(AuditEvent.objects.filter(verb="run.started").order_by("-id").values_list("id", flat=True))
    assert len(started) == 1

    workflow = events["workflow"]
    about = only({"target_type": "workflows.workflow", "target_id": str(workflow.pk)})
    expected = AuditEvent.objects.filter(target_type="workflows.workflow", target_id=str(workflow.pk))
    assert about == list(expected.order_by("-id").values_list("id", flat=True)) and len(about) >= 2

    run = events["run"]
    of_run = only({"run": run.pk})
    assert of_run == list(
        AuditEvent.objects.filter(stream=f"run:{run.pk}").order_by("-id").values_list("id", flat=True)
    )
    assert of_run
    assert only({"stream": f"run:{run.pk}"}) == of_run

    # A time range: from the run's first event (inclusive) until the reviewer's decision (exclusive).
    first_of_run = AuditEvent.objects.get(pk=of_run[-1])
    decision = AuditEvent.objects.get(pk=by_reviewer[0])
    window = only(
        {
            "since": first_of_run.created_at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-7],
            "until": (decision.created_at + timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S"),
        }
    )
    assert set(of_run) <= set(window) and decision.pk in window
    later = only({"since": (timezone.localtime() + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M")})
    assert later == []

    # Filters combine, and live in the URL: the htmx fragment is the same results without the page.
    combined = client.get("/audit/", {"actor": analyst.username, "run": run.pk}, HTTP_HX_REQUEST="true")
    fragment = combined.content.decode()
    assert "<html" not in fragment and "<table" in fragment
    assert set(listed_ids(combined)) == set(
        AuditEvent.objects.filter(stream=f"run:{run.pk}", actor_label=analyst.username).values_list("id", flat=True)
    )


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"verb": "workflow.teleported"}, "Select a valid choice."),
        ({"actor": "ghost"}, "No event was recorded for “ghost”."),
        ({"run": "abc"}, "Enter a whole number."),
        ({"run": "999999"}, "Run 999999 has no audit events."),
        ({"run": "-3"}, "Ensure this value is greater than or equal to 1."),
        ({"since": "2026-13-45"}, "Enter a valid date/time."),
        ({"since": "2026-12-06T10:00", "until": "2026-12-06T09:00"}, "Choose a time after"),
        ({"target_id": "7"}, "Choose the object type that the id belongs to."),
        ({"stream": "nope:1"}, "No stream has this name."),
        ({"before": "x"}, "Enter a whole number."),
        ({"run": "9" * 40}, "Ensure this value is less than or equal to"),
    ],
)
def test_bad_filter_values_are_form_errors(events, auditor, query, message):
    client = client_for(auditor)
    for headers in ({}, {"HTTP_HX_REQUEST": "true"}):
        response = client.get("/audit/", query, **headers)
        assert response.status_code == 400, query
        page = response.content.decode()
        assert message in page, page[:3000]
        assert listed_ids(response) == []


@pytest.mark.django_db
def test_pages_are_keyset_pages_and_cost_the_same_queries_however_many_events(
    events, auditor, django_assert_num_queries
):
    client = client_for(auditor)
    client.get("/audit/")  # the session and the permission cache warm up as they would in a browser

    def count_queries() -> int:
        from django.db import connection
        from django.test.utils import CaptureQueriesContext

        with CaptureQueriesContext(connection) as context:
            assert client.get("/audit/").status_code == 200
        return len(context.captured_queries)

    few = count_queries()
    for number in range(130):
        audit_record(actor=None, verb="system.ticked", data={"n": number})
    many = count_queries()
    assert few == many, (few, many)
    # Session, user, permissions (the user's and her groups'), the two lists of filter choices, one page of events.
    with django_assert_num_queries(7, info="the audit list page"):
        client.get("/audit/")

    first = client.get("/audit/", {"verb": "system.ticked"})
    ids = listed_ids(first)
    assert len(ids) == 50
    older = re.search(r'href="(/audit/\?[^"]*before=\d+[^"]*)"', first.content.decode())
    assert older is not None
    second = client.get(older.group(1).replace("&amp;", "&"))
    second_ids = listed_ids(second)
    assert len(second_ids) == 50 and max(second_ids) < min(ids)
    assert "verb=system.ticked" in older.group(1)  # the filters travel with the cursor
    assert all(AuditEvent.objects.get(pk=pk).verb == "system.ticked" for pk in second_ids)


# --- one event ------------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_event_page_shows_its_place_in_the_stream_and_its_anchor(events, auditor):
    run = events["run"]
    audit_record(actor=None, verb="step.succeeded", target=run, data={"step": "extract", "tokens": [12, 30]})
    audit_record(actor=None, verb="step.succeeded", target=run, data={"step": "decide"})
    stream = list(AuditEvent.objects.filter(stream=f"run:{run.pk}").order_by("stream_seq"))
    assert len(stream) >= 3
    event = stream[-2]
    client = client_for(auditor)
    page = client.get(f"/audit/events/{event.pk}/").content.decode()
    for text in (event.hash, event.prev_hash, stream[-3].hash, f"run:{run.pk}", f"#{event.stream_seq}"):
        assert text in page
    assert f'href="/audit/events/{stream[-3].pk}/"' in page  # the previous event
    assert f'href="/audit/events/{stream[-1].pk}/"' in page  # and the next
    assert '<th scope="row">tokens</th><td>12, 30</td>' in page
    assert f'href="/runs/{run.pk}/"' in page  # the object's page
    assert "View raw data (JSON)" in page and "<details" in page
    assert "Not yet" in page

    audit_anchor_write()
    page = client.get(f"/audit/events/{event.pk}/").content.decode()
    assert "anchor #1" in page.lower() and "No signed checkpoint covers it yet" in page
    audit_checkpoint_write()
    page = client.get(f"/audit/events/{event.pk}/").content.decode()
    assert "A signed checkpoint outside the database covers it" in page

    decided = AuditEvent.objects.get(verb="approval.decided")
    table = client.get(f"/audit/events/{decided.pk}/").content.decode()
    assert re.search(r"<th scope=\"row\">decision</th><td>approve</td>", table)
    assert client.get("/audit/events/999999999/").status_code == 404
    assert client.get(f"/audit/events/{10**30}/").status_code == 404  # past bigint: still a 404, not a 500
    assert client.get(f"/audit/verify/{10**30}/").status_code == 404


# --- verify now -----------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_verify_now_shows_problems_readably(events, auditor):
    """In-process (the worker's code path, minus the queue): a trail broken by its owner is shown broken, with
    the broken position named; the check itself is recorded."""
    from tests.audit.test_tamper import as_owner

    audit_checkpoint_write()
    target = AuditEvent.objects.filter(stream=f"run:{events['run'].pk}").order_by("stream_seq").first()
    with as_owner() as cursor:
        cursor.execute("UPDATE audit_auditevent SET data = %s WHERE id = %s", ['{"forged":true}', target.pk])
    verification = AuditVerification.objects.create(requested_at=timezone.now(), requested_by_id=auditor.pk)
    assert audit_verification_run(verification_id=verification.pk) is not None
    assert audit_verification_run(verification_id=verification.pk) is None  # a second delivery finds it taken
    verification.refresh_from_db()
    assert verification.state == "done" and verification.intact is False
    page = client_for(auditor).get(f"/audit/verify/{verification.pk}/").content.decode()
    assert "Broken: " in page
    assert f"stream run:{events['run'].pk} event #1" in page
    assert "content does not match its hash: the row was altered" in page
    recorded = AuditEvent.objects.get(verb="audit.verified")
    assert recorded.actor_label == auditor.username
    assert recorded.data_dict["intact"] is False and recorded.data_dict["problems"] >= 1


@pytest.mark.django_db(transaction=True)
def test_verify_now_runs_on_a_worker_and_the_page_follows_it(celery_worker_process, events, auditor):
    client = client_for(auditor)
    response = client.post("/audit/verify/")
    assert response.status_code == 302
    verification = AuditVerification.objects.get()
    assert response["Location"] == f"/audit/verify/{verification.pk}/"
    # Asking again while it is pending returns the same one.
    assert client.post("/audit/verify/")["Location"] == response["Location"]
    assert AuditVerification.objects.count() == 1
    page = client.get(response["Location"]).content.decode()
    assert 'hx-trigger="every 1s"' in page or "Intact" in page or "Broken" in page

    deadline = time.monotonic() + 120
    while True:
        fragment = client.get(response["Location"], HTTP_HX_REQUEST="true").content.decode()
        if "hx-trigger" not in fragment:
            break
        assert time.monotonic() < deadline, "the worker never finished the verification"
        time.sleep(0.2)
    verification.refresh_from_db()
    assert verification.state == "done", verification.error
    # The worker reads the checkpoints of its own settings; the verdict must be the verifier's own on them.
    from django.conf import settings
    from django.db import connection

    worker_root = os.environ.get("AIOS_AUDIT_CHECKPOINT_DIR") or Path(settings.AIOS_DATA_DIR) / "audit-checkpoints"
    worker_dir = Path(worker_root) / str(connection.settings_dict["NAME"])
    report = audit_verify(checkpoint_dir=worker_dir)
    assert verification.intact == report.intact
    assert verification.events_checked >= AuditEvent.objects.filter(verb__in=["run.started"]).count()
    if report.intact:
        assert "Intact" in fragment and "nothing was altered, inserted, removed or reordered" in fragment
    else:
        for problem in report.problems:
            assert problem.where in fragment
    verified = AuditEvent.objects.get(verb="audit.verified")
    assert verified.actor_label == auditor.username
    assert verified.data_dict["intact"] == verification.intact
    assert AuditEvent.objects.filter(verb="audit.verification_requested").count() == 1
