"""`manage.py seed_demo` gives `make run` every process of the design: the gallery's templates published for their
teams with the connections, the knowledge base and the Monday schedule they need, and again without harm."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.management import call_command

from apps.connectors.models import Connection
from apps.knowledge.models import Collection
from apps.workflows.models import Trigger, Workflow, WorkflowVersion
from tests.support import erp as erp_support
from tests.support.erp import ErpDatabase

pytestmark = pytest.mark.django_db
erp_postgresql = erp_support.erp_postgresql  # the ERP database fixture

SEEDED = {
    "claims-from-pdf": "claims",
    "invoice-review": "finance",
    "marketing-copy": "marketing",
    "product-description": "marketing",
    "support-ticket-triage": "support",
    "weekly-approvals-assistant": "claims",
}


def _demo_settings(settings: Any, tmp_path: Any, erp: ErpDatabase) -> None:
    config, password = erp.config, erp.secrets["password"]
    settings.AIOS_DATA_DIR = tmp_path
    settings.AIOS_DEMO_OUTSIDE_URL = "http://127.0.0.1:8030"
    settings.AIOS_DEMO_ERP_URL = (
        f"postgres://{config['username']}:{password}@{config['host']}:{config['port']}/{config['database']}"
    )


def test_the_demo_seeds_every_process_once(settings, tmp_path, erp_postgresql, capsys):
    _demo_settings(settings, tmp_path, erp_postgresql)
    call_command("seed_demo")
    for slug, team in SEEDED.items():
        workflow = Workflow.objects.get(slug=slug)
        assert workflow.team is not None and workflow.team.slug == team, slug
        assert workflow.versions.filter(state=WorkflowVersion.State.PUBLISHED).count() == 1, slug
    connections = {connection.name: connection for connection in Connection.objects.all()}
    assert set(connections) == {"erp-api", "cms-api", "erp-db", "support-mail", "team-mail", "aios-api"}
    assert connections["erp-db"].config["database"] == erp_postgresql.config["database"]
    assert connections["erp-db"].secrets == {"password": erp_postgresql.secrets["password"]}
    assert connections["aios-api"].config["base_url"] == f"{settings.AIOS_PUBLIC_URLS[0]}/api/"
    collection = Collection.objects.get(name="support-kb")
    assert collection.team.slug == "support" and collection.documents.count() == 19
    [schedule] = Trigger.objects.filter(workflow__slug="weekly-approvals-assistant")
    assert (schedule.kind, schedule.config["cron"], schedule.enabled) == ("schedule", "0 8 * * 1", True)

    # Safe to run again: nothing new, nothing changed.
    counts = (Workflow.objects.count(), Connection.objects.count(), Trigger.objects.count())
    call_command("seed_demo")
    assert (Workflow.objects.count(), Connection.objects.count(), Trigger.objects.count()) == counts
    assert "Demo sign-ins" in capsys.readouterr().out


def test_without_the_stack_s_outside_systems_the_demo_seeds_only_what_it_can(settings, tmp_path):
    settings.AIOS_DATA_DIR = tmp_path
    settings.AIOS_DEMO_OUTSIDE_URL = ""
    settings.AIOS_DEMO_ERP_URL = ""
    call_command("seed_demo")
    # No ERP or CMS: the invoice and marketing workflows are not seeded; the rest are, on the mail server and
    # the product's own API.
    assert not Connection.objects.filter(name__in=["erp-api", "cms-api", "erp-db"]).exists()
    assert not Workflow.objects.filter(slug__in=["invoice-review", "marketing-copy"]).exists()
    for slug in ("claims-from-pdf", "support-ticket-triage", "weekly-approvals-assistant"):
        assert Workflow.objects.get(slug=slug).versions.filter(state=WorkflowVersion.State.PUBLISHED).exists()
