"""Whether a version can be published: every problem, as the publish service and the builder both say it.

Reads only (the registry, and the published versions that sub-workflow steps name), so selectors and services
can both use it without importing each other.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from apps.steps.registry import step_type_get
from apps.workflows.agent_tools import agent_config_problems
from apps.workflows.graph import graph_errors
from apps.workflows.input_schema import input_schema_errors
from apps.workflows.models import Workflow, WorkflowVersion


def sub_workflows_pinned(graph: dict[str, Any], *, own_workflow: Workflow) -> tuple[dict[str, Any], list[str]]:
    """The graph with every sub-workflow reference pinned to a published version number, and the problems
    found (a missing workflow, one with nothing published, a workflow that runs itself)."""
    pinned = copy.deepcopy(graph)
    problems = []
    for step in pinned.get("steps", []) if isinstance(pinned.get("steps"), list) else []:
        if not isinstance(step, dict) or not isinstance(step.get("config"), dict):
            continue  # reported by graph_errors
        try:
            if not step_type_get(str(step.get("type"))).pins_workflow_version:
                continue
        except KeyError:
            continue  # reported by graph_errors
        config = step["config"]
        slug, number = config.get("workflow"), config.get("version")
        if slug == own_workflow.slug:
            problems.append(f'step "{step.get("key")}": a workflow cannot run itself')
            continue
        versions = WorkflowVersion.objects.filter(workflow__slug=slug, state=WorkflowVersion.State.PUBLISHED)
        if number is not None:
            versions = versions.filter(number=number)
        found = versions.order_by("-number").values_list("number", flat=True).first()
        if found is None:
            wanted = f"version {number} of " if number is not None else ""
            problems.append(f'step "{step.get("key")}": there is no published {wanted}workflow "{slug}"')
            continue
        config["version"] = found
    return pinned, problems


CREDENTIAL_HEADERS = {"authorization", "proxy-authorization", "cookie"}
_TEMPLATE_PART = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.DOTALL)


def _literal_credential(name: str, value: str) -> bool:
    """Whether a credential header's value carries a secret written in the step itself: what is left once its
    template parts (values from earlier steps, e.g. a token a login step fetched) are taken out, beside the
    scheme word of Authorization ("Bearer", "Basic") and the names of cookies ("session=")."""
    rest = _TEMPLATE_PART.sub(" ", value)
    if name == "cookie":
        rest = " ".join(pair.partition("=")[2] for pair in rest.split(";"))
    else:
        rest = re.sub(r"^\s*[A-Za-z][\w-]*\s+", " ", rest, count=1)
    return bool(rest.strip())


def inline_credential_problems(graph: dict[str, Any]) -> list[str]:
    """A step whose config sends Authorization, Proxy-Authorization or Cookie with a literal value: a secret in
    the graph is shown to everyone who may read the workflow, kept in every version, export and audit record, and
    never rotated with the system it opens. Only new publishes are refused; versions already published run on."""
    problems = []
    for step in graph.get("steps", []) if isinstance(graph.get("steps"), list) else []:
        config = step.get("config") if isinstance(step, dict) else None
        headers = config.get("headers") if isinstance(config, dict) else None
        if not isinstance(headers, dict):
            continue
        for name, value in headers.items():
            lowered = str(name).strip().lower()
            if lowered in CREDENTIAL_HEADERS and isinstance(value, str) and _literal_credential(lowered, value):
                problems.append(
                    f'step "{step.get("key")}": headers.{name}: a credential written in the step is visible to '
                    "everyone who can read the workflow and is copied into every version and export; put "
                    "credentials in a connection (Connections, then choose it in the step's Connection field)."
                )
    return problems


_LIBRARY_TOOL_PROBLEM = re.compile(r'^step "([^"]+)": tools\[(\d+)\] "')
_TOOL_PROBLEM = re.compile(r'^step "([^"]+)": tools\.(\d+)\.')


def version_problems(version: WorkflowVersion) -> list[str]:
    """Every reason `version` cannot be published, each naming its step (empty when it can)."""
    problems = input_schema_errors(version.input_schema) + graph_errors(version.graph)
    problems += inline_credential_problems(version.graph)
    _, pin_problems = sub_workflows_pinned(version.graph, own_workflow=version.workflow)
    problems += pin_problems
    # The agent steps' tools: agent_config_problems says what the step's own check_config says of a tool
    # ('tools[1] "lookup": ...') and more, each under the tool's field ("tools.1.approval_queue: ..."), so the
    # builder shows it on the tool. For a tool it finds fault with, the step's own words are left out rather than
    # said twice; of a tool it passes, they stay (a check only the step library makes is never lost).
    tool_problems = agent_config_problems(version.graph, own_slug=version.workflow.slug)
    faulted = {match.groups() for p in tool_problems if (match := _TOOL_PROBLEM.match(p))}
    problems = [p for p in problems if not ((match := _LIBRARY_TOOL_PROBLEM.match(p)) and match.groups() in faulted)]
    return problems + tool_problems
