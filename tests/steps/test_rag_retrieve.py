"""`rag.retrieve`: config checks, what it names, a real run whose passages are its output and its provenance
(shown on the run page as sources), and retrieval refused for a workflow that may not read the collection, at
publish and at run time."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse

from apps.core.exceptions import ApplicationError
from apps.runs.models import Run, StepRun
from apps.runs.services import run_start
from apps.steps.base import Uses
from apps.steps.registry import step_config_errors, step_config_parse, step_type_get
from apps.workflows.services import workflow_create, workflow_version_create, workflow_version_publish
from tests.knowledge.conftest import make_small_kb
from tests.support.engine import drive

pytestmark = pytest.mark.django_db

INPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"question": {"type": "string", "title": "Question"}},
    "required": ["question"],
}


@pytest.fixture
def small_kb(analyst: Any, team: Any) -> Any:
    return make_small_kb(analyst, team)


def graph(collections: list[str], **config: Any) -> dict[str, Any]:
    return {
        "steps": [
            {
                "key": "retrieve",
                "type": "rag.retrieve",
                "name": "Find help articles",
                "config": {"collections": collections, "query": "{{ input.question }}", **config},
            },
            {
                "key": "answer",
                "type": "data.transform",
                "name": "Best source",
                "config": {"fields": {"source": "steps.retrieve.passages[0].document"}},
            },
        ],
        "edges": [{"from": "retrieve", "to": "answer"}],
    }


def published(actor: Any, team: Any, graph_: dict[str, Any], name: str = "Support answers") -> Any:
    workflow = workflow_create(actor=actor, name=name, team=team)
    version = workflow_version_create(actor=actor, workflow=workflow, graph=graph_, input_schema=INPUT_SCHEMA)
    workflow_version_publish(actor=actor, version=version)
    return workflow


def test_config_errors():
    assert step_config_errors("rag.retrieve", {"collections": ["kb"], "query": "{{ input.q }}"}) == []
    assert any("collections" in e for e in step_config_errors("rag.retrieve", {"collections": [], "query": "x"}))
    assert any(
        "top_k" in e for e in step_config_errors("rag.retrieve", {"collections": ["kb"], "query": "x", "top_k": 0})
    )
    assert any(
        "mode" in e for e in step_config_errors("rag.retrieve", {"collections": ["kb"], "query": "x", "mode": "x"})
    )
    assert any(
        "does not parse" in e for e in step_config_errors("rag.retrieve", {"collections": ["kb"], "query": "{{ oops"})
    )
    assert any(
        "filters.product" in e
        for e in step_config_errors("rag.retrieve", {"collections": ["kb"], "query": "q", "filters": {"product": "{%"}})
    )


def test_uses_names_each_collection_once_and_a_single_name_is_a_list():
    config = step_config_parse("rag.retrieve", {"collections": ["kb", "faq", "kb"], "query": "q"})
    assert step_type_get("rag.retrieve").uses(config) == [
        Uses("collection", "kb", field="collections"),
        Uses("collection", "faq", field="collections"),
    ]
    assert step_config_parse("rag.retrieve", {"collections": "kb", "query": "q"}).collections == ["kb"]


def test_a_run_retrieves_passages_and_records_them_as_sources(small_kb, analyst, team, client):
    workflow = published(analyst, team, graph(["support-kb"], top_k=3))
    run, _ = run_start(actor=analyst, workflow=workflow, inputs={"question": "I forgot my password"})
    run = drive(run)
    assert run.status == Run.Status.SUCCEEDED, run.error
    step = StepRun.objects.get(run=run, step_key="retrieve")
    passages = step.output["passages"]
    assert step.output["query"] == "I forgot my password" and len(passages) == 3
    assert passages[0]["document"] == "password-reset.md" and passages[0]["collection"] == "support-kb"
    assert run.output["source"] == "password-reset.md"
    sources = step.usage["sources"]
    assert [s["chunk_id"] for s in sources] == [p["chunk_id"] for p in passages]
    assert step.usage["retrieval"]["mode"] == "hybrid" and sources[0]["text"] == passages[0]["text"]
    client.force_login(analyst)
    page = client.get(reverse("runs:detail", args=[run.pk])).content.decode()
    assert "Sources · 3 passages found by hybrid search" in page and "password-reset.md" in page


def test_publishing_is_refused_for_a_collection_the_publisher_may_not_use(small_kb, outsider):
    from django.contrib.auth.models import Group

    from apps.accounts.roles import ANALYST
    from apps.accounts.services import team_create

    outsider.groups.add(Group.objects.get(name=ANALYST))
    other = team_create(name="Marketing", members=[outsider])
    with pytest.raises(ApplicationError) as refusal:
        published(outsider, other, graph(["support-kb"]), name="Borrowed knowledge")
    assert 'step "retrieve": there is no knowledge collection "support-kb"' in refusal.value.extra["problems"]


def test_a_run_is_refused_when_its_workflow_lost_the_right(small_kb, analyst, team):
    from guardian.shortcuts import remove_perm

    workflow = published(analyst, team, graph(["support-kb"]))
    # Published while allowed; then the team loses the right to use the collection.
    remove_perm("knowledge.use_collection", team.group, small_kb)
    run, _ = run_start(actor=analyst, workflow=workflow, inputs={"question": "refund"})
    run = drive(run)
    assert run.status == Run.Status.FAILED
    step = StepRun.objects.get(run=run, step_key="retrieve")
    assert step.error == 'Step "retrieve": this workflow may not read the knowledge collection "support-kb".'


def test_a_deleted_collection_fails_the_step_clearly(small_kb, analyst, team):
    from apps.knowledge.services import collection_delete

    workflow = published(analyst, team, graph(["support-kb"]))
    collection_delete(actor=analyst, collection=small_kb)
    run = drive(run_start(actor=analyst, workflow=workflow, inputs={"question": "refund"})[0])
    assert run.status == Run.Status.FAILED
    assert "there is no knowledge collection" in StepRun.objects.get(run=run, step_key="retrieve").error
