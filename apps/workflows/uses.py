"""What a graph names outside itself (connections, knowledge collections), and whether a person may use it.

Step types say what their configs name (`StepType.uses`); the connectors and knowledge apps say who may use
what. Publishing asks here for the publisher; the steps ask their own app again at run time for the run's
workflow, since a right can be withdrawn after publishing.
"""

from __future__ import annotations

from typing import Any

from apps.accounts.models import User
from apps.connectors.selectors import connection_use_problem, connection_workflow_problem
from apps.knowledge.selectors import collection_use_problem, collections_for_workflow
from apps.steps.base import Uses
from apps.steps.registry import step_config_parse, step_type_find
from apps.workflows.models import Workflow


def graph_uses(graph: dict[str, Any]) -> list[tuple[str, Uses]]:
    """(step key, what it names) for every valid step config in `graph` that names something."""
    found: list[tuple[str, Uses]] = []
    for step in graph.get("steps", []) if isinstance(graph.get("steps"), list) else []:
        if not isinstance(step, dict) or not isinstance(step.get("config"), dict):
            continue  # reported by graph_errors
        step_type = step_type_find(str(step.get("type")))
        if step_type is None:
            continue
        try:
            config = step_config_parse(step_type.slug, step["config"])
        except ValueError:
            continue  # an invalid config is reported by graph_errors
        found += [(str(step.get("key")), use) for use in step_type.uses(config)]
    return found


def uses_problems(
    user: User, graph: dict[str, Any], *, workflow: Workflow | None = None, only: str | None = None
) -> list[str]:
    """Every connection or collection in `graph` that `user` may not use, or (with `workflow`) that runs of
    `workflow` may not use (the run-time rule: its team's rights), or that does not exist; each naming its step.
    Both are asked: a person in two teams must not publish one team's workflow onto the other team's systems,
    where it would pass here and fail at every run. `only` limits it to one step (a step test)."""
    problems = []
    for key, use in graph_uses(graph):
        if only is not None and key != only:
            continue
        if use.what == "connection":
            problem = connection_use_problem(user, use.name, kind=use.kind)
            if problem is None and workflow is not None:
                problem = connection_workflow_problem(use.name, kind=use.kind, workflow_id=workflow.pk)
        elif use.what == "collection":
            problem = collection_use_problem(user, use.name)
            if problem is None and workflow is not None:
                _, refused = collections_for_workflow([use.name], workflow.pk)
                problem = refused[0] if refused else None
        else:
            problem = f'names an unknown kind of thing "{use.what}"'
        if problem:
            problems.append(f'step "{key}": {problem}')
    return problems
