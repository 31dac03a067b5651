"""`{% review_document item as document %}`: the decision view's source document for the person viewing it.

A tag rather than a context variable so the document view stays within the decision view's source section:
the page's view function does not change, and an item without a document costs one regex match.
"""

from __future__ import annotations

from typing import Any

from django import template

from apps.approvals.documents import ReviewDocument, review_document_for_user
from apps.approvals.models import ApprovalRequest

register = template.Library()


@register.simple_tag(takes_context=True)
def review_document(context: template.Context, item: ApprovalRequest) -> ReviewDocument | None:
    """The item's source document with its evidence marks, or None (the text view is shown instead)."""
    request: Any = context.get("request")
    if request is None:
        return None
    return review_document_for_user(request.user, item)
