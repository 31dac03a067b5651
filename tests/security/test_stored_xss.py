"""S2: stored XSS. Every payload of tests/security/xss_payloads.py is written through the product's own forms and
API into the text fields people write (workflow names and descriptions, run inputs, approval reasons, knowledge
collection titles and document names, connection labels, evaluation case names, approval queue names, trigger
names, workflow step names), then every page that shows them is opened in Chromium against the real ASGI server.
Two counts, both must be zero:

- executed: payloads whose script ran (the page called `__xss(n)`, which the test exposes, or fetched
  http://xss.invalid/hit/n, which the test intercepts), with the product's CSP in force;
- injected_markup: payloads whose markup came out as markup in the HTML the server sent or in the page's DOM after
  htmx loaded its fragments, found by parsing (so an injection the CSP happens to stop still counts).
"""

from __future__ import annotations

import os

import pytest
from django.test import Client

from tests.security.xss_payloads import HIT_HOST, TEMPLATES, injected_markup, payloads
from tests.support.figures import record_figure

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's loop in the test thread (tests/e2e)

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def _write_everything(analyst, admin, reviewer, claims_workflow, sample_claim) -> tuple[int, dict[str, list[str]]]:
    """Store every payload in every field; returns how many (payload, field) pairs were stored and, by persona,
    the pages that show them (the analyst's: every one; the reviewer's: where she decided)."""
    from django.urls import reverse

    from apps.approvals.models import ApprovalRequest
    from apps.evaluations.services import evaluation_case_save, evaluation_suite_save
    from apps.knowledge.models import Collection
    from apps.knowledge.services import collection_create, document_upload
    from apps.runs.models import Run
    from apps.workflows.models import Workflow
    from tests.connectors.helpers import make_connection
    from tests.security.world import parked_approval

    owner = Client()
    owner.force_login(analyst)
    team = claims_workflow.team
    stored = 0
    pages = ["/", "/workflows/", "/runs/", "/inbox/", "/knowledge/", "/connections/", "/dashboards/"]

    # Workflow names, one workflow per payload, through the "New workflow" form.
    names = payloads(first=1)
    for text in names.values():
        owner.post("/workflows/new/", {"name": text, "team": team.slug})
    stored += Workflow.objects.filter(name__in=list(names.values())).count()
    one = Workflow.objects.filter(name__in=list(names.values())).order_by("pk").first()
    if one is not None:
        pages += [f"/workflows/{one.slug}/", f"/workflows/{one.slug}/edit/", f"/workflows/{one.slug}/versions/"]

    # A description holding every payload, through the same form.
    described = payloads(first=101)
    owner.post(
        "/workflows/new/", {"name": "Described", "description": "\n".join(described.values()), "team": team.slug}
    )
    if Workflow.objects.filter(slug="described", description__contains=described[101]).exists():
        stored += len(described)
        pages += ["/workflows/described/", "/workflows/described/settings/"]

    # Run inputs, through the API: every payload in the claim text.
    run_inputs = payloads(first=201)
    response = owner.post(
        f"/api/workflows/{claims_workflow.slug}/runs/",
        {"inputs": {"claim_text": sample_claim + "\n" + "\n".join(run_inputs.values())}},
        content_type="application/json",
    )
    if response.status_code in (200, 201):
        stored += len(run_inputs)
        pages += [f"/runs/{response.json()['id']}/"]

    # Approval reasons, through the API, by the reviewer who works the queue.
    reasons = payloads(first=301)
    item = parked_approval(analyst, team, name="XSS approval")
    decider = Client()
    decider.force_login(reviewer)
    decision = {"decision": "approved", "reason": "\n".join(reasons.values())}
    decider.post(reverse("api:approval-claim", args=[item.pk]), content_type="application/json")
    decider.post(reverse("api:approval-decide", args=[item.pk]), decision, content_type="application/json")
    if ApprovalRequest.objects.filter(pk=item.pk, reason__contains=reasons[301]).exists():
        stored += len(reasons)
    reviewer_pages = ["/inbox/", reverse("approvals:item", args=[item.pk]), reverse("runs:detail", args=[item.run_id])]
    pages += reviewer_pages[1:]

    # Knowledge: a collection title with every payload (it holds 150 characters: one payload each, one
    # collection per payload), document names.
    titles = payloads(first=401)
    for number, text in titles.items():
        collection_create(actor=analyst, name=f"xss-kb-{number}", title=text[:150], team=team)
        stored += 1
    documents = payloads(first=501)
    for text in documents.values():
        document_upload(
            actor=analyst,
            collection=Collection.objects.get(name="xss-kb-401"),
            name=text[:200] + ".md",
            data=b"# Notes",
            content_type="text/markdown",
        )
        stored += 1
    pages += [reverse("knowledge:detail", args=["xss-kb-401"]), reverse("knowledge:documents", args=["xss-kb-401"])]

    # Connection labels (admins make connections).
    labels = payloads(first=601)
    for number, text in labels.items():
        make_connection(team, name=f"xss-conn-{number}", label=text[:150], actor=admin)
        stored += 1
    pages += [reverse("connectors:detail", args=["xss-conn-601"]), reverse("connectors:team", args=[team.slug])]

    # Evaluation case names (120 characters).
    suite = evaluation_suite_save(actor=analyst, workflow=claims_workflow, step_key="extract", min_accuracy="90")
    cases = payloads(first=701)
    for text in cases.values():
        evaluation_case_save(
            actor=analyst, suite=suite, name=text[:120], inputs={"claim_text": sample_claim}, expected={"amount": 850.0}
        )
        stored += 1
    pages += [reverse("evaluations:suite", args=[claims_workflow.slug])]

    # Step names, through the builder's API (the outline operations its buttons send): one step per payload in
    # a workflow of its own, inserted then renamed with "configure".
    from apps.workflows.services import workflow_create, workflow_draft_get_or_create

    steps_workflow = workflow_create(actor=analyst, name="Steps", team=team)
    workflow_draft_get_or_create(actor=analyst, workflow=steps_workflow)  # the empty draft the builder edits
    step_names = payloads(first=1001)
    edits = f"/api/workflows/{steps_workflow.slug}/draft/edits/"

    def revision() -> int:
        return int(steps_workflow.versions.get(state="draft").revision)

    for index, text in enumerate(step_names.values()):
        inserted = owner.post(
            edits,
            {"operation": "insert", "type": "data.transform", "lane": "root", "index": index, "revision": revision()},
            content_type="application/json",
        )
        if inserted.status_code != 200:
            continue
        key = inserted.json()["outline"][index]["key"]
        owner.post(
            edits,
            {"operation": "configure", "key": key, "step": {"name": text[:120]}, "revision": revision()},
            content_type="application/json",
        )
    graph_names = {step.get("name") for step in steps_workflow.versions.get(state="draft").graph["steps"]}
    named_steps = len(graph_names & {text[:120] for text in step_names.values()})
    # Each newer surface must hold (nearly) every payload, or it would pass having tested nothing.
    assert named_steps >= 60, f"the builder stored only {named_steps} step names"
    stored += named_steps
    pages += [f"/workflows/{steps_workflow.slug}/edit/"]

    # Approval queue names (150 characters), through the API, by an admin (admins create queues); the claims
    # team works them, so the analyst sees them in the queue list.
    from apps.approvals.models import ApprovalQueue

    queue_admin = Client()
    queue_admin.force_login(admin)
    queues = payloads(first=801)
    for number, text in queues.items():
        queue_admin.post(
            "/api/approval-queues/",
            {"key": f"xss-q-{number}", "name": text[:150], "team": team.slug},
            content_type="application/json",
        )
    named_queues = ApprovalQueue.objects.filter(key__startswith="xss-q-").count()
    assert named_queues >= 60, f"the API stored only {named_queues} queues"
    stored += named_queues
    pages += [reverse("approvals:queues"), reverse("approvals:queue", args=["xss-q-801"])]

    # Trigger names (120 characters), through the API, by the workflow's owner: one webhook per payload.
    from apps.workflows.models import Trigger

    triggers = payloads(first=901)
    for text in triggers.values():
        owner.post(
            f"/api/workflows/{claims_workflow.slug}/triggers/",
            {"kind": "webhook", "name": text[:120], "config": {}},
            content_type="application/json",
        )
    named = Trigger.objects.filter(workflow=claims_workflow, name__in=[t[:120] for t in triggers.values()])
    assert named.count() >= 60, f"the API stored only {named.count()} triggers"
    stored += named.count()
    first_trigger = named.order_by("pk").first()
    pages += [reverse("runs:triggers", args=[claims_workflow.slug])]
    if first_trigger is not None:
        pages += [reverse("runs:trigger-detail", args=[first_trigger.pk])]
    assert Run.objects.exists()
    return stored, {"analyst": pages, "reviewer": reviewer_pages}


@pytest.mark.timeout(900)
def test_s2_stored_xss(asgi_server, analyst, reviewer, admin_user_role, claims_workflow, sample_claim):
    from playwright.sync_api import sync_playwright

    from tests.e2e.conftest import CHROMIUM_FLAGS, chromium_path

    assert len(TEMPLATES) >= 60
    stored, pages = _write_everything(analyst, admin_user_role, reviewer, claims_workflow, sample_claim)
    assert stored >= 60 * 5, f"only {stored} payloads were stored: the forms refused them, so nothing is tested"

    executed: set[int] = set()
    markup: dict[int, str] = {}
    visited: dict[str, int] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS, headless=True)
        for persona, paths in ((analyst, pages["analyst"]), (reviewer, pages["reviewer"])):
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            login = Client()
            login.force_login(persona)
            context.add_cookies([{"name": "sessionid", "value": login.cookies["sessionid"].value, "url": asgi_server}])
            context.expose_function("__xss", lambda number: executed.add(int(number)))

            def hit(route, request) -> None:
                executed.add(int(request.url.rstrip("/").split("/hit/")[1].split("/")[0]))
                route.fulfill(status=204, body="")

            context.route(f"http://{HIT_HOST}/**", hit)
            page = context.new_page()
            page.on("dialog", lambda dialog: dialog.dismiss())
            if persona == analyst:
                # The control: a page the test writes itself with a payload raw, outside the product and its CSP,
                # must be caught by both detectors, or a zero below would mean nothing.
                page.set_content("<div><img src=x onerror=__xss(99999)></div>")
                page.wait_for_timeout(300)
                assert 99999 in executed and 99999 in injected_markup(page.content()), "the detectors are blind"
                executed.discard(99999)
            for path in paths:
                response = page.goto(asgi_server + path, wait_until="networkidle")
                visited[f"{persona.username} {path}"] = response.status if response else 0
                served = response.text() if response else ""
                page.wait_for_timeout(300)  # autofocus and animation handlers fire just after load
                for number in injected_markup(served) | injected_markup(page.content()):
                    markup.setdefault(number, f"{persona.username} {path}")
            context.close()
        browser.close()

    not_shown = {page: status for page, status in visited.items() if status != 200}
    ok = not executed and not markup and not not_shown
    record_figure(
        f"S2 xss executed {len(executed)} of {stored} injected_markup {len(markup)} of {stored} "
        f"{'ok' if ok else 'FAILED'}"
    )
    assert not not_shown, f"pages that should show the payloads did not open: {not_shown}"
    assert not executed, f"payloads that ran script: {sorted(executed)}"
    assert not markup, f"payloads whose markup was served as markup: {markup}"
