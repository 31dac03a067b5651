"""The "Describe the process" section of the New workflow page (apps/workflows/drafting_views.py)."""

from __future__ import annotations

from typing import Any

from django import template

from apps.workflows.drafting_views import describe_context

register = template.Library()


@register.inclusion_tag("workflows/draft_form.html", takes_context=True)
def draft_describe_form(context: template.Context) -> dict[str, Any]:
    """The description form, filled with an earlier proposal's text when the page is opened to edit it
    (`?proposal=<id>`, the author's own only)."""
    request = context["request"]
    return {**describe_context(request), "csrf_token": context.get("csrf_token"), "request": request}
