"""In Chromium: claims triage from an uploaded PDF, as a new user meets it. The analyst opens the gallery
template's Run page, downloads one of its sample claim PDFs, uploads it and starts the run; the claim is over
the straight-through limit, so it waits for an adjuster; the reviewer opens it and sees the PDF's page with a
box around each field's evidence, confirms the field the model was unsure of, approves, and the run finishes."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from apps.approvals.models import ApprovalRequest
from apps.runs.models import Run
from apps.workflows.gallery import workflow_create_from_template
from apps.workflows.services import workflow_draft_get_or_create, workflow_version_publish
from tests.conftest import PASSWORD
from tests.e2e.conftest import SCREENSHOT_DIR

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.django_db(transaction=True)]

SAMPLE = "claim-pol-20917-kitchen-water-leak.pdf"  # EUR 12,400: over the limit, so it goes to the adjuster


@pytest.fixture
def claims_template(analyst, team):
    """The gallery's claims template, created by Ana for team Claims and published as the gallery made it."""
    workflow = workflow_create_from_template(actor=analyst, template="claims-triage", team=team)
    draft = workflow_draft_get_or_create(actor=analyst, workflow=workflow)
    workflow_version_publish(actor=analyst, version=draft, note="Published from the gallery.")
    return workflow


def _sign_in(page, base: str, username: str) -> None:
    page.goto(f"{base}/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()


def test_analyst_uploads_a_sample_claim_pdf_and_the_adjuster_sees_its_evidence_on_the_page(
    paced_stack, analyst, reviewer, claims_template, browser, tmp_path
):
    errors: list[str] = []
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.on("pageerror", lambda error: errors.append(str(error)))
    _sign_in(page, paced_stack, "ana")
    # The gallery card says where the sample claims are.
    page.goto(f"{paced_stack}/workflows/new/")
    expect(page.locator(".gallery-card", has_text="Claims triage")).to_contain_text("Sample claim PDFs")
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT_DIR / "claims-pdf-gallery.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(SCREENSHOT_DIR / "claims-pdf-gallery-phone.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(f"{paced_stack}/runs/start/{claims_template.slug}/")
    expect(page.get_by_text("a saved sample cannot fill in a file")).to_be_visible()
    page.screenshot(path=str(SCREENSHOT_DIR / "claims-pdf-run-form.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(SCREENSHOT_DIR / "claims-pdf-run-form-phone.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})

    # The sample claim, downloaded from the page, uploaded on the same page.
    with page.expect_download() as download:
        page.get_by_role("link", name="Kitchen water leak").click()
    assert download.value.suggested_filename == SAMPLE
    saved = tmp_path / SAMPLE
    download.value.save_as(saved)
    assert saved.read_bytes().startswith(b"%PDF-")
    page.get_by_label("Claim document").set_input_files(saved)
    page.get_by_role("button", name="Start run").click()
    page.wait_for_url(re.compile(r"/runs/\d+/$"))
    run_url = page.url
    try:
        expect(page.locator("#step-adjuster")).to_have_attribute("data-state", "waiting", timeout=60_000)
    except AssertionError:
        states = list(Run.objects.filter(workflow=claims_template).values_list("step_runs__step_key", "status"))
        raise AssertionError(f"the run did not reach the adjuster: {states}") from None
    expect(page.locator("#step-auto_approve")).to_have_attribute("data-state", "skipped")
    context.close()

    item = ApprovalRequest.objects.get(run__workflow=claims_template)
    assert item.run.inputs["claim"]["name"] == SAMPLE

    # The adjuster: the PDF's page as an image, a box around each field's evidence on it.
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.on("pageerror", lambda error: errors.append(str(error)))
    _sign_in(page, paced_stack, "rita")
    page.goto(f"{paced_stack}/inbox/")
    page.get_by_role("link", name="Claim POL-20917: Tom Becker").click()
    page.wait_for_url(re.compile(rf"/inbox/items/{item.pk}/$"))
    image = page.get_by_role("img", name=f"Page 1 of {SAMPLE}")
    expect(image).to_be_visible()
    assert image.evaluate("element => element.complete && element.naturalWidth") > 0  # the page really rendered
    for field in ("claimant", "policy_number", "amount"):
        expect(page.locator(f"#evidence-{field}")).to_be_visible()
    expect(page.locator("#evidence-amount .page-evidence-box")).to_have_count(1)
    page.screenshot(path=str(SCREENSHOT_DIR / "claims-pdf-review.png"), full_page=True)

    # She claims it, confirms the field the model was unsure of (the incident type, 0.71 in the demo script)
    # and approves.
    page.get_by_role("button", name="Claim", exact=True).click()
    expect(page.locator(".item-state")).to_contain_text("You")
    low = page.locator("[data-review-field]").first
    expect(low).to_contain_text(re.compile(r"Incident type.*confidence 0\.71", re.S))
    low.get_by_label("I checked this value against the source").check()
    page.get_by_role("button", name=re.compile("Approve")).click()
    page.get_by_role("button", name="Submit approval", exact=True).click()
    expect(page.get_by_text(re.compile(r"Approved: Claim POL-20917"))).to_be_visible()
    page.goto(run_url)
    expect(page.locator("#run-header")).to_have_attribute("data-status", "succeeded", timeout=60_000)
    expect(page.locator("#step-adjuster_approved")).to_contain_text("12400")
    context.close()
    assert not errors, errors
    for name in (
        "claims-pdf-gallery.png",
        "claims-pdf-run-form.png",
        "claims-pdf-run-form-phone.png",
        "claims-pdf-review.png",
    ):
        assert (SCREENSHOT_DIR / name).stat().st_size > 10_000
