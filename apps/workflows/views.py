"""Workflow pages."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from apps.steps.registry import step_types
from apps.workflows.selectors import (
    workflow_can_run,
    workflow_get_for_user,
    workflow_list_for_user,
    workflow_version_published_latest,
)


@login_required
def workflow_list(request: HttpRequest) -> HttpResponse:
    """The workflows the user may see."""
    return render(request, "workflows/workflow_list.html", {"workflows": workflow_list_for_user(request.user)})


@login_required
def workflow_detail(request: HttpRequest, slug: str) -> HttpResponse:
    """A workflow, its published version's steps, and (loaded by htmx) its recent runs."""
    workflow = workflow_get_for_user(request.user, slug=slug)
    version = workflow_version_published_latest(workflow)
    types = step_types()
    steps = [
        {**step, "type_name": types[step["type"]].name if step["type"] in types else step["type"]}
        for step in (version.steps if version else [])
    ]
    return render(
        request,
        "workflows/workflow_detail.html",
        {
            "workflow": workflow,
            "version": version,
            "steps": steps,
            "can_run": workflow_can_run(request.user, workflow) and version is not None,
        },
    )
