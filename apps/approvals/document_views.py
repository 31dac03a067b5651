"""The decision view's page images: a page of the PDF an item's source text was read from."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.http import require_GET

from apps.approvals.documents import review_document_page_png
from apps.approvals.selectors import approval_get_for_user


@login_required
@require_GET
def item_page(request: HttpRequest, request_id: int, page: int) -> HttpResponse:
    """Page `page` (from 1) of the item's source document as a PNG, for whoever may see the item; 404 otherwise."""
    item = approval_get_for_user(request.user, request_id=request_id)
    png = review_document_page_png(request.user, item, page)
    if png is None:
        raise Http404("This item has no such page.")
    response = HttpResponse(png, content_type="image/png")
    # Documents never change, but who may see them can: private, and checked again within the hour.
    response["Cache-Control"] = "private, max-age=3600"
    return response
