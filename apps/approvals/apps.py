from __future__ import annotations

from django.apps import AppConfig


class ApprovalsConfig(AppConfig):
    """Approval queues and the requests that park runs until people decide."""

    name = "apps.approvals"
    label = "approvals"

    def ready(self) -> None:
        from apps.accounts import services as accounts
        from apps.approvals import selectors, services
        from apps.runs import hooks
        from apps.steps.library import human

        hooks.on_wait["approval"] = services.approval_request_open
        hooks.on_approval_due.append(services.approval_request_expire)
        hooks.on_run_cancelled.append(services.approvals_cancel_for_run)
        hooks.run_visibility.append(selectors.runs_visible_through_queues)
        human.QUEUE_CHECKS.append(selectors.queue_key_problem)
        accounts.on_team_created.append(services.team_queue_create)
