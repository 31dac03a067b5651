"""A database outage answers 503 with Retry-After, for pages and the API alike."""

from __future__ import annotations

import pytest
from django.db import OperationalError


def refuse(*args, **kwargs):
    raise OperationalError("connection to server failed: the database system is shutting down")


@pytest.fixture
def broken_database(monkeypatch):
    # Patched where the views look the selector up (each module imported the name).
    from apps.runs import views
    from apps.runs.api import views as api_views

    monkeypatch.setattr(views, "run_list_for_user", refuse)
    monkeypatch.setattr(api_views, "run_list_for_user", refuse)


def test_api_answers_503_json(client, analyst, broken_database):
    client.force_login(analyst)
    response = client.get("/api/runs/")
    assert response.status_code == 503 and response["Retry-After"] == "5"
    assert "nothing was changed" in response.json()["detail"]


def test_page_answers_503_text(client, analyst, broken_database):
    client.force_login(analyst)
    response = client.get("/runs/")
    assert response.status_code == 503 and "not reachable right now" in response.content.decode()
