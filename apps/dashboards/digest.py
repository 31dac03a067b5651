"""The weekly KPI digest for managers who opt in: the toggle (a service, audited) and the mail itself (the week's
KPI figures and the process table, as HTML tables and plain text: mail clients drop SVG and scripts).

Each person gets at most one digest per calendar week (Monday to Sunday, server time). The sender claims a
subscription with a conditional update on `last_sent_at` in the transaction that sends, so two beats never mail
twice and a failed send is retried by the next beat.
"""

from __future__ import annotations

import logging
from datetime import date, datetime, time, timedelta
from typing import Any

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db import transaction
from django.db.models import Q
from django.http import Http404
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from apps.accounts.models import User
from apps.audit.services import audit_record
from apps.dashboards.charts import format_value
from apps.dashboards.models import DigestSubscription
from apps.dashboards.selectors import (
    DashboardFilter,
    can_view_dashboards,
    dashboard_workflows_for_user,
    kpi_settings_get,
    overview_for_user,
)

logger = logging.getLogger(__name__)

# The figures a digest shows, in this order: what a manager reads on a Monday morning.
DIGEST_KPIS = [
    "cases",
    "throughput",
    "straight_through_rate",
    "escalation_rate",
    "override_rate",
    "cycle_time_p50",
    "cycle_time_p95",
    "sla_breach_rate",
    "failure_rate",
    "cost_per_case",
    "hours_saved",
    "value",
    "roi",
]
DIGEST_COLUMNS = [
    ("cases", "Cases"),
    ("straight_through_rate", "Straight-through"),
    ("cycle_time_p95", "Cycle time p95"),
    ("cost_per_case", "Cost per case"),
    ("hours_saved", "Hours saved"),
]


def digest_subscription_get(user: User) -> DigestSubscription | None:
    """Her digest subscription, if she ever turned it on."""
    return DigestSubscription.objects.filter(user=user).first()


def digest_covers(subscription: DigestSubscription | None) -> str:
    """What a subscription covers, in words: "all processes you may read", a process's name or a team's."""
    from apps.accounts.models import Team
    from apps.workflows.models import Workflow

    wanted = (subscription.filter if subscription else None) or {}
    if wanted.get("workflow"):
        # Only a process she may still read is named (she may have lost access since she subscribed).
        owner = subscription.user if subscription else None
        visible = dashboard_workflows_for_user(owner) if owner is not None else Workflow.objects.none()
        workflow = visible.filter(pk=wanted["workflow"]).first()
        if workflow is not None:
            return workflow.name
    if wanted.get("team"):
        team = Team.objects.filter(pk=wanted["team"]).first()
        if team is not None:
            return f"the {team.name} team's processes"
    return "all processes you may read"


@transaction.atomic
def digest_subscription_set(*, actor: User, weekly: bool, covered: dict[str, int] | None = None) -> DigestSubscription:
    """Turn `actor`'s weekly digest on (covering the team and workflow ids in `covered`, all she may read when
    empty) or off. Audited with what it was before. Turning it on again keeps `last_sent_at`, so switching off
    and on within a week does not send a second digest that week."""
    subscription = DigestSubscription.objects.select_for_update().filter(user=actor).first()
    before = {"weekly": subscription.weekly, "filter": subscription.filter} if subscription else None
    if subscription is None:
        subscription = DigestSubscription(user=actor)
    subscription.weekly = weekly
    if weekly:
        subscription.filter = dict(covered or {})
    subscription.save()
    audit_record(
        actor=actor,
        verb="kpi_digest.subscribed" if weekly else "kpi_digest.unsubscribed",
        target=subscription,
        data={"before": before, "after": {"weekly": subscription.weekly, "filter": subscription.filter}},
    )
    return subscription


def week_start(now: datetime) -> datetime:
    """Monday 00:00 of `now`'s week, in the server's zone."""
    today = timezone.localtime(now).date()
    monday = today - timedelta(days=today.weekday())
    return timezone.make_aware(datetime.combine(monday, time.min))


def digest_period(now: datetime) -> tuple[date, date]:
    """The seven full days before today."""
    today = timezone.localtime(now).date()
    return today - timedelta(days=7), today - timedelta(days=1)


def _public_url(path: str) -> str:
    return settings.AIOS_PUBLIC_URLS[0].rstrip("/") + path


def digest_context(user: User, subscription: DigestSubscription, now: datetime) -> dict[str, Any]:
    """What one digest shows: the week's KPI figures and a row per process, for what `user` may read. A filter
    naming a workflow she may no longer read falls back to everything she may read."""
    start, end = digest_period(now)
    wanted = subscription.filter or {}
    flt = DashboardFilter(start=start, end=end, team_id=wanted.get("team"), workflow_id=wanted.get("workflow"))
    try:
        overview = overview_for_user(user, flt)
    except Http404:
        flt = DashboardFilter(start=start, end=end)
        overview = overview_for_user(user, flt)
    currency = kpi_settings_get().currency
    kpis = {kpi.key: kpi for kpi in overview.kpis}
    figures = [
        {
            "label": kpis[key].label,
            "text": "no data"
            if kpis[key].value is None
            else format_value(kpis[key].value, kpis[key].unit, currency=currency),
        }
        for key in DIGEST_KPIS
        if key in kpis
    ]
    processes = [
        {
            "name": row.name,
            "url": _public_url(reverse("dashboards:process", args=[row.slug])),
            "cells": [
                format_value(row.kpis[key].value, row.kpis[key].unit, currency=currency) if key in row.kpis else "–"
                for key, _ in DIGEST_COLUMNS
            ],
        }
        for row in overview.processes
    ]
    query = f"period=custom&start={start.isoformat()}&end={end.isoformat()}"
    return {
        "user": user,
        "start": start,
        "end": end,
        "has_data": overview.has_data,
        "figures": figures,
        "columns": [heading for _, heading in DIGEST_COLUMNS],
        "processes": processes,
        "dashboard_url": _public_url(reverse("dashboards:overview") + "?" + query),
        "settings_url": _public_url(reverse("dashboards:overview")),
    }


@transaction.atomic
def _digest_send_one(subscription_id: int, *, now: datetime, monday: datetime) -> int:
    """Claim one subscription for this week and mail its digest, in one transaction; 1 if a mail went out."""
    # The claim: only one sender's update matches (the other waits for the row, then sees it sent).
    claimed = (
        DigestSubscription.objects.filter(pk=subscription_id, weekly=True)
        .filter(Q(last_sent_at__isnull=True) | Q(last_sent_at__lt=monday))
        .update(last_sent_at=now)
    )
    if not claimed:
        return 0
    subscription = DigestSubscription.objects.select_related("user").get(pk=subscription_id)
    user = subscription.user
    # Someone who lost the right to read dashboards, or has no address, is marked and skipped.
    if not user.is_active or not user.email or not can_view_dashboards(user):
        return 0
    context = digest_context(user, subscription, now)
    message = EmailMultiAlternatives(
        subject=f"AIOS: your week in figures, {context['start']:%d %b} to {context['end']:%d %b}",
        body=render_to_string("dashboards/email/digest.txt", context),
        to=[user.email],
    )
    message.attach_alternative(render_to_string("dashboards/email/digest.html", context), "text/html")
    message.send(fail_silently=False)
    return 1


def digests_send(*, now: datetime | None = None) -> int:
    """Mail every subscribed person who has not had this week's digest; returns how many mails went out."""
    now = now or timezone.now()
    monday = week_start(now)
    due = DigestSubscription.objects.filter(weekly=True).filter(
        Q(last_sent_at__isnull=True) | Q(last_sent_at__lt=monday)
    )
    sent = 0
    for subscription_id in list(due.values_list("pk", flat=True)):
        try:
            sent += _digest_send_one(subscription_id, now=now, monday=monday)
        except Exception:
            # One person's digest that cannot be made or sent (a mail server refusing her address) must not stop
            # everyone else's: its claim rolled back with it, so the next beat tries her again.
            logger.exception(
                "The KPI digest of subscription %s was not sent; the next beat retries it.", subscription_id
            )
    return sent
