"""Publishing refuses a credential written into a step's headers (apps.workflows.validation): it belongs in a
connection, where it is encrypted, shown to no one and rotated in one place."""

from __future__ import annotations

from typing import Any

import pytest

from apps.core.exceptions import ApplicationError
from apps.workflows.models import WorkflowVersion
from apps.workflows.selectors import workflow_version_problems
from apps.workflows.services import workflow_create, workflow_version_create, workflow_version_publish
from apps.workflows.validation import inline_credential_problems


def graph(headers: dict[str, str]) -> dict[str, Any]:
    login = {"key": "login", "type": "data.transform", "config": {"fields": {"token": '"t"', "cookie": '"c"'}}}
    call = {
        "key": "call",
        "type": "http.request",
        "config": {"url": "https://erp.example.com/invoices", "method": "GET", "headers": headers},
    }
    return {"steps": [login, call]}


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.c2VjcmV0.abc"},
        {"authorization": "Basic c3ZjOnB3"},
        {"AUTHORIZATION": "sk-live-1234567890"},
        {"Proxy-Authorization": "Basic cHJveHk6cHc="},
        {"Cookie": "session=abc123"},
        {"Cookie": "theme={{ input.theme }}; session=abc123"},
        {"Authorization": "Bearer {{ steps.login.token }}abc123"},
    ],
)
def test_a_literal_credential_header_is_a_problem_naming_the_step(headers: dict[str, str]) -> None:
    [problem] = inline_credential_problems(graph(headers))
    name = next(iter(headers))
    assert problem.startswith(f'step "call": headers.{name}: a credential written in the step')
    assert "put credentials in a connection" in problem


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer {{ steps.login.token }}"},
        {"Authorization": "{{ steps.login.token }}"},
        {"Cookie": "session={{ steps.login.cookie }}; theme={{ input.theme }}"},
        {"Accept": "application/json", "X-Tenant": "acme"},
    ],
)
def test_credentials_from_earlier_steps_and_other_headers_are_fine(headers: dict[str, str]) -> None:
    assert inline_credential_problems(graph(headers)) == []


@pytest.mark.django_db
def test_publishing_is_refused_and_the_builder_shows_why(analyst: Any) -> None:
    workflow = workflow_create(actor=analyst, name="Invoices")
    version = workflow_version_create(
        actor=analyst,
        workflow=workflow,
        graph=graph({"Authorization": "Bearer sk-live-1234567890"}),
        input_schema={"type": "object"},
    )
    with pytest.raises(ApplicationError) as refused:
        workflow_version_publish(actor=analyst, version=version)
    assert any(problem.startswith('step "call": headers.Authorization') for problem in refused.value.extra["problems"])
    version.refresh_from_db()
    assert version.state == WorkflowVersion.State.DRAFT
    assert any("put credentials in a connection" in str(problem) for problem in workflow_version_problems(version))
