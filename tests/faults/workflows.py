"""The workflows the fault tests run: built and published through apps/workflows/services.py, with
`http.request` steps that call the side-effect sink and `data.transform` steps around them."""

from __future__ import annotations

from typing import Any

from apps.accounts.models import Team, User
from apps.workflows.models import Workflow
from apps.workflows.services import workflow_create, workflow_version_create, workflow_version_publish

N_INPUT = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
# The sink reads ?delay= (hold the call open) and ?fail_first= (answer 503 to the first deliveries).
EFFECT_INPUT = {
    "type": "object",
    "properties": {
        "n": {"type": "integer"},
        "delay": {"type": "number"},
        "fail_first": {"type": "integer"},
    },
    "required": ["n"],
}


def effect_step(sink_url: str, key: str = "send", **options: Any) -> dict[str, Any]:
    """An `http.request` step that POSTs to the sink, one resource per run input `n`."""
    return {
        "key": key,
        "type": "http.request",
        "config": {
            "method": "POST",
            "url": sink_url
            + "/effect/{{ input.n }}?delay={{ input.delay or 0 }}&fail_first={{ input.fail_first or 0 }}",
            "body": '{"n": {{ input.n }}, "amount": {{ steps.prepare.amount }}, "step": "' + key + '"}',
            **options.pop("config", {}),
        },
        **options,
    }


def five_step_graph(sink_url: str) -> dict[str, Any]:
    """prepare → check → send (the external call) → confirm → finish."""
    return {
        "steps": [
            {"key": "prepare", "type": "data.transform", "config": {"fields": {"amount": "input.n * 10"}}},
            {"key": "check", "type": "data.transform", "config": {"fields": {"ok": "steps.prepare.amount >= 0"}}},
            effect_step(sink_url),
            {
                "key": "confirm",
                "type": "data.transform",
                "config": {"fields": {"effect_key": "steps.send.body.key", "status": "steps.send.status"}},
            },
            {
                "key": "finish",
                "type": "data.transform",
                "config": {
                    "fields": {"n": "input.n", "amount": "steps.prepare.amount", "sent": "steps.confirm.status"}
                },
            },
        ]
    }


def publish(
    actor: User,
    name: str,
    graph: dict[str, Any],
    *,
    team: Team | None = None,
    input_schema: dict[str, Any] | None = None,
) -> Workflow:
    """Create the workflow and publish its first version."""
    workflow = workflow_create(actor=actor, name=name, team=team)
    version = workflow_version_create(
        actor=actor, workflow=workflow, graph=graph, input_schema=input_schema or EFFECT_INPUT
    )
    workflow_version_publish(actor=actor, version=version)
    return workflow
