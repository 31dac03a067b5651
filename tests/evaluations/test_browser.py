"""Publishing through the evaluation suite in Chromium: "Publish" in the builder runs the suite on a real worker, the
report page follows its progress by itself (htmx polling) and shows the published version once the periodic scoring
task has scored it; the pages are screenshotted at desktop and phone width."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from apps.evaluations.models import EvaluationReport
from apps.evaluations.services import evaluation_case_save, evaluation_suite_save
from apps.evaluations.tasks import reports_score
from apps.runs.models import Run
from apps.workflows.services import (
    workflow_create,
    workflow_draft_save,
    workflow_version_create,
    workflow_version_publish,
)
from tests.conftest import PASSWORD
from tests.e2e.conftest import SCREENSHOT_DIR, browser  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.django_db(transaction=True)]

INPUT_SCHEMA = {
    "type": "object",
    "properties": {"amount": {"type": "number", "title": "Amount"}},
    "required": ["amount"],
}


def graph(limit: float) -> dict[str, Any]:
    route = f'input.amount <= {limit} ? "auto_approve" : "adjuster_queue"'
    return {
        "steps": [{"key": "decide", "type": "data.transform", "name": "Decide", "config": {"fields": {"route": route}}}]
    }


def sign_in(page: Page, base: str) -> None:
    page.goto(f"{base}/accounts/login/")
    page.get_by_label("Username").fill("ana")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Welcome, Ana Analyst")).to_be_visible()


def shoot(page: Page, name: str) -> None:
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    for width in (1280, 390):
        page.set_viewport_size({"width": width, "height": 900})
        page.screenshot(path=str(SCREENSHOT_DIR / f"evaluations-{name}-{width}.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})


def score_when_runs_finish(report: EvaluationReport, timeout: float = 60) -> None:
    """What beat does every few seconds: send the scoring task to the worker, once the case runs have finished."""
    deadline = time.monotonic() + timeout
    runs = Run.objects.filter(pk__in=report.results.values("run_id"))
    while runs.exclude(status__in=Run.FINISHED).exists():
        assert time.monotonic() < deadline, "case runs still going"
        time.sleep(0.2)
    reports_score.apply_async().get(timeout=30)


def test_publish_runs_the_suite_and_the_report_page_follows_it(
    asgi_server,
    celery_worker_process,
    analyst,
    team,
    browser,  # noqa: F811
):
    workflow = workflow_create(actor=analyst, name="Claim routing", team=team)
    first = workflow_version_create(actor=analyst, workflow=workflow, graph=graph(1000.0), input_schema=INPUT_SCHEMA)
    workflow_version_publish(actor=analyst, version=first, note="First rules")
    suite = evaluation_suite_save(
        actor=analyst, workflow=workflow, step_key="decide", min_accuracy="100", max_latency_p95_seconds="30"
    )
    for name, amount, route in [("Small claim", 120, "auto_approve"), ("Large claim", 9000, "adjuster_queue")]:
        evaluation_case_save(
            actor=analyst, suite=suite, name=name, inputs={"amount": amount}, expected={"route": route}
        )
    workflow_draft_save(
        actor=analyst, workflow=workflow, graph=graph(800.0), input_schema=INPUT_SCHEMA, expected_revision=None
    )

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    with page.context:
        sign_in(page, asgi_server)
        page.goto(f"{asgi_server}/workflows/{workflow.slug}/edit/")
        expect(page.locator("#publish-route")).to_contain_text("evaluation suite")
        page.get_by_label("What changed (shown in the version list)").fill("Lower auto-approve limit")
        page.get_by_role("button", name="Publish version 2").click()
        page.wait_for_url(re.compile(r"/evaluations/claim-routing/reports/\d+/$"))
        expect(page.get_by_role("status")).to_contain_text("case runs finished")
        report = EvaluationReport.objects.get()
        score_when_runs_finish(report)
        # The page's own polling notices the scored report and reloads.
        expect(page.get_by_text("Published as version 2.")).to_be_visible(timeout=15000)
        expect(page.get_by_role("heading", name=re.compile("Report"))).to_contain_text("Passed")
        expect(page.locator("table").first).to_contain_text("Met")
        shoot(page, "report")
        workflow.refresh_from_db()
        assert workflow.versions.get(number=2).is_published

        # A stricter draft: run the suite from its page; the report fails and says why, case by case.
        workflow_draft_save(
            actor=analyst, workflow=workflow, graph=graph(100.0), input_schema=INPUT_SCHEMA, expected_revision=None
        )
        page.goto(f"{asgi_server}/evaluations/{workflow.slug}/")
        page.get_by_role("button", name="Run the suite on the draft (version 3)").click()
        page.wait_for_url(re.compile(r"/reports/\d+/$"))
        score_when_runs_finish(EvaluationReport.objects.order_by("-pk").first())
        expect(page.get_by_role("heading", name=re.compile("Report"))).to_contain_text("Failed", timeout=15000)
        expect(page.get_by_text("route: expected 'auto_approve', got 'adjuster_queue'.")).to_be_visible()
        shoot(page, "report-failed")
        page.goto(f"{asgi_server}/evaluations/{workflow.slug}/")
        expect(page.get_by_role("heading", name="Cases")).to_be_visible()
        shoot(page, "suite")
        page.get_by_role("link", name="Add a case").click()
        page.get_by_label("Name", exact=True).fill("No amount")
        page.get_by_role("button", name="Save the case").click()
        expect(page.get_by_text("This field is required.")).to_be_visible()
        expect(page.get_by_text("a case that checks nothing cannot fail")).to_be_visible()
        shoot(page, "case-form")
        page.goto(f"{asgi_server}/evaluations/{workflow.slug}/compare/")
        expect(page.get_by_role("table")).to_contain_text("Accuracy of “route”")
        shoot(page, "compare")

        # Switching the gate off is an admin's decision: the form says so and keeps what was typed.
        page.goto(f"{asgi_server}/evaluations/{workflow.slug}/settings/")
        page.get_by_label("Gate publishing: a new version is published only when the suite passes on it").uncheck()
        page.get_by_role("button", name="Save criteria").click()
        expect(page.get_by_role("alert")).to_contain_text("Only an admin may make this change")
        expect(page.get_by_role("alert")).to_contain_text("switching the gate off")
        expect(
            page.get_by_label("Gate publishing: a new version is published only when the suite passes on it")
        ).not_to_be_checked()
        shoot(page, "settings-refused")
        suite.refresh_from_db()
        assert suite.enabled
