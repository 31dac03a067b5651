"""The weekly KPI digest's periodic task: a doorbell that calls apps.dashboards.digest.digests_send, which claims
each subscription by a conditional update, so a repeated or overlapping beat never mails anyone twice a week."""

from __future__ import annotations

from celery import shared_task

from apps.dashboards.digest import digests_send

DIGEST_TASK = "dashboards.kpi_digests_send"


@shared_task(name=DIGEST_TASK, acks_late=False, ignore_result=True)
def send_kpi_digests() -> int:
    """Mail this week's KPI digest to everyone subscribed who has not had it; returns how many went out."""
    return digests_send()
