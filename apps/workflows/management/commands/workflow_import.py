"""`manage.py workflow_import <file> [--dry-run] [--into SLUG] --as USERNAME`: import a workflow file as a draft.

Prints what it did (or, with --dry-run, would do), the semantic diff against the draft it replaces (else the
newest published version), and what this instance lacks of the file's requirements. Never publishes. A
refused file exits with status 1 and lists every problem as "line N: path: message" on stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.http import Http404

from apps.accounts.models import User
from apps.core.exceptions import ApplicationError
from apps.workflows.diff import diff_text
from apps.workflows.exchange import (
    MAX_DOCUMENT_BYTES,
    ImportProblems,
    ImportResult,
    document_text_from_bytes,
    problem_text,
    workflow_import,
)
from apps.workflows.selectors import workflow_get_for_user

_KIND_LABELS = {
    "step_types": "step types",
    "model_endpoints": "model endpoints",
    "queues": "approval queues",
    "workflows": "workflows",
}


class Command(BaseCommand):
    help = "Import a workflow file (YAML or JSON) as a draft, or check it with --dry-run."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", help='The workflow file, or "-" for standard input.')
        parser.add_argument("--dry-run", action="store_true", help="Check and show the diff; change nothing.")
        parser.add_argument("--into", help="Import into this workflow's draft (default: the file's slug).")
        parser.add_argument("--as", dest="username", required=True, help="Act as this user.")

    def handle(self, *args: Any, **options: Any) -> None:
        actor = User.objects.filter(username=options["username"]).first()
        if actor is None:
            raise CommandError(f'There is no user "{options["username"]}".')
        dry_run = options["dry_run"]
        try:
            text = document_text_from_bytes(self._read(options["file"]))
            target = workflow_get_for_user(actor, slug=options["into"]) if options["into"] else None
            result = workflow_import(actor=actor, text=text, workflow=target, dry_run=dry_run)
        except Http404:
            raise CommandError(f'{actor.username} may not view workflow "{options["into"]}".') from None
        except ImportProblems as refusal:
            for problem in refusal.problems:
                self.stderr.write(problem_text(problem))
            raise CommandError(refusal.message) from None
        except ApplicationError as error:
            raise CommandError(error.message) from None
        self._report(result, dry_run=dry_run)

    def _read(self, name: str) -> bytes:
        # One byte past the limit is enough to refuse a larger file without reading all of it.
        if name == "-":
            return sys.stdin.buffer.read(MAX_DOCUMENT_BYTES + 1)
        try:
            with Path(name).open("rb") as file:
                return file.read(MAX_DOCUMENT_BYTES + 1)
        except OSError as error:
            raise CommandError(f"Cannot read {name}: {error.strerror}.") from None

    def _report(self, result: ImportResult, *, dry_run: bool) -> None:
        write = self.stdout.write
        if dry_run:
            write("Dry run: nothing was changed.")
            if result.workflow is None:
                write("Would create the workflow, with the file as its draft.")
            else:
                write(f'Would replace the draft of "{result.workflow.slug}"; its published versions stay as they are.')
        elif result.workflow is not None and result.draft is not None:
            draft = f"draft version {result.draft.number}, revision {result.draft.revision}"
            if result.created:
                write(f'Created workflow "{result.workflow.slug}" with the file as its {draft}.')
            else:
                write(
                    f'Saved the file as the draft of "{result.workflow.slug}" ({draft}); '
                    "published versions are unchanged."
                )
            write("Publish the draft to use it.")
        write(f"Changes against {result.diff_base}: {result.diff.summary()}")
        if not result.diff.is_empty:
            write(diff_text(result.diff))
        if result.missing:
            write("Missing on this instance (create them before publishing):")
            for kind, names in result.missing.items():
                write(f"  {_KIND_LABELS.get(kind, kind)}: {', '.join(names)}")
        else:
            write("Everything the file requires is here.")
        write(f"Checksum: {result.checksum}")
