"""The processes part of the demo: the gallery's templates as published workflows of their teams, with the
connections, knowledge collection and schedule they need, so a new user of `make run` can run every process
of the design at once. Registered in `apps.workflows.demo.demo_extensions` (it needs the runs app's triggers);
safe to run again: what exists is left as it is.

The connections point at what `make run` starts for them (deploy/devstack: the stand-in ERP and CMS, the demo ERP
database, the catch-all mail server) and at the product's own API. Without those settings (another way of
running the product) the connections and the workflows that need them are not seeded.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from django.conf import settings

from apps.accounts.models import Team, User
from apps.accounts.services import api_token_issue, team_create
from apps.connectors.models import Connection
from apps.connectors.services import connection_create
from apps.knowledge.demo import DEMO_COLLECTION, seed_knowledge_demo
from apps.runs.triggers import trigger_create
from apps.workflows.gallery import gallery_template_get, workflow_create_from_template
from apps.workflows.models import Workflow, WorkflowVersion
from apps.workflows.services import workflow_version_publish
from apps.workflows.uses import graph_uses

logger = logging.getLogger(__name__)

DEMO_TEAMS = {"finance": "Finance", "marketing": "Marketing", "support": "Support"}
# Template → the team whose workflow it becomes ("claims" is the demo's first team) and its name when not the
# template's (the demo's text-based "Claims triage" already exists).
DEMO_TEMPLATES = {
    "claims-triage": ("claims", "Claims from PDF"),
    "invoice-review": ("finance", ""),
    "marketing-copy": ("marketing", ""),
    "support-ticket-triage": ("support", ""),
    "weekly-approvals-assistant": ("claims", ""),
    "remote-work-assistant": ("claims", ""),
}
DIGEST_RECIPIENT = "rita@aios.localhost"


def seed_process_demo(analyst: User, team: Team) -> None:
    """Teams, connections, the support knowledge base, the templates' workflows and the Monday schedule."""
    reviewer = User.objects.filter(username="rita").first()
    admin = User.objects.filter(username="adam").first()
    members = [person for person in (analyst, reviewer) if person is not None]
    teams = {"claims": team}
    for slug, name in DEMO_TEAMS.items():
        teams[slug] = Team.objects.filter(slug=slug).first() or team_create(name=name, members=members, actor=None)
    for name, label, kind, owner, config, secrets in _connections(reviewer):
        if not Connection.objects.filter(name=name).exists():
            connection_create(
                actor=admin, name=name, label=label, kind=kind, team=teams[owner], config=config, secrets=secrets
            )
    seed_knowledge_demo(analyst, teams["support"])
    for template, (owner, name) in DEMO_TEMPLATES.items():
        _workflow(analyst, template, teams[owner], name)


def _connections(reviewer: User | None) -> list[tuple[str, str, str, str, dict[str, Any], dict[str, str | None]]]:
    """(name, label, kind, owning team, settings, secrets) of every connection the demo can point somewhere."""
    found: list[tuple[str, str, str, str, dict[str, Any], dict[str, str | None]]] = []
    outside = settings.AIOS_DEMO_OUTSIDE_URL.rstrip("/")
    if outside:
        found.append(("erp-api", "ERP API (demo stand-in)", "http", "finance", {"base_url": f"{outside}/erp/"}, {}))
        found.append(("cms-api", "CMS API (demo stand-in)", "http", "marketing", {"base_url": f"{outside}/cms/"}, {}))
    if settings.AIOS_DEMO_ERP_URL:
        url = urlsplit(settings.AIOS_DEMO_ERP_URL)
        config = {
            "dialect": "postgresql",
            "host": url.hostname or "127.0.0.1",
            "port": url.port or 5432,
            "database": url.path.lstrip("/"),
            "username": unquote(url.username or ""),
        }
        found.append(
            ("erp-db", "ERP database (demo)", "sql", "finance", config, {"password": unquote(url.password or "")})
        )
    if settings.EMAIL_HOST and not settings.EMAIL_HOST_USER:
        # The catch-all of `make run` (it keeps every message as a file and delivers none).
        server = {"host": settings.EMAIL_HOST, "port": settings.EMAIL_PORT, "security": "none"}
        found.append(
            (
                "support-mail",
                "Support mail",
                "smtp",
                "support",
                {**server, "from_address": "Lumo Support <support@lumo.example>"},
                {},
            )
        )
        found.append(
            (
                "team-mail",
                "Team mail",
                "smtp",
                "claims",
                {**server, "from_address": "AIOS assistant <assistant@aios.localhost>"},
                {},
            )
        )
    if reviewer is not None and settings.AIOS_PUBLIC_URLS and not Connection.objects.filter(name="aios-api").exists():
        # The weekly assistant reads the approvals waiting in Rita's queues as Rita, through the public API. A token
        # is shown once and stored as a digest, so one is issued only with the connection that keeps it.
        _token, key = api_token_issue(
            user=reviewer, name="Weekly approvals assistant (demo)", lifetime_days=365, via="demo"
        )
        base = settings.AIOS_PUBLIC_URLS[0].rstrip("/")
        found.append(
            (
                "aios-api",
                "AIOS API (as Rita)",
                "http",
                "claims",
                {"base_url": f"{base}/api/", "auth": "bearer"},
                {"token": key},
            )
        )
    return found


def _workflow(analyst: User, template: str, team: Team, name: str) -> None:
    """The template as a published workflow of `team` (named `name`, or as the template), when it does not exist
    yet and everything it names (connections, the knowledge collection) was seeded."""
    document = gallery_template_get(template).documents[-1]
    if Workflow.objects.filter(name=name or document["metadata"]["name"]).exists():
        return
    needs = [use for step in _all_graphs(template) for _, use in graph_uses(step)]
    missing = [
        use.name
        for use in needs
        if (use.what == "connection" and not Connection.objects.filter(name=use.name).exists())
        or (use.what == "collection" and use.name != DEMO_COLLECTION)
    ]
    if missing:
        logger.info("demo: %s not seeded, it needs %s", template, ", ".join(sorted(set(missing))))
        return
    workflow = workflow_create_from_template(actor=analyst, template=template, name=name, team=team)
    draft = workflow.versions.get(state=WorkflowVersion.State.DRAFT)
    workflow_version_publish(actor=analyst, version=draft, note="Published by the demo seed.")
    if template == "weekly-approvals-assistant":
        trigger_create(
            actor=analyst,
            workflow=workflow,
            kind="schedule",
            name="Every Monday at 08:00",
            config={"cron": "0 8 * * 1", "timezone": _local_time_zone()},
            inputs={"recipient": f'"{DIGEST_RECIPIENT}"', "scheduled_for": "payload.scheduled_at_local"},
        )
    if template == "remote-work-assistant":
        # The team talks to it on the Assistant page: each message is a run, as the person who sent it.
        trigger_create(
            actor=analyst,
            workflow=workflow,
            kind="chat",
            name="Chat",
            config={
                "title": "Remote-work assistant",
                "greeting": "Ask me what is waiting for you, which runs need attention or how your week went. "
                "I can draft a reply too; nothing is sent until you confirm it.",
            },
        )


def _all_graphs(template: str) -> list[dict[str, Any]]:
    return [document["spec"]["graph"] for document in gallery_template_get(template).documents]


def _local_time_zone() -> str:
    """The machine's IANA time zone (the person trying the demo is most likely in it), else UTC."""
    try:
        link = Path("/etc/localtime").resolve()
        if "zoneinfo" in link.parts:
            return "/".join(link.parts[link.parts.index("zoneinfo") + 1 :]) or "UTC"
    except OSError:
        pass
    return "UTC"
