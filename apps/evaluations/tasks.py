"""Periodic work of the evaluations app: scoring reports whose case runs have finished."""

from __future__ import annotations

from celery import shared_task

from apps.evaluations.services import evaluation_reports_score_due


@shared_task(name="evaluations.reports_score")
def reports_score() -> int:
    """Score every running report whose case runs have all finished (each is claimed, so overlapping or repeated
    deliveries score a report once); returns how many this call finished."""
    return evaluation_reports_score_due()
