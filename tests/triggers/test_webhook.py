"""Signed webhooks: a good request starts one run (202), a repeat answers with it (200); a bad, old or future
signature, a paused trigger, a wrong body or an oversized one is refused with a short JSON reason, a history row
and an audit event, and starts nothing."""

from __future__ import annotations

import json
import time
from io import StringIO

import pytest
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from apps.audit.models import AuditEvent
from apps.core.secrets import secret_decrypt
from apps.runs.models import Run, TriggerFiring, WebhookReceipt
from apps.runs.triggers import trigger_create, trigger_pause, trigger_secret_rotate
from apps.workflows.models import Trigger
from apps.workflows.triggers import webhook_signature

pytestmark = pytest.mark.django_db


@pytest.fixture
def hook(analyst, ticket_workflow):
    trigger, secret = trigger_create(actor=analyst, workflow=ticket_workflow, kind="webhook", name="Helpdesk")
    return trigger, secret


def post(
    trigger, secret, payload, *, timestamp=None, key="", signature=None, content_type="application/json", raw=None
):
    body = raw if raw is not None else json.dumps(payload).encode()
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    headers = {
        "HTTP_X_AIOS_TIMESTAMP": stamp,
        "HTTP_X_AIOS_SIGNATURE": signature or webhook_signature(secret, stamp, body, idempotency_key=key),
    }
    if key:
        headers["HTTP_IDEMPOTENCY_KEY"] = key
    return Client().post(reverse("hooks:receive", args=[trigger.token]), body, content_type=content_type, **headers)


def refused(trigger) -> list[str]:
    return list(TriggerFiring.objects.filter(trigger=trigger, outcome="refused").values_list("detail", flat=True))


def test_a_signed_request_starts_a_run_as_the_trigger_creator(hook, analyst, ticket_workflow):
    trigger, secret = hook
    assert secret.startswith("whsec_") and secret not in trigger.secret and secret_decrypt(trigger.secret) == secret
    response = post(trigger, secret, {"subject": "Printer on fire", "priority": 2}, key="t-1")
    assert response.status_code == 202, response.content
    body = response.json()
    run = Run.objects.get(pk=body["run"])
    assert body["url"].endswith(f"/runs/{run.pk}/") and body["duplicate"] is False
    assert (
        run.trigger == "webhook"
        and run.initiator == analyst
        and run.inputs == {"subject": "Printer on fire", "body": "", "priority": 2}
    )
    [firing] = TriggerFiring.objects.filter(trigger=trigger)
    assert firing.outcome == "started" and firing.run == run
    assert AuditEvent.objects.filter(verb="trigger.started", target_id=str(trigger.pk)).exists()
    assert AuditEvent.objects.filter(
        verb="run.started", target_id=str(run.pk), data__contains='"trigger":"webhook"'
    ).exists()


def test_the_same_idempotency_key_gives_the_same_run_and_another_body_is_422(hook, ticket_workflow):
    trigger, secret = hook
    first = post(trigger, secret, {"subject": "Broken chair"}, key="k-7")
    again = post(trigger, secret, {"subject": "Broken chair"}, key="k-7")
    assert first.status_code == 202 and again.status_code == 200
    assert again.json()["run"] == first.json()["run"] and again.json()["duplicate"] is True
    other = post(trigger, secret, {"subject": "Broken table"}, key="k-7")
    assert other.status_code == 422 and "different request" in other.json()["detail"]
    assert Run.objects.filter(workflow=ticket_workflow).count() == 1
    outcomes = list(TriggerFiring.objects.filter(trigger=trigger).order_by("pk").values_list("outcome", flat=True))
    assert outcomes == ["started", "duplicate", "refused"]


def test_a_replayed_request_without_a_key_starts_nothing_new(hook, ticket_workflow):
    trigger, secret = hook
    stamp = int(time.time())
    first = post(trigger, secret, {"subject": "Lost badge"}, timestamp=stamp)
    replay = post(trigger, secret, {"subject": "Lost badge"}, timestamp=stamp)
    assert first.status_code == 202 and replay.status_code == 200 and replay.json()["run"] == first.json()["run"]
    assert Run.objects.filter(workflow=ticket_workflow).count() == 1


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("bad_signature", "The signature does not match the timestamp, Idempotency-Key and body."),
        ("old", "s old; requests older than 300 s are refused."),
        ("future", "s in the future"),
        ("missing", "headers are required"),
        ("other_secret", "The signature does not match"),
        ("tampered_body", "The signature does not match"),
    ],
)
def test_bad_or_old_signatures_are_401_with_an_audit_event_and_no_run(hook, ticket_workflow, case, reason):
    trigger, secret = hook
    payload = {"subject": "Refund please"}
    now = int(time.time())
    if case == "bad_signature":
        response = post(trigger, secret, payload, signature="sha256=" + "0" * 64)
    elif case == "old":
        response = post(trigger, secret, payload, timestamp=now - 301)
    elif case == "future":
        response = post(trigger, secret, payload, timestamp=now + 400)
    elif case == "missing":
        response = Client().post(
            reverse("hooks:receive", args=[trigger.token]), payload, content_type="application/json"
        )
    elif case == "other_secret":
        response = post(trigger, "whsec_guess", payload)
    else:
        body = json.dumps(payload).encode()
        signature = webhook_signature(secret, str(now), body)
        response = post(
            trigger,
            secret,
            None,
            raw=json.dumps({"subject": "Refund, twice"}).encode(),
            timestamp=now,
            signature=signature,
        )
    assert response.status_code == 401
    assert reason in response.json()["detail"]
    assert not Run.objects.exists()
    assert reason in refused(trigger)[0]
    event = AuditEvent.objects.get(verb="trigger.refused", target_id=str(trigger.pk))
    assert reason in json.loads(event.data)["detail"] and secret not in event.data


def test_a_rotated_secret_refuses_the_old_one(hook, analyst):
    trigger, old = hook
    new = trigger_secret_rotate(actor=analyst, trigger=trigger)
    assert new != old
    assert post(trigger, old, {"subject": "Old secret"}).status_code == 401
    assert post(trigger, new, {"subject": "New secret"}).status_code == 202


def test_a_paused_webhook_is_409_and_recorded(hook, analyst):
    trigger, secret = hook
    trigger_pause(actor=analyst, trigger=trigger)
    response = post(trigger, secret, {"subject": "While paused"})
    assert response.status_code == 409 and "paused" in response.json()["detail"]
    assert not Run.objects.exists() and "paused" in refused(trigger)[0]


def test_input_that_does_not_fit_is_400_with_the_schema_errors(hook):
    trigger, secret = hook
    response = post(trigger, secret, {"subject": "ok subject", "priority": 9, "colour": "red"})
    assert response.status_code == 400
    fields = response.json()["fields"]
    assert fields["colour"] == ["This field is not part of the workflow's input."]
    assert "less than or equal to 5" in fields["priority"][0]
    assert not Run.objects.exists()
    assert "does not fit the workflow's input" in refused(trigger)[0]


def test_wrong_bodies_are_refused_before_any_run(hook, settings):
    trigger, secret = hook
    assert (
        post(trigger, secret, None, raw=b"subject=x", content_type="application/x-www-form-urlencoded").status_code
        == 415
    )
    assert post(trigger, secret, None, raw=b"{not json").status_code == 400
    assert post(trigger, secret, None, raw=b"[1, 2]").status_code == 400
    big = json.dumps({"subject": "x" * (300 * 1024)}).encode()
    assert post(trigger, secret, None, raw=big).status_code == 413
    assert Client().get(reverse("hooks:receive", args=[trigger.token])).status_code == 405
    assert (
        Client()
        .post(reverse("hooks:receive", args=["nosuchtoken"]), b"{}", content_type="application/json")
        .status_code
        == 404
    )
    assert not Run.objects.exists()
    assert len(refused(trigger)) == 4


def test_the_webhook_needs_no_csrf_token_and_no_sign_in(hook):
    trigger, secret = hook
    client = Client(enforce_csrf_checks=True)
    body = json.dumps({"subject": "No cookie at all"}).encode()
    stamp = str(int(time.time()))
    response = client.post(
        reverse("hooks:receive", args=[trigger.token]),
        body,
        content_type="application/json",
        HTTP_X_AIOS_TIMESTAMP=stamp,
        HTTP_X_AIOS_SIGNATURE=webhook_signature(secret, stamp, body),
    )
    assert response.status_code == 202


OLD_KEY, NEW_KEY = "old-credentials-key-0123456789", "new-credentials-key-9876543210"


def test_key_rotation_re_encrypts_webhook_secrets_and_signed_requests_still_start_runs(
    settings, analyst, ticket_workflow
):
    # The documented rotation: new key first, `credentials_rotate`, then drop the old key.
    settings.AIOS_CREDENTIALS_KEYS = [OLD_KEY]
    trigger, secret = trigger_create(actor=analyst, workflow=ticket_workflow, kind="webhook", name="Rotated")
    stored_before = trigger.secret
    settings.AIOS_CREDENTIALS_KEYS = [NEW_KEY, OLD_KEY]
    out = StringIO()
    call_command("credentials_rotate", stdout=out)
    assert "1 webhook signing secret(s)" in out.getvalue()
    settings.AIOS_CREDENTIALS_KEYS = [NEW_KEY]
    trigger.refresh_from_db()
    assert trigger.secret != stored_before and secret_decrypt(trigger.secret) == secret
    response = post(trigger, secret, {"subject": "After the rotation"}, key="rot-1")
    assert response.status_code == 202, response.content
    assert Run.objects.filter(workflow=ticket_workflow).count() == 1


def test_a_secret_no_key_can_read_is_a_recorded_503_not_a_server_error(settings, analyst, ticket_workflow):
    settings.AIOS_CREDENTIALS_KEYS = ["a-key-that-will-be-lost-000000"]
    trigger, secret = trigger_create(actor=analyst, workflow=ticket_workflow, kind="webhook", name="Orphaned")
    settings.AIOS_CREDENTIALS_KEYS = [NEW_KEY]  # the old key dropped without rotating
    client = Client(raise_request_exception=True)
    body = json.dumps({"subject": "Nobody can check me"}).encode()
    stamp = str(int(time.time()))
    response = client.post(
        reverse("hooks:receive", args=[trigger.token]),
        body,
        content_type="application/json",
        HTTP_X_AIOS_TIMESTAMP=stamp,
        HTTP_X_AIOS_SIGNATURE=webhook_signature(secret, stamp, body),
    )
    assert response.status_code == 503
    assert "signing secret cannot be read" in response.json()["detail"]
    assert not Run.objects.exists()
    [detail] = refused(trigger)
    assert "rotate the secret" in detail
    event = AuditEvent.objects.get(verb="trigger.refused", target_id=str(trigger.pk))
    assert "cannot be read" in json.loads(event.data)["detail"] and secret not in event.data
    # Past the limit of recorded refusals the reason stays, and promises nothing it cannot keep.
    settings.AIOS_WEBHOOK_REFUSALS_PER_MINUTE = 1
    again = post(trigger, secret, {"subject": "Nobody can check me"})
    if again.status_code == 503:  # the first refusal fell in the minute before
        again = post(trigger, secret, {"subject": "Nobody can check me"})
    assert again.status_code == 429 and "signing secret cannot be read" in again.json()["detail"]
    assert again.json()["detail"].endswith("so this one is not recorded.")


def test_a_captured_request_resent_with_other_idempotency_keys_starts_no_second_run(hook, ticket_workflow):
    """The Idempotency-Key is signed: a captured request (same body, same timestamp, same signature) resent inside
    the replay window with a fresh key each time is refused, so it cannot start a run per key."""
    trigger, secret = hook
    body = json.dumps({"subject": "Pay invoice 88"}).encode()
    stamp = str(int(time.time()))
    captured = webhook_signature(secret, stamp, body, idempotency_key="inv-88")
    first = post(trigger, secret, None, raw=body, timestamp=stamp, key="inv-88", signature=captured)
    assert first.status_code == 202, first.content
    for fresh in ("inv-88-a", "inv-88-b", "x" * 40):
        replay = post(trigger, secret, None, raw=body, timestamp=stamp, key=fresh, signature=captured)
        assert replay.status_code == 401 and "does not match" in replay.json()["detail"]
    # Dropping the key does not help either: the signature covered it.
    assert post(trigger, secret, None, raw=body, timestamp=stamp, signature=captured).status_code == 401
    assert Run.objects.filter(workflow=ticket_workflow).count() == 1


def test_the_exact_same_signed_request_twice_is_answered_with_its_first_run(hook, ticket_workflow, settings):
    from apps.runs.sweeper import sweep

    trigger, secret = hook
    body = json.dumps({"subject": "Door stuck"}).encode()
    stamp = int(time.time())
    first = post(trigger, secret, None, raw=body, timestamp=stamp, key="door-1")
    again = post(trigger, secret, None, raw=body, timestamp=stamp, key="door-1")
    assert first.status_code == 202 and again.status_code == 200
    assert again.json()["run"] == first.json()["run"] and again.json()["duplicate"] is True
    assert "this exact request" in again.json()["detail"]
    [receipt] = WebhookReceipt.objects.filter(trigger=trigger)
    assert receipt.run_id == first.json()["run"] and len(receipt.digest) == 64
    assert Run.objects.filter(workflow=ticket_workflow).count() == 1
    # Once the timestamp has left the replay window the receipt is forgotten (the request would be 401 anyway).
    from datetime import UTC, datetime

    assert sweep(now=datetime.fromtimestamp(stamp + 200, tz=UTC))["webhook_receipts_pruned"] == 0
    assert sweep(now=datetime.fromtimestamp(stamp + 400, tz=UTC))["webhook_receipts_pruned"] == 1
    assert not WebhookReceipt.objects.exists()


def _example(page: str, element_id: str) -> str:
    import html
    import re

    match = re.search(rf'<pre id="{element_id}">(.*?)</pre>', page, re.S)
    assert match, element_id
    return html.unescape(match.group(1))


def test_the_signing_examples_on_the_trigger_page_produce_accepted_requests(analyst, ticket_workflow):
    """The curl and Python examples the page shows, run as written (up to the request itself), sign requests
    this server accepts."""
    import subprocess

    client = Client()
    client.force_login(analyst)
    page = client.post(
        reverse("runs:trigger-new", args=[ticket_workflow.slug, "webhook"]), {"name": "Documented"}
    ).content.decode()
    trigger = Trigger.objects.get(name="Documented")

    shell = _example(page, "example-curl").split("curl -X POST")[0]
    out = subprocess.run(
        ["bash", "-c", shell + 'printf "%s\\n%s\\n%s\\n%s" "$TS" "$SIG" "$KEY" "$BODY"'],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n", 3)
    stamp, signature, key, body = out
    curl = post(trigger, "", None, raw=body.encode(), timestamp=stamp, key=key, signature="sha256=" + signature)
    assert curl.status_code == 202, curl.content

    python = _example(page, "example-python").split("request = urllib.request.Request")[0]
    names: dict = {}
    exec(compile(python, "example-python", "exec"), names)  # the page's own code, stopped before it sends
    answer = post(
        trigger,
        "",
        None,
        raw=names["body"],
        timestamp=names["timestamp"],
        key=names["key"] + "-python",
        signature="sha256=" + names["signature"],
    )
    assert answer.status_code == 401  # another key than the one signed is refused
    answer = post(
        trigger,
        "",
        None,
        raw=names["body"],
        timestamp=names["timestamp"],
        key=names["key"],
        signature="sha256=" + names["signature"],
    )
    assert answer.status_code == 200 and answer.json()["duplicate"] is True  # the same key as the curl example


def _inside_one_minute(margin: int = 20) -> int:
    """The start of the current minute, after waiting for the next one when fewer than `margin` seconds are left,
    so a burst of requests falls in one window of the refusal limit."""
    now = time.time()
    if now % 60 > 60 - margin:
        time.sleep(60 - now % 60 + 0.05)
    return int(time.time()) // 60 * 60


def test_refusals_past_the_limit_are_429_unrecorded_then_summed_up_and_signed_requests_still_start_runs(
    hook, ticket_workflow, settings
):
    """Junk sent to a known URL fills neither the history nor the audit trail: past the limit each refused
    request is a 429 with Retry-After that writes nothing, one summary says how many when the minute ends, and the
    sender who signs correctly is not locked out meanwhile."""
    from datetime import UTC, datetime, timedelta

    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from apps.runs.sweeper import sweep

    settings.AIOS_WEBHOOK_REFUSALS_PER_MINUTE = 5
    trigger, secret = hook
    window = _inside_one_minute()
    junk = "sha256=" + "0" * 64
    answers = [post(trigger, secret, {"subject": "Junk"}, signature=junk) for _ in range(8)]
    good = post(trigger, secret, {"subject": "Printer on fire"}, key="real-1")
    with CaptureQueriesContext(connection) as limited:
        answers.append(post(trigger, secret, {"subject": "Junk"}, signature=junk))
    big = json.dumps({"subject": "x" * (300 * 1024)}).encode()
    answers.append(post(trigger, secret, None, raw=big))
    assert window == int(time.time()) // 60 * 60, "the burst crossed a minute"

    assert [answer.status_code for answer in answers] == [401] * 5 + [429] * 5
    assert good.status_code == 202 and Run.objects.get(pk=good.json()["run"]).inputs["subject"] == "Printer on fire"
    detail = answers[-2].json()["detail"]
    assert "The signature does not match" in detail and "this one is not recorded" in detail
    assert "correctly signed requests are still accepted" in detail
    assert all(1 <= int(answer["Retry-After"]) <= 60 for answer in answers[5:])
    assert "Retry-After" not in answers[0]
    # Past the limit a refusal reads the trigger and writes nothing.
    assert not [query for query in limited.captured_queries if query["sql"].lstrip().upper().startswith("INSERT")]
    assert len(refused(trigger)) == 5
    refusal_events = AuditEvent.objects.filter(verb="trigger.refused", target_id=str(trigger.pk))
    assert refusal_events.count() == 5

    # Nothing is summed up before the minute ends; then once, whatever the number of sweeps.
    assert sweep(now=datetime.fromtimestamp(window + 30, tz=UTC))["webhook_refusals_summarized"] == 0
    assert sweep(now=datetime.fromtimestamp(window + 61, tz=UTC))["webhook_refusals_summarized"] == 1
    assert sweep(now=datetime.fromtimestamp(window + 62, tz=UTC))["webhook_refusals_summarized"] == 0
    start = datetime.fromtimestamp(window, tz=UTC)
    expected = f"5 more refused requests in the minute from {start:%H:%M} UTC were not recorded."
    [summary] = TriggerFiring.objects.filter(trigger=trigger, key=f"unrecorded:{window}")
    assert summary.outcome == "refused" and summary.detail == expected
    assert summary.at == start + timedelta(seconds=60)
    assert refusal_events.count() == 6 and refusal_events.filter(data__contains=expected).count() == 1
    # The trigger's page shows it in the history.
    client = Client()
    client.force_login(trigger.created_by)
    page = client.get(reverse("runs:trigger-detail", args=[trigger.pk])).content.decode()
    assert expected in page


def test_an_unknown_webhook_is_a_404_that_writes_nothing(hook, django_assert_max_num_queries):
    """Beside a real webhook, a wrong token costs one indexed read at most and records nothing."""
    firings, events = TriggerFiring.objects.count(), AuditEvent.objects.count()
    for token in ["a" * 32, "nosuchtoken", "not-alnum!"]:
        with django_assert_max_num_queries(1):
            response = Client().post(reverse("hooks:receive", args=[token]), b"{}", content_type="application/json")
        assert response.status_code == 404 and response.json() == {"detail": "No such webhook."}
    assert TriggerFiring.objects.count() == firings and AuditEvent.objects.count() == events
