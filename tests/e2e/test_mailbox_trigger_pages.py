"""In Chromium: email triggers that read a mailbox, at desktop and phone width. The owner chooses "Read a mailbox"
on the new trigger's form; the trigger pages show the mailbox and its last check, working or with the server's
reason for a problem; no console errors (CSP), no sideways scrolling on a phone. Screenshots land in
reports/screenshots/triggers-mailbox-*.png."""

from __future__ import annotations

from email.message import EmailMessage

import pytest
from playwright.sync_api import Browser, expect

from apps.runs.mailbox_poll import mailbox_poll
from apps.runs.triggers import trigger_create
from apps.workflows.models import Trigger
from tests.connectors.helpers import allow_loopback, make_connection
from tests.e2e.test_trigger_pages import no_sideways_scroll, shoot, sign_in
from tests.support.imap import ImapServer
from tests.triggers.conftest import publish
from tests.triggers.test_mailbox import CLAIM_SCHEMA, MAPPING

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def _mail(subject: str, message_id: str) -> bytes:
    message = EmailMessage()
    message["From"] = "Carla Client <carla@example.com>"
    message["To"] = "claims@example.com"
    message["Subject"] = subject
    message["Message-ID"] = message_id
    message.set_content("The kitchen is flooded.")
    return message.as_bytes()


def test_mailbox_trigger_pages_in_a_browser(settings, asgi_server, analyst, team, browser: Browser):
    allow_loopback(settings)
    with ImapServer(users={"claims@example.com": "imap-pw-5501"}, folders={"INBOX": 0}) as imap:
        claims = publish(analyst, "Claims by mail", schema=CLAIM_SCHEMA, fields={"s": "input.subject"}, team=team)
        settings_ = {"host": "127.0.0.1", "port": imap.port, "ssl": False, "username": "claims@example.com"}
        inbox = make_connection(team, name="claims-inbox", kind="mailbox", config=settings_,
                                secrets={"password": "imap-pw-5501"}, label="Claims inbox")  # fmt: skip
        old = make_connection(team, name="old-inbox", kind="mailbox", config=settings_,
                              secrets={"password": "expired-pw-0001"}, label="Old claims inbox")  # fmt: skip
        working, _ = trigger_create(actor=analyst, workflow=claims, kind="email", name="Claims mailbox",
                                    config={"connection": inbox.name}, inputs=MAPPING)  # fmt: skip
        broken, _ = trigger_create(actor=analyst, workflow=claims, kind="email", name="Old mailbox",
                                   config={"connection": old.name}, inputs=MAPPING)  # fmt: skip
        trigger_create(actor=analyst, workflow=claims, kind="email", name="Forwarded claims", inputs=MAPPING)
        imap.deliver(_mail("Claim 2041: water damage", "<c2041@example.com>"))
        imap.deliver(_mail("Claim 2042: broken window", "<c2042@example.com>"))
        assert mailbox_poll(trigger_id=working.pk).started == 2  # type: ignore[union-attr]
        assert not mailbox_poll(trigger_id=broken.pk).ok  # type: ignore[union-attr]

        for width, label in ((1280, "desktop"), (390, "phone")):
            context = browser.new_context(viewport={"width": width, "height": 900})
            page = context.new_page()
            errors: list[str] = []
            page.on(
                "console",
                lambda message, errors=errors: errors.append(message.text) if message.type == "error" else None,
            )
            sign_in(page, asgi_server, "ana")
            page.goto(f"{asgi_server}/runs/triggers/{claims.slug}/")
            expect(page.get_by_text("Reads the mailbox Claims inbox").first).to_be_visible()
            expect(page.get_by_text("Last check: working")).to_be_visible()
            shoot(page, f"mailbox-list-{label}")
            assert no_sideways_scroll(page), f"the list scrolls sideways at {width} px"
            page.goto(f"{asgi_server}/runs/trigger/{working.pk}/")
            expect(page.get_by_text("2 new messages in “INBOX”: 2 runs started.")).to_be_visible()
            shoot(page, f"mailbox-working-{label}")
            assert no_sideways_scroll(page)
            page.goto(f"{asgi_server}/runs/trigger/{broken.pk}/")
            expect(page.get_by_text("Problem", exact=True)).to_be_visible()
            expect(page.get_by_text("[AUTHENTICATIONFAILED] Invalid credentials").first).to_be_visible()
            shoot(page, f"mailbox-problem-{label}")
            assert no_sideways_scroll(page)

            page.goto(f"{asgi_server}/runs/triggers/{claims.slug}/new/email/")
            page.get_by_label("Name").fill(f"Claims {label}")
            page.get_by_label("Read a mailbox").check()
            page.get_by_label("Mailbox to read").select_option("claims-inbox")
            shoot(page, f"mailbox-new-{label}")
            assert no_sideways_scroll(page)
            page.get_by_role("button", name="Add trigger").click()
            expect(page.get_by_text("Not checked yet")).to_be_visible()
            assert Trigger.objects.get(name=f"Claims {label}").config == {"connection": "claims-inbox"}
            assert not errors, errors
            context.close()
