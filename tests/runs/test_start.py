"""Starting runs from the form and the API: validation, idempotency, permissions. No worker needed."""

from __future__ import annotations

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from apps.audit.models import AuditEvent
from apps.runs.models import Run, StepRun


@pytest.fixture
def api(analyst):
    client = APIClient()
    client.force_authenticate(analyst)
    return client


def test_api_starts_a_run_pinned_to_the_published_version(api, claims_workflow, sample_claim):
    response = api.post(
        f"/api/workflows/{claims_workflow.slug}/runs/", {"inputs": {"claim_text": sample_claim}}, format="json"
    )
    assert response.status_code == 201, response.content
    run = Run.objects.get(pk=response.json()["id"])
    assert run.version == claims_workflow.versions.get() and run.inputs == {"claim_text": sample_claim}
    assert list(run.step_runs.values_list("step_key", "state")) == [("extract", "queued"), ("decide", "pending")]
    assert AuditEvent.objects.filter(verb="run.started", target_id=str(run.pk)).exists()


def test_api_invalid_input_is_400_with_field_errors_and_creates_nothing(api, claims_workflow):
    response = api.post(
        f"/api/workflows/{claims_workflow.slug}/runs/",
        {"inputs": {"claim_text": "too short", "colour": "red"}},
        format="json",
    )
    assert response.status_code == 400
    body = response.json()
    assert "at least 20 characters" in body["fields"]["claim_text"][0]
    assert body["fields"]["colour"] == ["This field is not part of the workflow's input."]
    assert not Run.objects.exists() and not StepRun.objects.exists()


def test_api_missing_inputs_object_is_400(api, claims_workflow):
    response = api.post(f"/api/workflows/{claims_workflow.slug}/runs/", {"inputs": "text"}, format="json")
    assert response.status_code == 400 and "inputs" in response.json()


def test_api_idempotency_key_returns_the_same_run(api, claims_workflow, sample_claim):
    url = f"/api/workflows/{claims_workflow.slug}/runs/"
    body = {"inputs": {"claim_text": sample_claim}}
    first = api.post(url, body, format="json", HTTP_IDEMPOTENCY_KEY="claim-42")
    second = api.post(url, body, format="json", HTTP_IDEMPOTENCY_KEY="claim-42")
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["id"] == second.json()["id"] and Run.objects.count() == 1


def test_api_unknown_and_forbidden_workflows_are_404(claims_workflow, outsider, sample_claim):
    client = APIClient()
    client.force_authenticate(outsider)
    body = {"inputs": {"claim_text": sample_claim}}
    assert client.post(f"/api/workflows/{claims_workflow.slug}/runs/", body, format="json").status_code == 404
    assert client.post("/api/workflows/no-such-thing/runs/", body, format="json").status_code == 404
    assert client.get(f"/api/workflows/{claims_workflow.slug}/").status_code == 404


def test_manager_may_view_but_not_run(claims_workflow, manager, sample_claim):
    client = APIClient()
    client.force_authenticate(manager)
    assert client.get(f"/api/workflows/{claims_workflow.slug}/").status_code == 200
    response = client.post(
        f"/api/workflows/{claims_workflow.slug}/runs/", {"inputs": {"claim_text": sample_claim}}, format="json"
    )
    assert response.status_code == 403


def test_form_shows_inline_errors_and_creates_nothing(client, analyst, claims_workflow):
    client.force_login(analyst)
    response = client.post(reverse("runs:create", args=[claims_workflow.slug]), {"claim_text": "short"})
    assert response.status_code == 400
    assert "Ensure this value has at least 20 characters" in response.content.decode()
    assert not Run.objects.exists()


def test_form_sample_prefills_and_starts_a_run(client, analyst, claims_workflow, sample_claim):
    client.force_login(analyst)
    page = client.get(reverse("runs:create", args=[claims_workflow.slug]) + "?sample=1").content.decode()
    assert "POL-10442" in page
    response = client.post(reverse("runs:create", args=[claims_workflow.slug]), {"claim_text": sample_claim})
    run = Run.objects.get()
    assert response.status_code == 302 and response.url == reverse("runs:detail", args=[run.pk])


def test_run_page_renders_the_recorded_truth(client, analyst, reviewer, outsider, claims_workflow, sample_claim):
    from apps.runs.services import run_start

    run, _ = run_start(actor=analyst, workflow=claims_workflow, inputs={"claim_text": sample_claim})
    StepRun.objects.filter(run=run, step_key="extract").update(streamed_text='{"claimant": "Mar')
    client.force_login(reviewer)  # same team: may view
    page = client.get(reverse("runs:detail", args=[run.pk])).content.decode()
    assert f'ws-connect="/ws/runs/{run.pk}/?v=' in page
    assert "{&quot;claimant&quot;: &quot;Mar" in page
    client.force_login(outsider)
    assert client.get(reverse("runs:detail", args=[run.pk])).status_code == 404
    assert client.get(reverse("runs:detail", args=[run.pk + 999])).status_code == 404


def test_api_idempotency_key_reused_with_another_body_is_422(api, claims_workflow, sample_claim):
    url = f"/api/workflows/{claims_workflow.slug}/runs/"
    first = api.post(url, {"inputs": {"claim_text": sample_claim}}, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    other = api.post(
        url, {"inputs": {"claim_text": sample_claim + " (edited)"}}, format="json", HTTP_IDEMPOTENCY_KEY="k-1"
    )
    assert first.status_code == 201 and other.status_code == 422
    assert "already used for a different request" in other.json()["detail"]
    assert Run.objects.count() == 1


def test_api_overlong_idempotency_key_is_400(api, claims_workflow, sample_claim):
    response = api.post(
        f"/api/workflows/{claims_workflow.slug}/runs/",
        {"inputs": {"claim_text": sample_claim}},
        format="json",
        HTTP_IDEMPOTENCY_KEY="k" * 129,
    )
    assert response.status_code == 400 and not Run.objects.exists()


def test_api_non_numeric_run_id_is_404(api):
    assert api.get("/api/runs/abc/").status_code == 404
