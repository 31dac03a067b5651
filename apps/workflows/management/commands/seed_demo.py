"""`manage.py seed_demo`: demo users for each role, a team, and the claims-triage workflow. Idempotent.

Passwords are generated on the first run and kept in <AIOS_DATA_DIR>/demo-credentials.json (mode 0600),
so later runs print the same credentials.
"""

from __future__ import annotations

import json
import os
import secrets
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import transaction

from apps.accounts.models import Team, User
from apps.accounts.roles import ADMIN, ANALYST, MANAGER, REVIEWER
from apps.accounts.services import team_create, user_create, user_set_password
from apps.workflows.demo import CLAIMS_TRIAGE_GRAPH, CLAIMS_TRIAGE_INPUT_SCHEMA, demo_extensions
from apps.workflows.models import Workflow
from apps.workflows.services import workflow_create, workflow_version_create, workflow_version_publish

DEMO_USERS = [
    ("ana", "Ana", "Analyst", ANALYST),
    ("rita", "Rita", "Reviewer", REVIEWER),
    ("max", "Max", "Manager", MANAGER),
    ("adam", "Adam", "Admin", ADMIN),
]


class Command(BaseCommand):
    help = "Create the demo users, team and claims-triage workflow (safe to run again)."

    def handle(self, *args: Any, **options: Any) -> None:
        path = Path(settings.AIOS_DATA_DIR) / "demo-credentials.json"
        stored: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
        with transaction.atomic():
            passwords = self._users(stored)
            analyst = User.objects.get(username="ana")
            team = Team.objects.filter(slug="claims").first() or team_create(
                name="Claims",
                members=list(User.objects.filter(username__in=["ana", "rita"])),
                actor=None,
            )
            self._workflow(analyst, team)
            self._endpoints()
            for extension in demo_extensions:
                extension(analyst, team)
        if passwords != stored:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Written to a new file that is private from its creation (no window in which it is world-readable),
            # then moved over the old one.
            fresh = path.with_name(f".{path.name}.{os.getpid()}")
            descriptor = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as file:
                file.write(json.dumps(passwords, indent=2))
            os.replace(fresh, path)
        self._print(passwords)

    def _users(self, stored: dict[str, str]) -> dict[str, str]:
        passwords = {}
        for username, first, last, role in DEMO_USERS:
            password = stored.get(username) or secrets.token_urlsafe(9)
            user = User.objects.filter(username=username).first()
            if user is None:
                user_create(username=username, password=password, roles=[role], first_name=first, last_name=last)
            elif not user.check_password(password):
                # The credentials file was lost or edited: make the printed password true again.
                user_set_password(user=user, password=password)
            passwords[username] = password
        return passwords

    def _workflow(self, analyst: User, team: Team) -> None:
        if Workflow.objects.filter(slug="claims-triage").exists():
            return
        workflow = workflow_create(
            actor=analyst,
            name="Claims triage",
            description=(
                "Reads an insurance claim, extracts its fields with a language model, and routes it: "
                "small claims without injury are approved straight through, the rest go to an adjuster."
            ),
            team=team,
            baseline_minutes_per_case=Decimal("12"),
        )
        version = workflow_version_create(
            actor=analyst, workflow=workflow, graph=CLAIMS_TRIAGE_GRAPH, input_schema=CLAIMS_TRIAGE_INPUT_SCHEMA
        )
        workflow_version_publish(actor=analyst, version=version)

    def _endpoints(self) -> None:
        """The configured inference server as the default endpoint, with demo prices, probed once."""
        from apps.inference.gateway import endpoint_from_settings
        from apps.inference.models import ModelEndpoint
        from apps.inference.services import endpoint_probe, endpoint_save

        if ModelEndpoint.objects.exists():
            return
        endpoint = endpoint_from_settings()
        endpoint.is_default = True
        endpoint.max_in_flight = 32
        endpoint.price_input_per_1k = Decimal("0.0005")
        endpoint.price_output_per_1k = Decimal("0.0015")
        endpoint_probe(actor=None, endpoint=endpoint_save(actor=None, endpoint=endpoint))

    def _print(self, passwords: dict[str, str]) -> None:
        self.stdout.write("Demo sign-ins (username / password / role):")
        for username, _, _, role in DEMO_USERS:
            self.stdout.write(f"  {username:<6} {passwords[username]:<14} {role}")
