"""The dashboard pages: the overview across processes, a page per process (its versions compared), per approval
queue and per model endpoint (its model card and usage), the index pages of queues and endpoints, every widget as
an htmx fragment and as a CSV download, and the weekly digest toggle.

Who sees what: a person without dashboards.view_dashboards is told no (403) on every page; within the dashboards,
a process, queue or endpoint she may not read is a 404, and the figures cover only what she may read (the
selectors see to it). Filters live in the URL (FilterForm); a bad value is a form error on the page (400), never
a 500.
"""

from __future__ import annotations

import csv
import re
from functools import wraps
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import NoReverseMatch, reverse
from django.views.decorators.http import require_POST

from apps.accounts.models import User
from apps.dashboards.digest import digest_covers, digest_subscription_get, digest_subscription_set
from apps.dashboards.forms import FilterForm
from apps.dashboards.page_data import endpoint_evaluations, endpoint_revisions, endpoint_workflows
from apps.dashboards.selectors import (
    can_change_kpi_inputs,
    can_view_dashboards,
    dashboard_endpoints_for_user,
    dashboard_queues_for_user,
)
from apps.dashboards.widgets import ENDPOINT, OVERVIEW, PROCESS, QUEUE, PageData, Widget, widget_get, widgets_for
from apps.workflows.models import Workflow

CSV_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _user(request: HttpRequest) -> User:
    assert isinstance(request.user, User)
    user = request.user
    if not can_view_dashboards(user):
        raise PermissionDenied("The dashboards are for managers, analysts, auditors and admins.")
    return user


def _workflow(user: User, slug: str) -> Workflow:
    from apps.dashboards.selectors import dashboard_workflows_for_user

    workflow = dashboard_workflows_for_user(user).filter(slug=slug).first()
    if workflow is None:
        raise Http404("No such process.")
    return workflow


def _queue(user: User, key: str) -> Any:
    queue = dashboard_queues_for_user(user).filter(key=key).first()
    if queue is None:
        raise Http404("No such queue.")
    return queue


def _endpoint(user: User, name: str) -> Any:
    endpoint = dashboard_endpoints_for_user(user).filter(name=name).first()
    if endpoint is None:
        raise Http404("No such model endpoint.")
    return endpoint


def _inputs_url(scope: str = OVERVIEW, obj: str = "") -> str | None:
    """The KPI inputs page for what the page shows (a process's or an endpoint's own inputs, else all of them);
    None if the inputs pages are not installed."""
    try:
        if scope == PROCESS and obj:
            return reverse("dashboards:inputs-workflow", args=[obj])
        if scope == ENDPOINT and obj:
            return reverse("dashboards:inputs-endpoint", args=[obj])
        return reverse("dashboards:inputs")
    except NoReverseMatch:
        return None


def _widget_url(scope: str, slug: str, *, obj: str = "", csv_file: bool = False) -> str:
    name = {OVERVIEW: "widget", PROCESS: "process-widget", QUEUE: "queue-widget", ENDPOINT: "endpoint-widget"}[scope]
    args = [obj, slug] if obj else [slug]
    return reverse(f"dashboards:{name}{'-csv' if csv_file else ''}", args=args)


def _boxes(page: PageData, scope: str, query: str, obj: str = "") -> list[dict[str, Any]]:
    """Each widget of the page with its context, its fragment URL and its CSV link. When the period holds no
    data, only the widgets about "now" stay (the page says the period is empty instead of drawing empty charts)."""
    has_data = page.has_data(scope)
    boxes = []
    for widget in widgets_for(scope):
        if not has_data and not widget.always:
            continue
        boxes.append(_box(widget, page, scope, query, obj))
    return boxes


def _box(widget: Widget, page: PageData, scope: str, query: str, obj: str) -> dict[str, Any]:
    suffix = f"?{query}" if query else ""
    return {
        "widget": widget,
        "data": widget.data(page),
        "url": _widget_url(scope, widget.slug, obj=obj) + suffix,
        "csv_url": _widget_url(scope, widget.slug, obj=obj, csv_file=True) + suffix,
        "inputs_url": _inputs_url(scope, obj) if can_change_kpi_inputs(page.user) else None,
    }


def _period_text(form: FilterForm) -> str:
    start, end = form.period_bounds()
    days = (end - start).days + 1
    return f"{start:%d %b %Y} to {end:%d %b %Y} ({days} day{'' if days == 1 else 's'})"


def _page(
    request: HttpRequest,
    *,
    scope: str,
    template: str,
    workflow: Workflow | None = None,
    queue: Any = None,
    endpoint: Any = None,
    obj: str = "",
    extra: dict[str, Any] | None = None,
) -> HttpResponse:
    user = _user(request)
    # Always bound: no period means the last 30 days (see FilterForm), so a bare URL is a valid filter.
    form = FilterForm(request.GET, user=user, workflow=workflow, with_version=scope not in (QUEUE, ENDPOINT))
    context: dict[str, Any] = {
        "form": form,
        "scope": scope,
        "workflow": workflow,
        "queue": queue,
        "endpoint": endpoint,
        "can_change_inputs": can_change_kpi_inputs(user),
        "inputs_url": _inputs_url(),
        **(extra or {}),
    }
    if not form.is_valid():
        return render(request, template, {**context, "boxes": [], "invalid": True}, status=400)
    flt = form.dashboard_filter()
    if workflow is None and flt.workflow_id is not None and scope == OVERVIEW:
        context["workflow"] = form.chosen_workflow()
    page = PageData(user, flt, queue=queue, endpoint=endpoint)
    query = form.query()
    context.update(
        {
            "filter": flt,
            "query": query,
            "period_text": _period_text(form),
            "has_data": page.has_data(scope),
            "boxes": _boxes(page, scope, query, obj),
        }
    )
    if scope == OVERVIEW:
        context["digest"] = digest_subscription_get(user)
        context["digest_covers"] = digest_covers(context["digest"]) if context["digest"] else ""
    return render(request, template, context)


@login_required
def overview(request: HttpRequest) -> HttpResponse:
    """Every process she may read (or one, with the process filter): KPI tiles, charts, the process table."""
    return _page(request, scope=OVERVIEW, template="dashboards/overview.html")


@login_required
def process(request: HttpRequest, slug: str) -> HttpResponse:
    """One process: its KPIs and charts, and its published versions compared."""
    user = _user(request)
    workflow = _workflow(user, slug)
    return _page(request, scope=PROCESS, template="dashboards/process.html", workflow=workflow, obj=slug)


@login_required
def queue_list(request: HttpRequest) -> HttpResponse:
    """The approval queues whose figures she may read."""
    user = _user(request)
    return render(request, "dashboards/queue_list.html", {"queues": list(dashboard_queues_for_user(user))})


@login_required
def queue(request: HttpRequest, key: str) -> HttpResponse:
    """One approval queue: items over time, reviewers' load, time per item, breaches."""
    user = _user(request)
    found = _queue(user, key)
    return _page(request, scope=QUEUE, template="dashboards/queue.html", queue=found, obj=key)


@login_required
def endpoint_list(request: HttpRequest) -> HttpResponse:
    """The model endpoints whose model card and usage she may read."""
    user = _user(request)
    return render(request, "dashboards/endpoint_list.html", {"endpoints": list(dashboard_endpoints_for_user(user))})


@login_required
def endpoint(request: HttpRequest, name: str) -> HttpResponse:
    """One model endpoint: its model card (what it serves, its revision history, the workflows that use it, its
    evaluation results) and its usage (calls, tokens, latency, errors, cost)."""
    user = _user(request)
    found = _endpoint(user, name)
    extra = {
        "revisions": endpoint_revisions(found),
        "uses": endpoint_workflows(user, found),
        "evaluations": endpoint_evaluations(user, found),
    }
    return _page(request, scope=ENDPOINT, template="dashboards/endpoint.html", endpoint=found, obj=name, extra=extra)


def _widget_response(
    request: HttpRequest,
    *,
    scope: str,
    slug: str,
    csv_file: bool,
    workflow: Workflow | None = None,
    queue: Any = None,
    endpoint: Any = None,
    obj: str = "",
) -> HttpResponse:
    user = _user(request)
    widget = widget_get(scope, slug)
    if widget is None:
        raise Http404("No such widget.")
    form = FilterForm(request.GET, user=user, workflow=workflow, with_version=scope not in (QUEUE, ENDPOINT))
    if not form.is_valid():
        errors = "; ".join(
            f"{form.fields[name].label if name in form.fields else name}: {' '.join(str(item) for item in text)}"
            for name, text in form.errors.items()
        )
        return HttpResponse(f"The filter is not valid: {errors}", status=400, content_type="text/plain; charset=utf-8")
    page = PageData(user, form.dashboard_filter(), queue=queue, endpoint=endpoint)
    if csv_file:
        return _csv(widget, page, obj or scope)
    return render(request, "dashboards/_widget_body.html", {"box": _box(widget, page, scope, form.query(), obj)})


def fragment_login_required(view: Any) -> Any:
    """login_required for a widget's htmx refresh: a session that ended answers 204 (htmx swaps nothing), since
    the browser would follow the redirect and swap the sign-in page into the widget. A plain GET is redirected."""
    guarded = login_required(view)

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_authenticated and request.headers.get("HX-Request") == "true":
            return HttpResponse(status=204)
        return guarded(request, *args, **kwargs)

    return wrapper


def _cell(value: Any) -> Any:
    """A CSV cell that a spreadsheet will not run: text starting like a formula gets a leading quote. Numbers
    stay numbers (a negative ROI is a number, not a formula)."""
    if isinstance(value, str) and value.startswith(CSV_FORMULA_STARTS):
        return "'" + value
    return value


def _csv(widget: Widget, page: PageData, name: str) -> HttpResponse:
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    stamp = f"{page.filter.start:%Y%m%d}-{page.filter.end:%Y%m%d}"
    # A queue key may hold any character (team:claims); the file name keeps only the safe ones.
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "dashboard"
    response["Content-Disposition"] = f'attachment; filename="{safe}-{widget.slug}-{stamp}.csv"'
    writer = csv.writer(response)
    for row in widget.rows(page):
        writer.writerow([_cell(value) for value in row])
    return response


@fragment_login_required
def overview_widget(request: HttpRequest, slug: str) -> HttpResponse:
    return _widget_response(request, scope=OVERVIEW, slug=slug, csv_file=False)


@login_required
def overview_widget_csv(request: HttpRequest, slug: str) -> HttpResponse:
    return _widget_response(request, scope=OVERVIEW, slug=slug, csv_file=True, obj="overview")


@fragment_login_required
def process_widget(request: HttpRequest, slug: str, widget: str) -> HttpResponse:
    user = _user(request)
    workflow = _workflow(user, slug)
    return _widget_response(request, scope=PROCESS, slug=widget, csv_file=False, workflow=workflow, obj=slug)


@login_required
def process_widget_csv(request: HttpRequest, slug: str, widget: str) -> HttpResponse:
    user = _user(request)
    workflow = _workflow(user, slug)
    return _widget_response(request, scope=PROCESS, slug=widget, csv_file=True, workflow=workflow, obj=slug)


@fragment_login_required
def queue_widget(request: HttpRequest, key: str, widget: str) -> HttpResponse:
    found = _queue(_user(request), key)
    return _widget_response(request, scope=QUEUE, slug=widget, csv_file=False, queue=found, obj=key)


@login_required
def queue_widget_csv(request: HttpRequest, key: str, widget: str) -> HttpResponse:
    found = _queue(_user(request), key)
    return _widget_response(request, scope=QUEUE, slug=widget, csv_file=True, queue=found, obj=key)


@fragment_login_required
def endpoint_widget(request: HttpRequest, name: str, widget: str) -> HttpResponse:
    found = _endpoint(_user(request), name)
    return _widget_response(request, scope=ENDPOINT, slug=widget, csv_file=False, endpoint=found, obj=name)


@login_required
def endpoint_widget_csv(request: HttpRequest, name: str, widget: str) -> HttpResponse:
    found = _endpoint(_user(request), name)
    return _widget_response(request, scope=ENDPOINT, slug=widget, csv_file=True, endpoint=found, obj=name)


@login_required
@require_POST
def digest_toggle(request: HttpRequest) -> HttpResponse:
    """Turn her weekly KPI digest on or off (POST, audited); it covers the team and process of the filter she was
    looking at when she turned it on."""
    user = _user(request)
    weekly = request.POST.get("weekly") == "on"
    form = FilterForm(request.POST, user=user)
    covered: dict[str, Any] = {}
    if form.is_valid():
        flt = form.dashboard_filter()
        covered = {key: value for key, value in (("team", flt.team_id), ("workflow", flt.workflow_id)) if value}
    elif weekly:
        messages.error(request, "The digest was not turned on: the filter is not valid.")
        return redirect("dashboards:overview")
    digest_subscription_set(actor=user, weekly=weekly, covered=covered)
    if weekly:
        messages.success(request, "You will get the KPI digest by email once a week, the first one this week.")
    else:
        messages.success(request, "The weekly digest is off.")
    query = form.query() if form.is_valid() else ""
    return redirect(reverse("dashboards:overview") + (f"?{query}" if query else ""))
