"""Email triggers that read a mailbox: polls against the IMAP4rev1 stand-in (tests/support/imap.py) over a real
socket, through the mailbox connection, the outbound address policy and the real firing path.

Figures: every new message starts one run (text and PDF as inputs) and is marked \\Seen only after; a second poll
reads nothing; a \\Seen lost with the connection means the message is read again and recorded as a duplicate, one
run; a renumbered folder is scanned again without a new run; refusals (login, policy, rights, folder, size) are
the page's last-poll message and one history row; a paused trigger is not polled; two polls at once poll once."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from email.message import EmailMessage
from typing import Any

import pytest
import redis
from django.conf import settings as django_settings
from django.db import connection as db_connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone as django_timezone
from guardian.shortcuts import remove_perm
from kombu import Connection as BrokerConnection

from apps.audit.models import AuditEvent
from apps.core.exceptions import ValidationFailed
from apps.runs.mailbox_poll import MAIL_MAX_BYTES, mailbox_poll, mailbox_polls_due
from apps.runs.models import InputDocument, MailboxPoll, Run, TriggerFiring
from apps.runs.triggers import (
    email_address_for,
    email_trigger_for_address,
    trigger_create,
    trigger_pause,
    trigger_resume,
)
from apps.workflows.models import Trigger
from tests.connectors.helpers import allow_loopback, finance_team, make_connection, own_addresses
from tests.support.documents import pdf_of
from tests.support.figures import record_figure
from tests.support.imap import ImapServer
from tests.support.processes import celery_worker_argv, redis_url_with_db, running, service_env
from tests.triggers.conftest import publish

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

USER, PASSWORD = "claims@example.com", "imap-pw-7731"
CLAIM_SCHEMA = {
    "type": "object",
    "properties": {
        "subject": {"type": "string"},
        "sender": {"type": "string"},
        "text": {"type": "string", "format": "textarea"},
        "claim_form": {"type": "object", "format": "document"},
    },
    "required": ["subject"],
}
MAPPING = {"subject": "payload.subject", "sender": "payload.sender", "text": "payload.text"}


def mail(subject: str, text: str, message_id: str, *, pdf: list[str] | None = None) -> bytes:
    message = EmailMessage()
    message["From"] = "Carla Client <carla@example.com>"
    message["To"] = USER
    message["Subject"] = subject
    message["Message-ID"] = message_id
    message["Date"] = "Mon, 07 Dec 2026 08:00:00 +0000"
    message.set_content(text)
    if pdf:
        message.add_attachment(pdf_of(pdf), maintype="application", subtype="pdf", filename="claim.pdf")
    return message.as_bytes()


@pytest.fixture
def imap():
    with ImapServer(users={USER: PASSWORD}, folders={"INBOX": 0}) as server:
        yield server


@pytest.fixture
def mailbox(settings, imap, team):
    """The mailbox connection of the analyst's team, pointing at the stand-in (plain IMAP on loopback, allowed)."""
    allow_loopback(settings)
    return make_connection(
        team,
        name="claims-inbox",
        kind="mailbox",
        config={"host": "127.0.0.1", "port": imap.port, "ssl": False, "username": USER},
        secrets={"password": PASSWORD},
        label="Claims inbox",
    )


@pytest.fixture
def claims(analyst, team):
    return publish(analyst, "Claims by mail", schema=CLAIM_SCHEMA, fields={"s": "input.subject"}, team=team)


@pytest.fixture
def trigger(analyst, claims, mailbox) -> Trigger:
    made, _ = trigger_create(
        actor=analyst,
        workflow=claims,
        kind="email",
        name="Claims mailbox",
        config={"receive": "mailbox", "connection": mailbox.name},
        inputs=MAPPING,
    )
    return made


def history(trigger: Trigger) -> list[str]:
    return list(TriggerFiring.objects.filter(trigger=trigger).order_by("pk").values_list("outcome", flat=True))


def history_details(trigger: Trigger) -> list[str]:
    return list(TriggerFiring.objects.filter(trigger=trigger).order_by("pk").values_list("detail", flat=True))


def bodies_fetched(imap: ImapServer) -> list[str]:
    return [line for line in imap.commands if "BODY.PEEK[]" in line]


def test_new_mail_starts_one_run_each_and_is_marked_read_after(imap, trigger, analyst):
    first = imap.deliver(
        mail(
            "Claim 2041: water damage",
            "The kitchen is flooded.",
            "<c2041@example.com>",
            pdf=["Claim form 2041", "Amount: 1200 EUR"],
        )
    )
    second = imap.deliver(mail("Claim 2042: broken window", "A stone.", "<c2042@example.com>"))
    already_read = imap.deliver(mail("Old news", "Read by a person.", "<old@example.com>"), seen=True)

    assert mailbox_polls_due() == [trigger.pk]
    outcome = mailbox_poll(trigger_id=trigger.pk)
    assert outcome is not None and outcome.ok and outcome.started == 2, outcome
    runs = {run.inputs["subject"]: run for run in Run.objects.filter(workflow=trigger.workflow)}
    assert set(runs) == {"Claim 2041: water damage", "Claim 2042: broken window"}
    flooded = runs["Claim 2041: water damage"]
    assert flooded.trigger == "email" and flooded.initiator == analyst
    assert flooded.inputs["sender"] == "carla@example.com" and flooded.inputs["text"] == "The kitchen is flooded."
    document = InputDocument.objects.get(pk=flooded.inputs["claim_form"]["document"])
    assert document.name == "claim.pdf" and "Amount: 1200 EUR" in document.text
    assert runs["Claim 2042: broken window"].inputs.get("claim_form") is None
    assert imap.flags(first) == {"\\Seen"} and imap.flags(second) == {"\\Seen"}
    assert history(trigger) == ["started", "started"]

    poll = MailboxPoll.objects.get(trigger=trigger)
    assert poll.ok and poll.last_uid == second and poll.uidvalidity == imap.mailboxes["INBOX"].uidvalidity
    assert poll.polling_until is None and poll.message == "2 new messages in “INBOX”: 2 runs started."
    # Each body was fetched once, with PEEK (never marked by the read), and the read message never.
    assert len(bodies_fetched(imap)) == 2 and not any(f"FETCH {already_read} " in c for c in imap.commands)

    # Not due again before its interval; forced, it reads nothing and asks only for UIDs after the cursor.
    assert mailbox_polls_due() == [] and mailbox_poll(trigger_id=trigger.pk) is None
    imap.commands.clear()
    again = mailbox_poll(trigger_id=trigger.pk, force=True)
    assert again is not None and again.ok and again.started == 0 and again.message == "No new mail in “INBOX”."
    assert f"UID SEARCH UNSEEN UID {second + 1}:*" in imap.commands and bodies_fetched(imap) == []
    assert Run.objects.filter(workflow=trigger.workflow).count() == 2 and history(trigger) == ["started", "started"]

    third = imap.deliver(mail("Claim 2043", "Hail.", "<c2043@example.com>"))
    assert mailbox_poll(trigger_id=trigger.pk, force=True).started == 1  # type: ignore[union-attr]
    assert imap.flags(third) == {"\\Seen"} and MailboxPoll.objects.get(trigger=trigger).last_uid == third
    assert Run.objects.filter(workflow=trigger.workflow).count() == 3


def test_a_lost_seen_flag_reads_the_message_again_as_a_duplicate(imap, trigger):
    uid = imap.deliver(mail("Claim 7", "Storm.", "<c7@example.com>"))
    imap.drop_on_store = 1  # the session ends after the firing committed, before \Seen is stored
    crashed = mailbox_poll(trigger_id=trigger.pk)
    assert crashed is not None and not crashed.ok and "closed the IMAP session" in crashed.message
    assert imap.stores_dropped == 1 and imap.flags(uid) == set()
    assert Run.objects.filter(workflow=trigger.workflow).count() == 1
    poll = MailboxPoll.objects.get(trigger=trigger)
    assert poll.last_uid == 0 and poll.failures == 1 and not poll.ok
    assert history(trigger) == ["started", "failed"]

    again = mailbox_poll(trigger_id=trigger.pk, force=True)
    assert again is not None and again.ok and again.duplicates == 1 and again.started == 0
    assert Run.objects.filter(workflow=trigger.workflow).count() == 1
    assert history(trigger) == ["started", "failed", "duplicate"]
    duplicate = TriggerFiring.objects.filter(trigger=trigger).order_by("pk").last()
    assert duplicate is not None and duplicate.run == Run.objects.get() and "Already received" in duplicate.detail
    assert imap.flags(uid) == {"\\Seen"}
    poll.refresh_from_db()
    assert poll.last_uid == uid and poll.failures == 0 and poll.ok
    record_figure("MB1 mailbox_lost_seen_store runs 1/1 duplicate_recorded 1 ok")


def test_a_renumbered_folder_is_scanned_again_without_new_runs(imap, trigger):
    for number in (1, 2):
        imap.deliver(mail(f"Claim {number}", "Text.", f"<r{number}@example.com>"))
    assert mailbox_poll(trigger_id=trigger.pk).started == 2  # type: ignore[union-attr]
    old_validity = imap.mailboxes["INBOX"].uidvalidity
    imap.renumber(first_uid=1)  # a new UIDVALIDITY, the same UIDs, everything unread
    rescan = mailbox_poll(trigger_id=trigger.pk, force=True)
    assert rescan is not None and rescan.ok and rescan.duplicates == 2 and rescan.started == 0
    assert "UIDVALIDITY" in rescan.message
    assert Run.objects.filter(workflow=trigger.workflow).count() == 2
    poll = MailboxPoll.objects.get(trigger=trigger)
    assert poll.uidvalidity == old_validity + 1 and poll.last_uid == 2


def test_a_refused_login_shows_the_servers_reason_once(imap, trigger, mailbox, analyst, reviewer):
    from apps.connectors.services import connection_update

    # A server that echoes what it was sent: the password never reaches the page, the history or the audit.
    imap.login_refusal = "Invalid credentials (Failure): app password required, not imap-wrong-4410"
    connection_update(actor=None, connection=mailbox, secrets={"password": "imap-wrong-4410"})
    for _ in range(3):
        outcome = mailbox_poll(trigger_id=trigger.pk, force=True)
        assert outcome is not None and not outcome.ok
    assert imap.logins == [(USER, False)] * 3
    poll = MailboxPoll.objects.get(trigger=trigger)
    assert "[AUTHENTICATIONFAILED] Invalid credentials (Failure): app password required" in poll.message
    assert poll.failures == 3 and (poll.due_at - poll.polled_at).total_seconds() > 3 * 60  # backing off
    assert history(trigger) == ["failed"]  # the same problem three times: one history row
    for person in (analyst, reviewer):
        client = Client()
        client.force_login(person)
        page = client.get(reverse("runs:trigger-detail", args=[trigger.pk])).content.decode()
        assert "app password required" in page and "Claims inbox" in page and "Problem" in page
        assert "imap-wrong-4410" not in page and "not [secret]" in page
    recorded = str(list(AuditEvent.objects.values_list("data", flat=True))) + str(history_details(trigger))
    assert "app password required" in recorded and "imap-wrong-4410" not in recorded


def test_a_workflow_whose_team_may_not_use_the_mailbox_is_refused(imap, trigger, mailbox, team, analyst, claims):
    imap.deliver(mail("Claim 9", "Fire.", "<c9@example.com>"))
    remove_perm("use_connection", team.group, mailbox)
    outcome = mailbox_poll(trigger_id=trigger.pk)
    assert outcome is not None and not outcome.ok and "may not use the connection" in outcome.message
    assert imap.logins == [] and not Run.objects.exists()
    [firing] = TriggerFiring.objects.filter(trigger=trigger)
    assert firing.outcome == "refused" and "may not use" in firing.detail
    assert AuditEvent.objects.filter(verb="trigger.refused", target_id=str(trigger.pk)).exists()

    # Nor can anyone set one up: a connection of another team is refused with the reason, as is a missing one.
    other = make_connection(
        finance_team(),
        name="finance-inbox",
        kind="mailbox",
        config={"host": "127.0.0.1", "port": imap.port, "ssl": False, "username": USER},
    )
    for name, reason in ((other.name, "not one you may use"), ("nowhere", 'no connection "nowhere"')):
        with pytest.raises(ValidationFailed) as refused:
            trigger_create(
                actor=analyst,
                workflow=claims,
                kind="email",
                name=f"Box {name}",
                config={"receive": "mailbox", "connection": name},
            )
        assert reason in " ".join(refused.value.fields["connection"])
    with pytest.raises(ValidationFailed) as empty:
        trigger_create(actor=analyst, workflow=claims, kind="email", name="Box", config={"receive": "mailbox"})
    assert empty.value.fields["connection"] == ["Choose the mailbox to read."]


def test_the_address_policy_and_a_missing_folder_stop_the_poll(settings, imap, trigger, mailbox):
    from apps.connectors.services import connection_update

    settings.AIOS_HTTP_ALLOWLIST = []
    refused = mailbox_poll(trigger_id=trigger.pk)
    assert refused is not None and not refused.ok and "not allowed" in refused.message and imap.logins == []
    allow_loopback(settings)
    connection_update(actor=None, connection=mailbox, config={**mailbox.config, "folder": "Claims"})
    missing = mailbox_poll(trigger_id=trigger.pk, force=True)
    assert missing is not None and "Mailbox doesn't exist: Claims" in missing.message
    assert history(trigger) == ["refused", "failed"]


def test_a_mailbox_without_tls_on_another_machine_is_not_polled(settings, team, analyst, claims):
    """Without TLS the login would send the password in clear text: a mailbox that is not on this machine is not
    reached that way, even at an allowed address. The refusal is the poll's outcome and one history row."""
    [address, *_] = [address for address in own_addresses() if ":" not in address] or [""]
    assert address, "the machine needs an IPv4 address besides loopback"
    settings.AIOS_HTTP_ALLOWLIST = [f"{address}/32"]
    with ImapServer(users={USER: PASSWORD}, host="0.0.0.0") as server:
        server.deliver(mail("Claim 10", "Hail.", "<c10@example.com>"))
        make_connection(
            team,
            name="remote-inbox",
            kind="mailbox",
            config={"host": address, "port": server.port, "ssl": False, "username": USER},
            secrets={"password": PASSWORD},
        )
        remote, _ = trigger_create(
            actor=analyst,
            workflow=claims,
            kind="email",
            name="Remote mailbox",
            config={"receive": "mailbox", "connection": "remote-inbox"},
            inputs=MAPPING,
        )
        for _ in range(2):
            outcome = mailbox_poll(trigger_id=remote.pk, force=True)
            assert outcome is not None and not outcome.ok
        assert outcome.message == (
            f"Not polled: The mailbox at {address} would receive its password unencrypted: turn on TLS from the start "
            "(IMAPS, usually port 993). Without TLS only a mail server on this machine is reached."
        )
        assert server.commands == [] and server.logins == [] and not Run.objects.exists()
    assert history(remote) == ["refused"]


def test_a_mailbox_an_email_trigger_reads_cannot_be_deleted_until_the_trigger_is_paused(
    trigger, mailbox, analyst, admin_user_role
):
    """Deleting the mailbox would silently stop the trigger's mail: the service, the API and the page refuse it,
    naming the trigger and its workflow, until the trigger is paused (a paused trigger reads nothing)."""
    from rest_framework.test import APIClient

    from apps.connectors.models import Connection
    from apps.connectors.services import connection_delete
    from apps.core.exceptions import Conflict

    with pytest.raises(Conflict) as refused:
        connection_delete(actor=admin_user_role, connection=mailbox)
    assert refused.value.message == (
        'The connection "claims-inbox" is read by the email trigger "Claims mailbox" of workflow "Claims by mail": '
        "pause or delete it first."
    )
    assert refused.value.extra == {"triggers": [{"trigger": "Claims mailbox", "workflow": "Claims by mail"}]}

    api = APIClient()
    api.force_login(admin_user_role)
    answer = api.delete("/api/connections/claims-inbox/")
    assert answer.status_code == 409 and answer.json()["triggers"] == refused.value.extra["triggers"]
    page = Client()
    page.force_login(admin_user_role)
    confirm = page.get("/connections/claims-inbox/delete/").content.decode()
    assert (
        "this email trigger reads its mailbox" in confirm
        and "“Claims mailbox” of the workflow Claims by mail" in confirm
    )
    assert "Delete the connection" not in confirm
    posted = page.post("/connections/claims-inbox/delete/", follow=True)
    assert "pause or delete it first" in posted.content.decode()
    assert Connection.objects.filter(name="claims-inbox").exists()
    assert not AuditEvent.objects.filter(verb="connection.deleted").exists()

    trigger_pause(actor=analyst, trigger=trigger)
    assert api.delete("/api/connections/claims-inbox/").status_code == 204
    assert not Connection.objects.filter(name="claims-inbox").exists()
    # The paused trigger, resumed, reports the missing connection itself.
    trigger_resume(actor=analyst, trigger=trigger)
    outcome = mailbox_poll(trigger_id=trigger.pk, force=True)
    assert outcome is not None and not outcome.ok and 'no connection "claims-inbox"' in outcome.message


def test_a_paused_trigger_is_not_polled(imap, trigger, analyst):
    uid = imap.deliver(mail("Claim 11", "Snow.", "<c11@example.com>"))
    trigger_pause(actor=analyst, trigger=trigger)
    assert mailbox_polls_due() == [] and mailbox_poll(trigger_id=trigger.pk, force=True) is None
    assert imap.logins == [] and imap.flags(uid) == set() and not Run.objects.exists()
    trigger_resume(actor=analyst, trigger=trigger)
    assert mailbox_polls_due() == [trigger.pk]
    assert mailbox_poll(trigger_id=trigger.pk).started == 1  # type: ignore[union-attr]


def test_an_oversized_message_is_refused_without_downloading_it(imap, trigger):
    big = imap.deliver(b"Subject: Scans\r\nMessage-ID: <big@example.com>\r\n\r\n" + b"x" * (MAIL_MAX_BYTES + 10))
    small = imap.deliver(mail("Claim 12", "Small.", "<c12@example.com>"))
    outcome = mailbox_poll(trigger_id=trigger.pk)
    assert outcome is not None and outcome.ok and outcome.refused == 1 and outcome.started == 1
    assert not any(f"FETCH {big} (BODY.PEEK[])" in command for command in imap.commands)
    [refusal] = TriggerFiring.objects.filter(trigger=trigger, outcome="refused")
    assert "larger than the 25 MB limit" in refusal.detail
    assert imap.flags(big) == {"\\Seen"} and imap.flags(small) == {"\\Seen"}


def test_a_message_nothing_can_decode_does_not_stop_the_mail_after_it(imap, trigger):
    broken = imap.deliver(
        b"Subject: Claim 13\r\nMessage-ID: <c13@example.com>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: text/plain; charset="x-unknown-cs"\r\n\r\nStorm damage.\r\n'
    )
    after = imap.deliver(mail("Claim 14", "Hail.", "<c14@example.com>"))
    outcome = mailbox_poll(trigger_id=trigger.pk)
    assert outcome is not None and outcome.ok and outcome.started >= 1
    # The later message ran; the broken one is read and accounted for (a run or a refusal), not retried forever.
    assert imap.flags(broken) == {"\\Seen"} and imap.flags(after) == {"\\Seen"}
    assert len(history(trigger)) == 2
    again = mailbox_poll(trigger_id=trigger.pk, force=True)
    assert again is not None and again.started == again.refused == 0


def test_two_polls_at_once_poll_once(imap, trigger):
    for number in range(3):
        imap.deliver(mail(f"Claim {number}", "Text.", f"<p{number}@example.com>"))
    imap.fetch_delay = 0.3
    start = threading.Barrier(2)
    outcomes: list[Any] = []

    def poll() -> None:
        try:
            start.wait()
            outcomes.append(mailbox_poll(trigger_id=trigger.pk))
        finally:
            db_connection.close()

    threads = [threading.Thread(target=poll) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(outcome is None for outcome in outcomes) == [False, True]
    assert len(imap.logins) == 1 and Run.objects.filter(workflow=trigger.workflow).count() == 3
    assert history(trigger) == ["started"] * 3
    record_figure(f"MB2 mailbox_concurrent_polls 2 polled {len(imap.logins)} runs 3/3 ok")


def test_a_mailbox_trigger_has_no_inbound_address(trigger, analyst, claims):
    assert email_trigger_for_address(email_address_for(trigger)) is None
    by_address, _ = trigger_create(actor=analyst, workflow=claims, kind="email", name="By address")
    assert by_address.config == {}
    assert email_trigger_for_address(email_address_for(by_address)) == by_address


def test_the_owner_chooses_a_mailbox_on_the_trigger_page(imap, mailbox, claims, analyst, reviewer):
    make_connection(
        finance_team(),
        name="finance-inbox",
        kind="mailbox",
        config={"host": "127.0.0.1", "port": imap.port, "ssl": False, "username": "finance@example.com"},
        label="Finance inbox",
    )
    client = Client()
    client.force_login(analyst)
    url = reverse("runs:trigger-new", args=[claims.slug, "email"])
    form = client.get(url).content.decode()
    assert "Receive at the inbound address" in form and "Read a mailbox" in form
    assert "Claims inbox" in form and "Finance inbox" not in form  # only what the workflow may use
    missing = client.post(url, {"name": "Claims mailbox", "receive": "mailbox", "connection": ""})
    assert missing.status_code == 400 and "Choose the mailbox to read." in missing.content.decode()
    foreign = client.post(url, {"name": "Claims mailbox", "receive": "mailbox", "connection": "finance-inbox"})
    assert foreign.status_code == 400 and "not one you may use" in foreign.content.decode()
    made = client.post(url, {"name": "Claims mailbox", "receive": "mailbox", "connection": mailbox.name})
    trigger = Trigger.objects.get(name="Claims mailbox")
    assert made.status_code == 302 and trigger.config == {"connection": mailbox.name}
    detail = client.get(reverse("runs:trigger-detail", args=[trigger.pk])).content.decode()
    assert "Reads the mailbox" in detail and "Not checked yet" in detail and "@aios.localhost" not in detail

    imap.deliver(mail("Claim 21", "Leak.", "<c21@example.com>"))
    assert mailbox_poll(trigger_id=trigger.pk).started == 1  # type: ignore[union-attr]
    for person in (analyst, reviewer):
        reader = Client()
        reader.force_login(person)
        page = reader.get(reverse("runs:trigger-detail", args=[trigger.pk])).content.decode()
        assert "Working" in page and "1 new message in “INBOX”: 1 run started." in page
        listing = reader.get(reverse("runs:triggers", args=[claims.slug])).content.decode()
        assert "Reads the mailbox Claims inbox" in listing and "Last check: working" in listing

    # Back to the inbound address: the cursor is dropped, and the trigger has its address again.
    edit = reverse("runs:trigger-edit", args=[trigger.pk])
    assert 'value="mailbox" checked' in client.get(edit).content.decode()
    assert client.post(edit, {"name": "Claims mailbox", "receive": "address"}).status_code == 302
    trigger.refresh_from_db()
    assert trigger.config == {} and not MailboxPoll.objects.filter(trigger=trigger).exists()
    assert email_trigger_for_address(email_address_for(trigger)) == trigger


def test_the_beat_tick_sends_a_poll_that_a_real_worker_runs(imap, trigger):
    """As deployed: beat's tick (runs.mailboxes_poll) on the default queue sends runs.mailbox_poll to the connectors
    queue, and a worker process (connected as the application role) polls. Its broker is a Redis database of its
    own, so the session's worker never takes these tasks."""
    from workers.celery import app as celery_app

    uid = imap.deliver(mail("Claim 31", "Sent to the worker.", "<c31@example.com>"))
    broker = redis_url_with_db(django_settings.REDIS_URL, 9)
    redis.Redis.from_url(broker).flushdb()
    env = service_env(REDIS_URL=broker, CELERY_BROKER_URL=broker, AIOS_HTTP_ALLOWLIST="127.0.0.1/32")
    argv = celery_worker_argv(queues="default,connectors", concurrency=1, node="mailbox-worker")
    with running("mailbox-worker", argv, ready=lambda log: " ready." in log, env=env):
        with BrokerConnection(broker) as connection:
            celery_app.send_task("runs.mailboxes_poll", queue="default", connection=connection)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and imap.flags(uid) != {"\\Seen"}:
            time.sleep(0.2)
    [run] = Run.objects.filter(workflow=trigger.workflow)
    assert run.inputs["subject"] == "Claim 31" and imap.flags(uid) == {"\\Seen"}
    poll = MailboxPoll.objects.get(trigger=trigger)
    assert poll.ok and poll.last_uid == uid and poll.polling_until is None


def test_the_api_makes_a_mailbox_trigger_and_shows_its_last_check(imap, mailbox, claims, analyst, reviewer):
    from rest_framework.test import APIClient

    api = APIClient()
    api.force_authenticate(analyst)
    made = api.post(
        f"/api/workflows/{claims.slug}/triggers/",
        {"kind": "email", "name": "Claims mailbox", "config": {"connection": mailbox.name}, "inputs": MAPPING},
        format="json",
    )
    assert made.status_code == 201, made.content
    body = made.json()
    assert body["address"] is None and body["mailbox"]["connection"] == mailbox.name
    assert body["mailbox"]["checked_at"] is None
    refused = api.post(
        f"/api/workflows/{claims.slug}/triggers/",
        {"kind": "email", "name": "Nowhere", "config": {"connection": "nowhere"}},
        format="json",
    )
    assert refused.status_code == 400 and "nowhere" in refused.content.decode()

    imap.deliver(mail("Claim 41", "Mould.", "<c41@example.com>"))
    mailbox_poll(trigger_id=body["id"])
    api.force_authenticate(reviewer)
    seen = api.get(f"/api/triggers/{body['id']}/").json()
    assert seen["mailbox"]["ok"] is True and seen["mailbox"]["message"].startswith("1 new message")
    assert seen["mailbox"]["next_check_at"] is not None


def test_the_stand_in_speaks_imap4rev1_on_the_wire(imap):
    """The bytes a client sees: literals both ways (a LOGIN whose arguments are literals after the server's "+"
    continuation; a message body as `{n}` CRLF and n bytes), UID SEARCH with the RFC's `n:*`, and PEEK."""
    import socket

    raw = b"Subject: Hi\r\nMessage-ID: <w@example.com>\r\n\r\nHello\r\n"
    uid = imap.deliver(raw)
    with socket.create_connection(("127.0.0.1", imap.port), timeout=10) as sock:
        stream = sock.makefile("rwb")

        def line() -> bytes:
            return stream.readline()

        def send(data: bytes) -> None:
            stream.write(data)
            stream.flush()

        assert line() == b"* OK [CAPABILITY IMAP4rev1] Test IMAP server ready\r\n"
        send(f"a1 LOGIN {{{len(USER)}}}\r\n".encode())
        assert line().startswith(b"+ ")
        send(USER.encode() + f" {{{len(PASSWORD)}}}\r\n".encode())
        assert line().startswith(b"+ ")
        send(PASSWORD.encode() + b"\r\n")
        assert line() == b"a1 OK [CAPABILITY IMAP4rev1] LOGIN completed\r\n"
        send(b'a2 SELECT "INBOX"\r\n')
        selected = [line() for _ in range(8)]
        assert b"* 1 EXISTS\r\n" in selected and selected[-1] == b"a2 OK [READ-WRITE] SELECT completed\r\n"
        assert any(b"[UIDVALIDITY " in answer for answer in selected)
        send(f"a3 UID SEARCH UNSEEN UID {uid + 5}:*\r\n".encode())  # "*" is the newest: it is included
        assert [line(), line()] == [f"* SEARCH {uid}\r\n".encode(), b"a3 OK UID SEARCH completed\r\n"]
        send(f"a4 UID FETCH {uid} (BODY.PEEK[])\r\n".encode())
        assert line() == f"* 1 FETCH (UID {uid} BODY[] {{{len(raw)}}}\r\n".encode()
        assert stream.read(len(raw)) == raw and line() == b")\r\n"
        assert line() == b"a4 OK UID FETCH completed\r\n" and imap.flags(uid) == set()
        send(f"a5 UID STORE {uid} +FLAGS (\\Seen)\r\n".encode())
        assert [line(), line()] == [
            f"* 1 FETCH (UID {uid} FLAGS (\\Seen))\r\n".encode(),
            b"a5 OK UID STORE completed\r\n",
        ]
        send(b"a6 LOGOUT\r\n")
        assert [line(), line()] == [b"* BYE Logging out\r\n", b"a6 OK LOGOUT completed\r\n"]


def test_check_now_by_persona(trigger, analyst, reviewer, manager, outsider):
    url = reverse("runs:trigger-check", args=[trigger.pk])
    later = MailboxPoll.objects.create(trigger=trigger, due_at=django_timezone.now() + timedelta(hours=1))
    assert mailbox_polls_due() == []
    for person, status in ((outsider, 404), (reviewer, 403), (manager, 403)):
        client = Client()
        client.force_login(person)
        assert client.post(url).status_code == status
    assert client.get(url).status_code == 405
    client = Client()
    client.force_login(analyst)
    asked = django_timezone.now()
    answer = client.post(url, follow=True)
    assert answer.status_code == 200 and "being checked now" in answer.content.decode()
    # The poll task was sent on commit: a worker of the test session may already have run it (and, without the
    # loopback allowance, been refused); either way the hour's wait is gone.
    later.refresh_from_db()
    assert later.due_at <= django_timezone.now() or (later.polled_at is not None and later.polled_at >= asked)
    assert AuditEvent.objects.filter(verb="trigger.check_requested", target_id=str(trigger.pk)).count() == 1
    trigger_pause(actor=analyst, trigger=trigger)
    paused = client.post(url, follow=True).content.decode()
    assert "is paused: resume it" in paused and "Check now" not in paused
