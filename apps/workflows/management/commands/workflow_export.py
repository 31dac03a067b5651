"""`manage.py workflow_export <slug> [--version N] [--output FILE] [--as USERNAME]`: print a workflow's file.

Without --version: the draft if there is one, else the newest published version. The export is audited as
the acting user, the workflow's owner unless --as names someone else (who must be able to view it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.http import Http404

from apps.accounts.models import User
from apps.core.exceptions import ApplicationError
from apps.workflows.exchange import workflow_export
from apps.workflows.models import Workflow
from apps.workflows.selectors import workflow_get_for_user


class Command(BaseCommand):
    help = "Print a workflow's definition file (YAML): a published version, or its draft, or its newest version."

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        # Django gives every command --version (its own version); here it names the workflow version instead.
        return super().create_parser(prog_name, subcommand, conflict_handler="resolve", **kwargs)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug", help="The workflow's slug.")
        parser.add_argument("--version", dest="version_number", type=int, help="A published version number.")
        parser.add_argument("--output", "-o", help="Write the file here instead of printing it.")
        parser.add_argument("--as", dest="username", help="Act as this user (default: the workflow's owner).")

    def handle(self, *args: Any, **options: Any) -> None:
        slug = options["slug"]
        owner = Workflow.objects.filter(slug=slug).values_list("owner__username", flat=True).first()
        if owner is None:
            raise CommandError(f'There is no workflow "{slug}".')
        username = options["username"] or owner
        actor = User.objects.filter(username=username).first()
        if actor is None:
            raise CommandError(f'There is no user "{username}".')
        try:
            workflow = workflow_get_for_user(actor, slug=slug)
            text = workflow_export(actor=actor, workflow=workflow, version_number=options["version_number"])
        except Http404:
            raise CommandError(f'{username} may not view workflow "{slug}".') from None
        except ApplicationError as error:
            raise CommandError(error.message) from None
        if options["output"]:
            Path(options["output"]).write_text(text, encoding="utf-8")
            self.stderr.write(f"Wrote {options['output']}.")
        else:
            self.stdout.write(text, ending="")
