"""In Chromium: the trigger pages at desktop and phone width, with every kind of trigger and some history; a
colleague sends a form; the pages load without console errors (CSP: no inline script or style) and the phone
layout never scrolls sideways. Screenshots land in reports/screenshots/triggers-*.png."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest
from playwright.sync_api import Browser, expect

from apps.runs.models import Run
from apps.runs.triggers import trigger_create
from apps.workflows.triggers import webhook_signature
from tests.conftest import PASSWORD
from tests.e2e.conftest import SCREENSHOT_DIR
from tests.triggers.conftest import DIGEST_SCHEMA, TICKET_SCHEMA, publish

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def sign_in(page, base: str, username: str) -> None:
    page.goto(f"{base}/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()


def shoot(page, name: str) -> None:
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT_DIR / f"triggers-{name}.png"), full_page=True)


def no_sideways_scroll(page) -> bool:
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"))


def test_trigger_pages_in_a_browser(asgi_server, celery_worker_process, analyst, reviewer, team, browser: Browser):
    tickets = publish(analyst, "Ticket intake", schema=TICKET_SCHEMA, fields={"title": "input.subject"}, team=team)
    digest = publish(analyst, "Weekly digest", schema=DIGEST_SCHEMA, fields={"at": "input.scheduled_at"}, team=team)
    form, _ = trigger_create(
        actor=analyst, workflow=tickets, kind="form", name="Report a problem",
        config={"intro": "For anything broken in the office.", "next_steps": "Facilities answer within a working day."},
    )  # fmt: skip
    hook, secret = trigger_create(
        actor=analyst, workflow=tickets, kind="webhook", name="Helpdesk system", inputs={"subject": "payload.title"}
    )
    trigger_create(actor=analyst, workflow=tickets, kind="email", name="Facilities mailbox",
                   inputs={"subject": "payload.subject", "body": "payload.text"})  # fmt: skip
    trigger_create(actor=analyst, workflow=digest, kind="schedule", name="Monday digest",
                   config={"cron": "0 8 * * 1", "timezone": "Europe/Berlin"})  # fmt: skip
    trigger_create(actor=analyst, workflow=digest, kind="event", name="After each ticket", source=tickets.slug,
                   inputs={"scheduled_at": "string(payload.run)"})  # fmt: skip
    # Some history for the webhook: a run, a repeat and a refusal, over real HTTP.
    url = f"{asgi_server}/hooks/{hook.token}/"
    for title, key, signing_secret in (
        ("Printer on fire", "a", secret),
        ("Printer on fire", "a", secret),
        ("x", "b", "bad"),
    ):
        body = json.dumps({"title": title}).encode()
        stamp = str(int(time.time()))
        request = urllib.request.Request(url, data=body, method="POST", headers={
            "Content-Type": "application/json", "X-AIOS-Timestamp": stamp, "Idempotency-Key": key,
            "X-AIOS-Signature": webhook_signature(signing_secret, stamp, body, idempotency_key=key),
        })  # fmt: skip
        try:
            urllib.request.urlopen(request, timeout=10)
        except urllib.error.HTTPError as error:
            assert error.code == 401

    for width, label in ((1280, "desktop"), (390, "phone")):
        context = browser.new_context(viewport={"width": width, "height": 900})
        page = context.new_page()
        errors: list[str] = []
        page.on(
            "console", lambda message, errors=errors: errors.append(message.text) if message.type == "error" else None
        )
        sign_in(page, asgi_server, "ana")
        page.goto(f"{asgi_server}/runs/triggers/{tickets.slug}/")
        expect(page.get_by_role("heading", name="Triggers")).to_be_visible()
        expect(page.get_by_role("link", name="Helpdesk system", exact=True)).to_be_visible()
        shoot(page, f"list-{label}")
        assert no_sideways_scroll(page), f"the list scrolls sideways at {width} px"
        page.goto(f"{asgi_server}/runs/trigger/{hook.pk}/")
        expect(page.get_by_text("Already received")).to_be_visible()
        expect(page.get_by_text("The signature does not match")).to_be_visible()
        shoot(page, f"webhook-{label}")
        assert no_sideways_scroll(page), f"the webhook page scrolls sideways at {width} px"
        page.goto(f"{asgi_server}/runs/triggers/{digest.slug}/")
        shoot(page, f"digest-list-{label}")
        page.goto(f"{asgi_server}/runs/triggers/{digest.slug}/new/schedule/")
        page.get_by_label("Name").fill("Friday report")
        page.get_by_label("When (cron)").fill("30 16 * * 5")
        page.get_by_role("button", name="Show the next times").click()
        expect(page.get_by_text("Every Friday at 16:30")).to_be_visible()
        shoot(page, f"new-schedule-{label}")
        assert no_sideways_scroll(page)
        page.goto(f"{asgi_server}/runs/triggers/{tickets.slug}/new/webhook/")
        page.get_by_label("Name").fill(f"Shop {label}")
        page.get_by_role("button", name="Add trigger").click()
        expect(page.get_by_text("shown only this once")).to_be_visible()
        shoot(page, f"secret-{label}")
        assert no_sideways_scroll(page)
        assert not errors, errors
        context.close()

    # A colleague sends the form.
    context = browser.new_context(viewport={"width": 390, "height": 900})
    page = context.new_page()
    sign_in(page, asgi_server, "rita")
    page.goto(f"{asgi_server}/runs/forms/{form.pk}/")
    expect(page.get_by_text("For anything broken in the office.")).to_be_visible()
    page.get_by_label("Subject").fill("Window will not close")
    shoot(page, "form-phone")
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_text("Facilities answer within a working day.")).to_be_visible()
    shoot(page, "form-sent-phone")
    run = Run.objects.get(workflow=tickets, trigger="form")
    assert run.initiator == reviewer
    context.close()
