from __future__ import annotations

from django.apps import AppConfig


class DashboardsConfig(AppConfig):
    """What AIOS delivers and costs, for managers: KPI rollups kept by periodic tasks, and the pages that read them."""

    name = "apps.dashboards"
    label = "dashboards"
