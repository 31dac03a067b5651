from __future__ import annotations

from django.apps import AppConfig


class EvaluationsConfig(AppConfig):
    """Evaluation suites of workflows: cases with expected outputs, runs of a draft against them, and the gate
    that refuses to publish a version whose suite fails."""

    name = "apps.evaluations"
    label = "evaluations"
