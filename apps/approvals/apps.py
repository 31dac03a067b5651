from __future__ import annotations

from django.apps import AppConfig


class ApprovalsConfig(AppConfig):
    """Approval queues and the requests that park runs until people decide."""

    name = "apps.approvals"
    label = "approvals"

    def ready(self) -> None:
        from apps.accounts import services as accounts
        from apps.approvals import readers, selectors, services
        from apps.approvals import retention as approval_retention
        from apps.approvals.demo import seed_review_demo
        from apps.runs import hooks, retention
        from apps.steps import base as step_base
        from apps.steps import readers as step_readers
        from apps.steps.library import human
        from apps.workflows import demo
        from apps.workflows import services as workflow_services
        from apps.workflows import views as builder

        hooks.on_wait["approval"] = services.approval_request_open
        hooks.on_approval_due.append(services.approval_request_expire)
        hooks.on_run_cancelled.append(services.approvals_cancel_for_run)
        hooks.run_visibility.append(selectors.runs_visible_through_queues)
        hooks.step_notes.append(selectors.approval_step_notes)
        retention.RUN_DEPENDENTS["approvals"] = retention.RunDependents(
            count=approval_retention.approvals_count_for_runs, remove=approval_retention.approvals_remove_for_runs
        )
        step_base.QUEUE_CHECKS.append(selectors.queue_key_problem)
        human.AUDIT_SAMPLE_RATES.append(services.audit_sample_rate_for)
        accounts.on_team_created.append(services.team_queue_create)
        demo.demo_extensions.append(seed_review_demo)
        builder.CHOICE_PROVIDERS["approval-queue"] = selectors.queue_choices_for
        workflow_services.PUBLISH_CHECKS.append(selectors.queue_use_problems)
        # The assistant's lookups (assistant.lookup) read a person's items and week through this app.
        step_readers.READERS["my_approvals"] = readers.my_approvals
        step_readers.READERS["weekly_summary"] = readers.weekly_summary
