from __future__ import annotations

from django.apps import AppConfig


class DashboardsConfig(AppConfig):
    """What AIOS delivers and costs, for managers: KPI rollups kept by periodic tasks, and the pages that read them."""

    name = "apps.dashboards"
    label = "dashboards"

    def ready(self) -> None:
        from apps.dashboards.demo import seed_dashboard_demo
        from apps.dashboards.rollups import rollups_freeze_for_purge
        from apps.runs import retention
        from apps.workflows import demo

        # Rollups outlive the runs they count: the purge freezes the days it cuts before removing anything.
        retention.RUN_DEPENDENTS["dashboards"] = retention.RunDependents(
            count=lambda run_ids: {}, remove=rollups_freeze_for_purge
        )

        # After the other apps' parts (dashboards is installed last), so the demo's workflows and queues exist.
        demo.demo_extensions.append(seed_dashboard_demo)
