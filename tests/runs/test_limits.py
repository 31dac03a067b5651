"""L6: limits per user on run starts and API calls (429 with Retry-After and a clear message), a maximum page
size on API lists, and out-of-range paging values answered 400."""

from __future__ import annotations

import pytest
from django.core.cache import cache
from django.test import Client
from rest_framework.test import APIClient

from apps.runs.models import Run

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_counters():
    cache.clear()  # counters are keyed by user id, which a flushed database hands out again
    yield
    cache.clear()


def api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_run_starts_per_user_are_limited_on_the_api_and_the_page(settings, analyst, claims_workflow, sample_claim):
    settings.AIOS_RUN_STARTS_PER_MINUTE = 3
    client = api(analyst)
    url = f"/api/workflows/{claims_workflow.slug}/runs/"
    codes = [client.post(url, {"inputs": {"claim_text": sample_claim}}, format="json").status_code for _ in range(4)]
    assert codes == [201, 201, 201, 429]
    refused = client.post(url, {"inputs": {"claim_text": sample_claim}}, format="json")
    assert refused.status_code == 429
    assert 1 <= int(refused["Retry-After"]) <= 60
    assert "runs in the last minute" in refused.json()["detail"] and refused.json()["retry_after"] >= 1
    assert Run.objects.filter(initiator=analyst).count() == 3

    # The page's run form shares the same count, answers 429 with the message, and keeps what was typed.
    browser = Client()
    browser.force_login(analyst)
    page = browser.post(
        f"/runs/start/{claims_workflow.slug}/", {"claim_text": "typed by hand: a claim of EUR 500 for a broken window"}
    )
    assert page.status_code == 429 and page["Retry-After"]
    body = page.content.decode()
    assert "runs in the last minute" in body and "typed by hand" in body
    assert Run.objects.filter(initiator=analyst).count() == 3


def test_api_calls_per_user_are_throttled(settings, analyst, reviewer):
    settings.AIOS_API_REQUESTS_PER_MINUTE = 5
    client = api(analyst)
    codes = [client.get("/api/workflows/").status_code for _ in range(6)]
    assert codes == [200] * 5 + [429]
    refused = client.get("/api/runs/")
    assert refused.status_code == 429 and int(refused["Retry-After"]) >= 1
    assert "throttled" in refused.json()["detail"].lower()
    assert api(reviewer).get("/api/workflows/").status_code == 200  # another user has her own count


def test_lists_have_a_maximum_page_size_and_bad_paging_is_400(settings, analyst, claims_workflow, sample_claim):
    settings.AIOS_API_MAX_PAGE_SIZE = 2
    client = api(analyst)
    for _ in range(3):
        assert (
            client.post(
                f"/api/workflows/{claims_workflow.slug}/runs/", {"inputs": {"claim_text": sample_claim}}, format="json"
            ).status_code
            == 201
        )
    page = client.get("/api/runs/").json()
    assert page["count"] == 3 and len(page["results"]) == 2 and page["next"]
    assert len(client.get("/api/runs/?limit=2&offset=2").json()["results"]) == 1
    for query in [
        "limit=3",
        "limit=1000000",
        "limit=-1",
        "limit=0",
        "limit=abc",
        "offset=-5",
        "offset=x",
        "offset=99999999999999999999",
        "limit=%EF%BC%91",
        "limit=1e3",
    ]:
        response = client.get(f"/api/runs/?{query}")
        assert response.status_code == 400, (query, response.status_code)
        assert "whole number" in str(response.json()), query
    assert client.get("/api/workflows/?limit=abc").status_code == 400


def test_a_runs_model_calls_are_paged(settings, analyst, claims_workflow, sample_claim):
    settings.AIOS_API_MAX_PAGE_SIZE = 2
    run = Run.objects.create(
        workflow=claims_workflow, version=claims_workflow.versions.get(), inputs={}, initiator=analyst
    )
    client = api(analyst)
    body = client.get(f"/api/runs/{run.pk}/calls/").json()
    assert body["count"] == 0 and body["results"] == []
    assert client.get(f"/api/runs/{run.pk}/calls/?limit=50").status_code == 400
