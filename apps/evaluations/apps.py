from __future__ import annotations

from django.apps import AppConfig


class EvaluationsConfig(AppConfig):
    """Evaluation suites of workflows: cases with expected outputs, runs of a draft against them, and the gate
    that refuses to publish a version whose suite fails."""

    name = "apps.evaluations"
    label = "evaluations"

    def ready(self) -> None:
        from apps.evaluations.services import (
            evaluation_publish_gate,
            evaluation_publish_gate_preview,
            evaluation_publish_route,
        )
        from apps.workflows import services as workflow_services

        # Filled once per process (ready() may run twice under some test runners).
        if evaluation_publish_gate not in workflow_services.PUBLISH_GATES:
            workflow_services.PUBLISH_GATES.append(evaluation_publish_gate)
        if evaluation_publish_route not in workflow_services.PUBLISH_ROUTES:
            workflow_services.PUBLISH_ROUTES.append(evaluation_publish_route)
        if evaluation_publish_gate_preview not in workflow_services.PUBLISH_GATE_PREVIEWS:
            workflow_services.PUBLISH_GATE_PREVIEWS.append(evaluation_publish_gate_preview)
        from apps.evaluations.services import evaluation_reports_score_due
        from apps.runs import hooks as run_hooks

        run_hooks.after_sweep["evaluation_reports_finished"] = evaluation_reports_score_due

        from apps.evaluations import retention as evaluation_retention
        from apps.runs import retention

        retention.RUN_DEPENDENTS["evaluations"] = retention.RunDependents(
            count=evaluation_retention.evaluation_results_count_for_runs,
            remove=evaluation_retention.evaluation_results_unlink_for_runs,
            keep=evaluation_retention.evaluation_runs_to_keep,
        )
        from apps.evaluations.demo import seed_evaluation_demo
        from apps.workflows import demo

        if seed_evaluation_demo not in demo.demo_extensions:
            demo.demo_extensions.append(seed_evaluation_demo)
