"""In Chromium: an analyst's run reaches an approval; the reviewer takes it with "Next item" from the keyboard,
checks the evidence and the confidences, cannot approve before she confirms the low-confidence field, corrects
another field, sees the diff, submits with a reason code, and the run finishes with her corrected value."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from apps.approvals.demo import CLAIM_REVIEW_GRAPH, CLAIMS_QUEUE_SETTINGS
from apps.approvals.models import ApprovalQueue, ApprovalRequest
from apps.approvals.services import approval_queue_update
from apps.workflows.demo import CLAIMS_TRIAGE_INPUT_SCHEMA
from apps.workflows.services import workflow_create, workflow_version_create, workflow_version_publish
from tests.conftest import PASSWORD
from tests.e2e.conftest import SCREENSHOT_DIR

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def review_workflow(analyst, team, admin_user_role):
    queue = ApprovalQueue.objects.get(key=team.group.name)
    settings = {**CLAIMS_QUEUE_SETTINGS, "calendar": {}}  # around the clock: the test may run on a Sunday
    approval_queue_update(actor=admin_user_role, queue=queue, lead=admin_user_role, **settings)
    workflow = workflow_create(actor=analyst, name="Claim review", team=team)
    version = workflow_version_create(
        actor=analyst, workflow=workflow, graph=CLAIM_REVIEW_GRAPH, input_schema=CLAIMS_TRIAGE_INPUT_SCHEMA
    )
    workflow_version_publish(actor=analyst, version=version)
    return workflow


def _sign_in(page, base: str, username: str) -> None:
    page.goto(f"{base}/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()


def test_reviewer_takes_checks_corrects_and_approves_an_extraction(
    paced_stack, analyst, reviewer, review_workflow, browser
):
    # The analyst starts a run of the stolen-bicycle claim from the Run form.
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    _sign_in(page, paced_stack, "ana")
    page.goto(f"{paced_stack}/runs/start/{review_workflow.slug}/")
    page.get_by_role("link", name="Stolen bicycle").click()
    page.get_by_role("button", name="Start run").click()
    page.wait_for_url(re.compile(r"/runs/\d+/$"))
    run_url = page.url
    try:
        expect(page.locator("#step-review")).to_have_attribute("data-state", "waiting", timeout=60_000)
    except AssertionError:
        from apps.runs.models import StepRun

        states = list(StepRun.objects.filter(run__workflow=review_workflow).values_list("step_key", "state", "error"))
        raise AssertionError(f"the run did not reach its approval: {states}") from None
    context.close()

    # Exactly one field is below the queue's confirmation threshold, whatever the stand-in model scored.
    item = ApprovalRequest.objects.get(run__workflow=review_workflow)
    ranked = sorted(item.confidence, key=item.confidence.get)
    low = ranked[0]
    ApprovalQueue.objects.filter(pk=item.queue_id).update(
        confirm_below=(item.confidence[ranked[0]] + item.confidence[ranked[1]]) / 2
    )
    corrected, new_value = ("amount", "650") if low != "amount" else ("claimant", "Daniel J. Park")

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.on("pageerror", lambda error: errors.append(str(error)))
    _sign_in(page, paced_stack, "rita")
    page.goto(f"{paced_stack}/inbox/")
    expect(page.get_by_role("link", name=re.compile(r"Unclaimed in my queues\s+1"))).to_be_visible()
    expect(page.get_by_role("link", name=re.compile("Claim POL-48230"))).to_be_visible()
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT_DIR / "inbox.png"), full_page=True)

    page.locator("body").press("n")  # Next item, from the keyboard
    page.wait_for_url(re.compile(rf"/inbox/items/{item.pk}/$"))
    expect(page.locator(".item-state")).to_contain_text("You")

    # The source with its evidence, each field with its confidence; the low one first, to be confirmed.
    expect(page.locator("mark.evidence[data-field=claimant]")).to_contain_text("Daniel Park")
    expect(page.locator("mark.evidence[data-field=amount]")).to_contain_text("640.00")
    first_field = page.locator("[data-review-field]").first
    expect(first_field.locator("label").first).to_have_text(re.compile(low.replace("_", " "), re.IGNORECASE))
    expect(first_field).to_contain_text("Low confidence")
    approve = page.get_by_role("button", name=re.compile("Approve"))
    expect(approve).to_be_disabled()
    expect(page.locator("[data-approve-help]")).to_contain_text("1 low-confidence field")

    page.locator(f"#field-{corrected}").fill(new_value)
    expect(approve).to_be_disabled()  # a correction elsewhere does not confirm the doubtful field
    first_field.get_by_label("I checked this value against the source").check()
    expect(approve).to_be_enabled()
    page.screenshot(path=str(SCREENSHOT_DIR / "decision-view.png"), full_page=True)
    approve.click()

    # The diff before submitting; the change needs a reason code.
    expect(page.get_by_role("heading", name="You changed 1 of 6 fields")).to_be_visible()
    expect(page.locator(".diff-table")).to_contain_text(new_value)
    page.get_by_role("button", name="Submit approval", exact=True).click()
    expect(page.get_by_text("Choose a reason for your changes.")).to_be_visible()
    expect(page.locator(f"#field-{corrected}")).to_have_value(new_value)  # nothing typed was lost
    first_field = page.locator("[data-review-field]").first
    expect(first_field.get_by_label("I checked this value against the source")).to_be_checked()
    page.get_by_label("Reason code").select_option("misread")
    page.get_by_role("button", name=re.compile("Approve")).click()
    expect(page.get_by_role("heading", name="You changed 1 of 6 fields")).to_be_visible()
    page.get_by_role("button", name="Submit approval", exact=True).click()
    expect(page.get_by_text(re.compile(r"Approved: Claim POL-48230"))).to_be_visible()
    expect(page.locator(".item-state")).to_contain_text("Approved")

    # The run page: the run continued at once and finished with the corrected value.
    page.goto(run_url)
    expect(page.locator("#run-header")).to_have_attribute("data-status", "succeeded", timeout=60_000)
    expect(page.locator("#step-review")).to_contain_text("Approved by Rita")
    expect(page.locator("#step-book")).to_contain_text(new_value if corrected == "claimant" else "650")
    context.close()

    item.refresh_from_db()
    decision = item.decisions.get()
    assert item.state == "approved" and decision.actor == reviewer and decision.reason_code == "misread"
    assert [change["field"] for change in decision.changes] == [corrected]
    assert low in decision.confirmed_fields
    assert not errors, errors
    for name in ("inbox.png", "decision-view.png"):
        assert (SCREENSHOT_DIR / name).stat().st_size > 10_000
