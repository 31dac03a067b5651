"""Routes × personas: who gets 200, 403 or 404, and what list pages show to whom (S1). Every named route must
appear in the table, so a new route without a rule fails this test."""

from __future__ import annotations

import pytest
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIClient

from apps.runs.services import run_start
from tests.security.inventory import AREAS
from tests.support.figures import record_figure

# Route name → {persona: expected status}. "anonymous" is redirected (pages) or refused (API).
OK, HIDDEN, FORBIDDEN, LOGIN, UNAUTHENTICATED = 200, 404, 403, 302, 401
EVERYONE_SIGNED_IN = {"analyst": OK, "reviewer": OK, "manager": OK, "outsider": OK}
# The owner edits; her teammate and the manager may see the workflow but not change it; others may not know it.
EDIT_ONLY_OWNER = {"analyst": OK, "reviewer": FORBIDDEN, "manager": FORBIDDEN, "outsider": HIDDEN, "anonymous": LOGIN}

# The auditor reads what the manager reads and changes nothing, so a row without an "auditor" key expects the
# manager's status for her (see `expected`); rows where she differs say so.
MATRIX: dict[str, dict[str, int]] = {
    "home": {**EVERYONE_SIGNED_IN, "anonymous": LOGIN},
    "workflows:list": {**EVERYONE_SIGNED_IN, "anonymous": LOGIN},
    "workflows:detail": {"analyst": OK, "reviewer": OK, "manager": OK, "outsider": HIDDEN, "anonymous": LOGIN},
    # Only analysts create workflows; only the owner (and admins) change one; whoever sees it reads its versions.
    "workflows:create": {
        "analyst": OK,
        "reviewer": FORBIDDEN,
        "manager": FORBIDDEN,
        "outsider": FORBIDDEN,
        "anonymous": LOGIN,
    },
    "workflows:settings": {**EDIT_ONLY_OWNER},
    "workflows:editor": {**EDIT_ONLY_OWNER},
    "workflows:editor-inputs": {**EDIT_ONLY_OWNER},
    "workflows:check-expression": {**EDIT_ONLY_OWNER},
    "workflows:versions": {"analyst": OK, "reviewer": OK, "manager": OK, "outsider": HIDDEN, "anonymous": LOGIN},
    "workflows:export": {"analyst": OK, "reviewer": OK, "manager": OK, "outsider": HIDDEN, "anonymous": LOGIN},
    "workflows:import": {**EDIT_ONLY_OWNER},
    "workflows:compare": {"analyst": OK, "reviewer": OK, "manager": OK, "outsider": HIDDEN, "anonymous": LOGIN},
    "runs:list": {**EVERYONE_SIGNED_IN, "anonymous": LOGIN},
    "runs:detail": {"analyst": OK, "reviewer": OK, "manager": OK, "outsider": HIDDEN, "anonymous": LOGIN},
    # Managers read everything but run nothing: they may see the workflow, so they are told no (403);
    # outsiders may not know it exists (404).
    "runs:create": {"analyst": OK, "reviewer": OK, "manager": FORBIDDEN, "outsider": HIDDEN, "anonymous": LOGIN},
    "api:workflow-list": {**EVERYONE_SIGNED_IN, "anonymous": UNAUTHENTICATED},
    "api:workflow-detail": {
        "analyst": OK,
        "reviewer": OK,
        "manager": OK,
        "outsider": HIDDEN,
        "anonymous": UNAUTHENTICATED,
    },
    "api:run-list": {**EVERYONE_SIGNED_IN, "anonymous": UNAUTHENTICATED},
    # Export: whoever may see the workflow; the file format's JSON Schema: everyone signed in.
    "api:workflow-export": {
        "analyst": OK,
        "reviewer": OK,
        "manager": OK,
        "outsider": HIDDEN,
        "anonymous": UNAUTHENTICATED,
    },
    "api:workflow-document-schema": {**EVERYONE_SIGNED_IN, "anonymous": UNAUTHENTICATED},
    # The draft over REST is the builder's: the owner only. Versions and their diff: whoever sees the workflow.
    "api:workflow-draft": {**EDIT_ONLY_OWNER, "anonymous": UNAUTHENTICATED},
    "api:workflow-version-list": {
        "analyst": OK,
        "reviewer": OK,
        "manager": OK,
        "outsider": HIDDEN,
        "anonymous": UNAUTHENTICATED,
    },
    "api:workflow-version-detail": {
        "analyst": OK,
        "reviewer": OK,
        "manager": OK,
        "outsider": HIDDEN,
        "anonymous": UNAUTHENTICATED,
    },
    "api:workflow-version-diff": {
        "analyst": OK,
        "reviewer": OK,
        "manager": OK,
        "outsider": HIDDEN,
        "anonymous": UNAUTHENTICATED,
    },
    "api:approval-list": {**EVERYONE_SIGNED_IN, "anonymous": UNAUTHENTICATED},
    "api:run-detail": {"analyst": OK, "reviewer": OK, "manager": OK, "outsider": HIDDEN, "anonymous": UNAUTHENTICATED},
    "api:run-calls": {"analyst": OK, "reviewer": OK, "manager": OK, "outsider": HIDDEN, "anonymous": UNAUTHENTICATED},
    "api:api-root": {**EVERYONE_SIGNED_IN, "anonymous": UNAUTHENTICATED},
    "api:schema": {**EVERYONE_SIGNED_IN, "anonymous": UNAUTHENTICATED},
    "api:docs": {**EVERYONE_SIGNED_IN, "anonymous": UNAUTHENTICATED},
    # Model endpoints are the admin role's (tests/inference/test_endpoint_pages.py covers admins).
    # Analysts read the list (the names their steps may use), managers and auditors read it too (what each
    # endpoint serves and costs); only admins change anything.
    "inference:endpoints": {
        "analyst": OK,
        "reviewer": FORBIDDEN,
        "manager": OK,
        "auditor": OK,
        "outsider": FORBIDDEN,
        "anonymous": LOGIN,
    },
    # The inbox: every signed-in person has one (empty when she works no queue). An item: whoever works its
    # queue or may view its run (the analyst who started it reads it; only reviewers decide); others 404.
    "approvals:inbox": {**EVERYONE_SIGNED_IN, "anonymous": LOGIN},
    "approvals:new-items": {**EVERYONE_SIGNED_IN, "anonymous": LOGIN},
    "approvals:item": {"analyst": OK, "reviewer": OK, "manager": OK, "outsider": HIDDEN, "anonymous": LOGIN},
    # A page image of an item's source PDF: the world's item has none, so 404 for all; a page that exists
    # (200 for whoever sees the item, 404 for others): tests/approvals/test_document_review.py.
    "approvals:item-page": {**dict.fromkeys(EVERYONE_SIGNED_IN, HIDDEN), "anonymous": LOGIN},
    # Her own notifications and out-of-office: every signed-in person has them (empty when she works no queue).
    "approvals:notifications": {**EVERYONE_SIGNED_IN, "anonymous": LOGIN},
    "approvals:away": {**EVERYONE_SIGNED_IN, "anonymous": LOGIN},
    # The nav's unread badge, loaded by htmx after each page: nothing (204) for someone signed out, so a
    # session that ended never swaps the sign-in page into the nav.
    "approvals:badge": {**EVERYONE_SIGNED_IN, "anonymous": 204},
    # A workflow's review accuracy: whoever may view the workflow.
    "approvals:workflow-accuracy": {
        "analyst": OK,
        "reviewer": OK,
        "manager": OK,
        "outsider": HIDDEN,
        "anonymous": LOGIN,
    },
    "api:approval-detail": {
        "analyst": OK,
        "reviewer": OK,
        "manager": OK,
        "outsider": HIDDEN,
        "anonymous": UNAUTHENTICATED,
    },
    "api:approval-counts": {**EVERYONE_SIGNED_IN, "anonymous": UNAUTHENTICATED},
    "api:approval-queue-list": {**EVERYONE_SIGNED_IN, "anonymous": UNAUTHENTICATED},
    # A queue: those who work it, may name it in steps, or lead it.
    "api:approval-queue-detail": {
        "analyst": OK,
        "reviewer": OK,
        "manager": HIDDEN,
        "outsider": HIDDEN,
        "anonymous": UNAUTHENTICATED,
    },
    # The queue pages: the list of those she may see (empty for some); one queue's page for those who see it.
    "approvals:queues": {**EVERYONE_SIGNED_IN, "anonymous": LOGIN},
    "approvals:queue": {"analyst": OK, "reviewer": OK, "manager": HIDDEN, "outsider": HIDDEN, "anonymous": LOGIN},
    # A queue's members over the API: those who manage it (none of the personas; its lead and admins in
    # tests/approvals/test_queue_pages.py); the rest who see the queue are told no, the others may not know it.
    "api:approval-queue-members": {
        "analyst": FORBIDDEN,
        "reviewer": FORBIDDEN,
        "manager": HIDDEN,
        "outsider": HIDDEN,
        "anonymous": UNAUTHENTICATED,
    },
    "api:absence-list": {**EVERYONE_SIGNED_IN, "anonymous": UNAUTHENTICATED},
    "api:notification-list": {**EVERYONE_SIGNED_IN, "anonymous": UNAUTHENTICATED},
    # The corrections export: whoever may view the workflow.
    "api:workflow-corrections": {
        "analyst": OK,
        "reviewer": OK,
        "manager": OK,
        "outsider": HIDDEN,
        "anonymous": UNAUTHENTICATED,
    },
    "inference:endpoint-create": {**dict.fromkeys(EVERYONE_SIGNED_IN, FORBIDDEN), "anonymous": LOGIN},
    "inference:endpoint-edit": {**dict.fromkeys(EVERYONE_SIGNED_IN, FORBIDDEN), "anonymous": LOGIN},
}

# Routes checked elsewhere or not object-scoped: their own tests cover them.
EXEMPT = {
    # POST-only operations on runs and incidents: tests/runs/test_operate.py covers them by persona.
    "api:run-cancel",
    "api:run-restart",
    "api:run-replay",
    "api:run-diff",
    "api:incident-resolve",
    "runs:cancel",
    "runs:restart",
    "runs:incident-resolve",
    # An agent's call the run's starter confirms (POST): tests/steps/test_llm_agent.py covers it by persona.
    "runs:tool-call-confirm",
    # Replay and what-if (POST) and the diff of such runs need a finished run: test_replay_what_if_by_persona
    # below covers them.
    "runs:replay",
    "runs:what-if",
    "runs:diff",
    # Probe and enable/disable (POST): tests/inference/test_endpoint_pages.py covers them by persona.
    "inference:endpoint-probe",
    "inference:endpoint-toggle",
    # Test runs and pinned test data (POST only): tests/workflows/test_builder_safety.py covers them by persona.
    "runs:test-start",
    "workflows:pin",
    # The builder's writes (POST only): test_builder_writes_by_persona below covers them.
    "workflows:editor-operation",
    "workflows:editor-step",
    "workflows:publish",
    "workflows:version-restore",
    # The inbox's writes (POST, and DELETE of one's own absence): tests/approvals/test_queue_work.py covers them
    # by persona (a reviewer outside the queue gets 404, an analyst who does not review gets 403).
    "api:approval-decide",
    "api:approval-claim",
    "api:approval-release",
    "api:approval-skip",
    "api:approval-reassign",
    "api:approval-next",
    "api:approval-bulk-approve",
    "api:notification-read",
    "api:absence-detail",
    "approvals:next",
    "approvals:claim",
    "approvals:release",
    "approvals:skip",
    "approvals:reassign",
    "approvals:decide",
    # The inbox pages' writes (POST only): tests/approvals/test_inbox_pages.py covers them (bulk approval, saved
    # views shared or not, absences, marking notifications read), each only on the person's own things.
    "approvals:bulk",
    "approvals:views-save",
    "approvals:views-delete",
    "approvals:notifications-read",
    "approvals:away-remove",
    # A queue's members through its page (POST only): tests/approvals/test_queue_pages.py covers it by persona.
    "approvals:queue-members",
    "accounts:login",
    "accounts:logout",
    "healthz",
    # Browsers' CSP reports (POST, anyone: a report changes nothing but a log line): tests/core/test_csp_report.py.
    "csp-report",
    "api:auth-token",
    "api:workflow-run-start",
    # Uploading a PDF run input (POST only): tests/runs/test_documents.py covers it.
    "api:document-upload",
    # Import (POST): tests/workflows/test_exchange.py covers who may import into what.
    "api:workflow-import",
    # Test runs and pinned test data over the API: tests/workflows/test_builder_safety.py covers them by persona.
    "api:workflow-draft-test",
    "api:workflow-pinned-list",
    "api:workflow-pinned",
    # The workflow API's writes (POST only): tests/workflows/test_api.py (test_writes_by_persona_change_nothing)
    # covers them by persona.
    "api:workflow-archive",
    "api:workflow-restore",
    "api:workflow-draft-edits",
    "api:workflow-draft-validate",
    "api:workflow-draft-publish",
    "api:workflow-version-restore",
}
PERSONAS = ["analyst", "reviewer", "manager", "auditor", "outsider", "anonymous"]

# Areas keep their rows beside this file (tests/security/routes_<area>.py): each module has MATRIX, EXEMPT and
# `world_args(world) -> {route: args}`, which may create the objects its routes need.
# (The `world` fixture these tables' arguments come from is in tests/security/conftest.py, shared with the
# broad sweeps beside this file.)
for area in AREAS:
    assert not set(area.MATRIX) & set(MATRIX), f"{area.__name__} repeats routes of the main table"
    MATRIX.update(area.MATRIX)
    EXEMPT |= area.EXEMPT


def expected(route: str, persona: str) -> int:
    """The status `persona` must get on `route`: the row's, and for the auditor without one, the manager's."""
    row = MATRIX[route]
    if persona == "auditor" and "auditor" not in row:
        return row["manager"]
    return row[persona]


def _route_names(resolver: URLResolver | None = None, namespace: str = "") -> set[str]:
    names: set[str] = set()
    for pattern in (resolver or get_resolver()).url_patterns:
        if isinstance(pattern, URLResolver):
            if pattern.namespace == "admin":
                continue  # Django's admin has its own staff-only guard
            inner = f"{namespace}{pattern.namespace}:" if pattern.namespace else namespace
            names |= _route_names(pattern, inner)
        elif isinstance(pattern, URLPattern) and pattern.name:
            names.add(namespace + pattern.name)
    return names


def test_every_route_has_a_rule():
    unknown = {name for name in _route_names() if "format" not in name} - set(MATRIX) - EXEMPT
    assert not unknown, f"routes without a permission rule: {sorted(unknown)}"


def _client(world, persona: str) -> APIClient:
    client = APIClient()
    if persona != "anonymous":
        client.force_login(world["personas"][persona])
    return client


# Who may see the demo workflow and its run: its owner, her team, and the manager's read-everything role.
SEES_THE_DEMO = {"analyst": True, "reviewer": True, "manager": True, "auditor": True, "outsider": False}


@pytest.mark.parametrize("route", ["workflows:list", "runs:list"])
@pytest.mark.parametrize("persona", sorted(SEES_THE_DEMO))
def test_list_pages_show_only_what_the_persona_may_see(world, route, persona):
    from django.urls import reverse

    response = _client(world, persona).get(reverse(route))
    assert response.status_code == OK
    page = response.content.decode()
    if SEES_THE_DEMO[persona]:
        assert "Claims triage" in page
        if route == "runs:list":
            assert reverse("runs:detail", args=[world["run"].pk]) in page
    else:
        assert "Claims triage" not in page
        assert f"/runs/{world['run'].pk}/" not in page
        empty = "No workflows are shared with you yet." if route == "workflows:list" else "No runs yet."
        assert empty in page


@pytest.mark.parametrize("persona", sorted(SEES_THE_DEMO))
def test_api_lists_show_only_what_the_persona_may_see(world, persona):
    from django.urls import reverse

    client = _client(world, persona)
    workflows = client.get(reverse("api:workflow-list")).json()
    runs = client.get(reverse("api:run-list")).json()
    if SEES_THE_DEMO[persona]:
        assert world["workflow"].slug in [item["slug"] for item in workflows["results"]]
        assert world["run"].pk in [item["id"] for item in runs["results"]]
    else:
        assert workflows["count"] == 0 and workflows["results"] == []
        assert runs["count"] == 0 and runs["results"] == []


# The run table of one workflow, as the workflow page loads it (an htmx fragment): those who may not see
# the workflow get 404, not an empty table that would confirm it exists.
RUN_TABLE_OF_WORKFLOW = {
    "analyst": OK,
    "reviewer": OK,
    "manager": OK,
    "auditor": OK,
    "outsider": HIDDEN,
    "anonymous": LOGIN,
}


@pytest.mark.parametrize("persona", PERSONAS)
def test_run_table_of_a_workflow_by_persona(world, persona):
    from django.urls import reverse

    url = f"{reverse('runs:list')}?workflow={world['workflow'].slug}"
    response = _client(world, persona).get(url, HTTP_HX_REQUEST="true")
    assert response.status_code == RUN_TABLE_OF_WORKFLOW[persona], f"{persona} GET {url} (htmx)"
    if response.status_code == OK:
        fragment = response.content.decode()
        assert "<html" not in fragment  # the table alone, not the whole page
        assert reverse("runs:detail", args=[world["run"].pk]) in fragment


@pytest.mark.django_db
def test_replay_what_if_by_persona(analyst, reviewer, manager, outsider, claims_workflow, sample_claim):
    """Who may replay a finished run, re-run it with another prompt, and read the comparison."""
    from apps.runs.models import Run
    from apps.runs.services import run_cancel, run_replay

    run, _ = run_start(actor=analyst, workflow=claims_workflow, inputs={"claim_text": sample_claim})
    run_cancel(run=run, actor=analyst)
    replay = run_replay(run=run, actor=analyst)
    expected = {
        # persona: (POST replay, POST what-if with a prompt, GET diff of the replay)
        "analyst": (302, 302, 200),
        # The reviewer reads the team's runs; operating them is for those who build or administer workflows.
        "reviewer": (403, 403, 200),
        "manager": (403, 403, 200),
        "outsider": (404, 404, 404),
    }
    personas = {"analyst": analyst, "reviewer": reviewer, "manager": manager, "outsider": outsider}
    for persona, (replay_status, what_if_status, diff_status) in expected.items():
        client = APIClient()
        client.force_login(personas[persona])
        before = Run.objects.count()
        assert client.post(f"/runs/{run.pk}/replay/").status_code == replay_status, persona
        body = {"step_key": "extract", "prompt": "Another prompt {{ input.claim_text }}"}
        assert client.post(f"/runs/{run.pk}/what-if/", body).status_code == what_if_status, persona
        assert client.get(f"/runs/{replay.pk}/diff/").status_code == diff_status, persona
        created = Run.objects.count() - before
        assert created == {"analyst": 2}.get(persona, 0), persona


# The builder's writes: the owner changes the draft (a redirect back to the builder); her teammate and the manager
# see the workflow but may not change it (403); the outsider may not know it exists (404); nobody else's change
# reaches the draft.
BUILDER_WRITES = {"analyst": 302, "reviewer": 403, "manager": 403, "auditor": 403, "outsider": 404, "anonymous": 302}


@pytest.mark.parametrize("persona", PERSONAS)
def test_builder_writes_by_persona(world, persona):
    from apps.workflows.models import WorkflowVersion
    from apps.workflows.services import workflow_draft_get_or_create

    workflow = world["workflow"]
    draft = workflow_draft_get_or_create(actor=world["personas"]["analyst"], workflow=workflow)
    started = draft.revision
    client = _client(world, persona)
    slug = workflow.slug
    posts = [
        (
            f"/workflows/{slug}/edit/operation/",
            {"operation": "insert", "type": "util.delay", "lane": "root", "index": "0"},
        ),
        (f"/workflows/{slug}/edit/steps/decide/", {"name": "Renamed"}),
        (f"/workflows/{slug}/edit/run-form/", {"action": "fields", "rows": "0"}),
        (f"/workflows/{slug}/edit/publish/", {"note": "x"}),
        (f"/workflows/{slug}/versions/1/restore/", {}),
        (f"/workflows/{slug}/settings/", {"action": "archive"}),
    ]
    for url, body in posts:
        response = client.post(url, body)
        assert response.status_code == BUILDER_WRITES[persona], f"{persona} POST {url}"
        if persona == "anonymous":
            assert "/accounts/login/" in response["Location"]
    draft.refresh_from_db()
    changed = draft.revision > started or not WorkflowVersion.objects.filter(pk=draft.pk, state="draft").exists()
    assert changed == (persona == "analyst")


def test_the_auditor_changes_nothing_anywhere(world):
    """Aude reads everything an auditor must and may change nothing: each main write, by page and by API, is
    refused (403 where she may see the object, 404 where she may not), and no row or audit event appears."""
    from django.urls import reverse

    from apps.approvals.models import ApprovalRequest
    from apps.audit.models import AuditEvent
    from apps.connectors.models import Connection
    from apps.inference.models import ModelEndpoint
    from apps.runs.models import Run
    from apps.workflows.models import Workflow, WorkflowVersion

    workflow = world["workflow"]
    slug = workflow.slug
    item_id = world["args"]["approvals:item"][0]
    endpoint_id = world["args"]["inference:endpoint-edit"][0]

    def state() -> tuple[object, ...]:
        # Refused requests are audited (request.denied, request.not_found): they change nothing else.
        return (
            AuditEvent.objects.exclude(verb__in=("request.denied", "request.not_found")).count(),
            Workflow.objects.count(),
            WorkflowVersion.objects.count(),
            Run.objects.count(),
            list(ApprovalRequest.objects.order_by("pk").values_list("pk", "state")),
            list(ModelEndpoint.objects.order_by("pk").values_list("pk", "name", "url", "enabled")),
            Connection.objects.count(),
        )

    before = state()
    client = _client(world, "auditor")
    posts = [
        (reverse("workflows:create"), {"name": "Audit trap", "team": workflow.team_id}),
        (reverse("workflows:publish", args=[slug]), {"note": "by the auditor"}),
        (reverse("workflows:settings", args=[slug]), {"action": "archive"}),
        (reverse("runs:create", args=[slug]), {"claim_text": "A claim"}),
        (reverse("inference:endpoint-edit", args=[endpoint_id]), {"name": "renamed", "url": "http://127.0.0.1:8"}),
        (reverse("inference:endpoint-create"), {"name": "new-one", "url": "http://127.0.0.1:8"}),
        (reverse("inference:endpoint-toggle", args=[endpoint_id]), {}),
        (reverse("connectors:create"), {"name": "erp", "kind": "http", "team": workflow.team_id}),
    ]
    for url, body in posts:
        response = client.post(url, body)
        assert response.status_code in (403, 404), f"auditor POST {url}: {response.status_code}"
    api_posts = [
        (reverse("api:workflow-run-start", args=[slug]), {"inputs": {"claim_text": "A claim"}}),
        (reverse("api:workflow-draft-publish", args=[slug]), {"note": "x"}),
        (reverse("api:approval-decide", args=[item_id]), {"decision": "approved", "reason": "x"}),
    ]
    for url, body in api_posts:
        response = client.post(url, body, format="json")
        assert response.status_code in (403, 404), f"auditor POST {url}: {response.status_code}"
    # The inbox page answers a refused decision as it answers every refusal there: back to the item with the
    # reason as a message (its "review" stage changes nothing for anyone, so the submit stage is what counts).
    decide = reverse("approvals:decide", args=[item_id])
    response = client.post(decide, {"decision": "approved", "stage": "submit", "reason": "x"})
    assert response.status_code in (302, 403, 404), f"auditor POST {decide}: {response.status_code}"
    if response.status_code == 302:
        followed = client.get(response["Location"]).content.decode()
        assert "Approved:" not in followed and "recorded" not in followed
    assert state() == before


# --- S1: the whole matrix in one sweep, with unsafe methods and another team's objects, counted as a figure ----

# In every name of the foreign team's objects (and, lower-cased, in their slugs): it must appear on no page a persona
# outside that team sees. Searches look for a prefix, so a page echoing the search box does not count as a leak.
CANARY = "Zebracanary"
SEARCH = CANARY[:8]
OUTSIDE_THE_FOREIGN_TEAM = ("analyst", "reviewer", "outsider", "anonymous")
REFUSED = (302, 401, 403, 404, 405)


@pytest.fixture
def foreign_world(db):
    """A second team's workflow with a run, an approval item, a knowledge collection with a document and a
    connection, all named with CANARY: none of the matrix's personas but the manager and the auditor (who read
    everything by role) may see any of it."""
    from apps.accounts.services import team_create, user_create
    from apps.knowledge.services import collection_create, document_upload
    from apps.workflows.demo import CLAIMS_TRIAGE_GRAPH, CLAIMS_TRIAGE_INPUT_SCHEMA, SAMPLE_CLAIMS
    from apps.workflows.services import workflow_create, workflow_version_create, workflow_version_publish
    from tests.connectors.helpers import make_connection

    fay = user_create(username="fay", password="a-long-enough-password", roles=["analyst"], first_name="Fay")
    team = team_create(name=f"{CANARY} team", members=[fay])
    workflow = workflow_create(actor=fay, name=f"{CANARY} workflow", description=f"{CANARY} secret", team=team)
    version = workflow_version_create(
        actor=fay, workflow=workflow, graph=CLAIMS_TRIAGE_GRAPH, input_schema=CLAIMS_TRIAGE_INPUT_SCHEMA
    )
    workflow_version_publish(actor=fay, version=version)
    run, _ = run_start(
        actor=fay, workflow=workflow, inputs={"claim_text": f"{CANARY} {SAMPLE_CLAIMS[0]['claim_text']}"}
    )
    from tests.security.world import parked_approval

    item = parked_approval(fay, team, name=f"{CANARY} approval")
    collection = collection_create(actor=fay, name="zebracanary-kb", title=f"{CANARY} KB", team=team)
    document, _ = document_upload(
        actor=fay, collection=collection, name=f"{CANARY}.md", data=f"# {CANARY}\n\nSecret.".encode()
    )
    connection = make_connection(team, name="zebracanary-erp", label=f"{CANARY} ERP")
    return {
        # Route → URL arguments that name the foreign team's objects.
        "workflows:detail": [workflow.slug],
        "workflows:editor": [workflow.slug],
        "workflows:settings": [workflow.slug],
        "workflows:versions": [workflow.slug],
        "workflows:export": [workflow.slug],
        "runs:detail": [run.pk],
        "runs:create": [workflow.slug],
        "runs:triggers": [workflow.slug],
        "api:workflow-detail": [workflow.slug],
        "api:workflow-export": [workflow.slug],
        "api:workflow-draft": [workflow.slug],
        "api:workflow-version-list": [workflow.slug],
        "api:run-detail": [run.pk],
        "api:run-calls": [run.pk],
        "approvals:item": [item.pk],
        "api:approval-detail": [item.pk],
        "approvals:queue": [item.queue.key],
        "api:approval-queue-detail": [item.queue.key],
        "approvals:workflow-accuracy": [workflow.slug],
        "api:workflow-corrections": [workflow.slug],
        "knowledge:detail": [collection.name],
        "knowledge:documents": [collection.name],
        "knowledge:search": [collection.name],
        "api:collection-detail": [collection.name],
        "api:collection-documents": [collection.name],
        "api:collection-document": [collection.name, document.pk],
        "connectors:detail": [connection.name],
        "api:connection-detail": [connection.name],
        "dashboards:process": [workflow.slug],
        "evaluations:suite": [workflow.slug],
        "assistants:workflow-tool": [workflow.slug],
    }


@pytest.mark.timeout(900)
def test_s1_authorization_leaks(world, foreign_world):
    """Every route of the table for every persona, by GET and by each unsafe method, plus another team's objects:
    a leak is a success (2xx, or a redirect other than to sign in) or the other team's canary in a body where the
    table says the persona must be refused or may not see it, and any row written by a refused request."""
    from django.urls import reverse

    from apps.dashboards.models import KpiSettings
    from tests.security.inventory import UNSAFE_METHODS, changed_tables, database_fingerprint

    clients = {persona: _client(world, persona) for persona in PERSONAS}
    checks, leaks, mismatches = 0, [], []

    def text(response) -> str:
        if getattr(response, "streaming", False):  # CSV and export downloads
            return b"".join(response.streaming_content).decode(errors="replace")
        return response.content.decode(errors="replace")

    def shows_canary(response) -> bool:
        return CANARY.lower() in text(response).lower()

    def leaked(response) -> bool:
        if 200 <= response.status_code < 300:
            return True
        return 300 <= response.status_code < 400 and "/accounts/login/" not in response.get("Location", "")

    # The dashboards' settings row is made on first read (a default, not a write a refusal could cause).
    KpiSettings.objects.get_or_create(pk=KpiSettings.SINGLETON_PK)
    before = database_fingerprint()
    for route in sorted(MATRIX):
        url = reverse(route, args=world["args"].get(route, []))
        for persona in PERSONAS:
            client, want = clients[persona], expected(route, persona)
            response = client.get(url)
            checks += 1
            if response.status_code != want:
                mismatches.append(f"{persona} GET {url}: {response.status_code}, the table says {want}")
                if want in REFUSED and leaked(response):
                    leaks.append(f"{persona} GET {url}: {response.status_code} where {want} was expected")
            if persona in OUTSIDE_THE_FOREIGN_TEAM and shows_canary(response):
                checks += 1
                leaks.append(f"{persona} GET {url}: shows another team's object")
            elif persona in OUTSIDE_THE_FOREIGN_TEAM:
                checks += 1
            if want not in REFUSED:
                continue  # what those allowed may change: the write tests named in EXEMPT and the area files
            for method in UNSAFE_METHODS:
                response = client.generic(method, url, '{"name": "s1 probe"}', content_type="application/json")
                checks += 1
                if leaked(response):
                    leaks.append(f"{persona} {method} {url}: {response.status_code}, refused by GET with {want}")
    # The other team's objects, by their own URLs: refused for everyone outside it, whatever the method.
    for route, args in sorted(foreign_world.items()):
        url = reverse(route, args=args)
        for persona in OUTSIDE_THE_FOREIGN_TEAM:
            for method in ("GET", *UNSAFE_METHODS):
                response = clients[persona].generic(method, url, "{}", content_type="application/json")
                checks += 1
                if leaked(response) or shows_canary(response):
                    leaks.append(f"{persona} {method} {url}: {response.status_code} on another team's object")
    # Searches and filters by the canary's name over the lists a persona outside the team can open.
    for url in (
        f"{reverse('api:workflow-list')}?search={SEARCH}",
        f"{reverse('api:run-list')}?search={SEARCH}",
        f"{reverse('api:approval-list')}?search={SEARCH}",
        f"{reverse('workflows:list')}?q={SEARCH}",
        f"{reverse('runs:list')}?q={SEARCH}",
        f"{reverse('approvals:inbox')}?q={SEARCH}",
        f"{reverse('knowledge:collections')}?q={SEARCH}",
    ):
        for persona in OUTSIDE_THE_FOREIGN_TEAM:
            response = clients[persona].get(url)
            checks += 1
            if shows_canary(response):
                leaks.append(f"{persona} GET {url}: another team's object in a search")
    changed = changed_tables(before, database_fingerprint())
    checks += 1
    if changed:
        leaks.append(f"refused requests wrote to {changed}")

    # The manager reads everything: the canary must show where she looks, or the scan above could not fail.
    manager_sees = clients["manager"].get(reverse("api:workflow-list") + f"?search={SEARCH}").content.decode()
    assert CANARY in manager_sees, "the foreign workflow is not where the manager should see it: the scan is blind"

    ok = not leaks
    record_figure(f"S1 authz leaks {len(leaks)} of {checks} {'ok' if ok else 'FAILED'}")
    assert not leaks, f"{len(leaks)} leaks:\n" + "\n".join(leaks[:60])
    assert not mismatches, "statuses differ from the table:\n" + "\n".join(mismatches[:60])
