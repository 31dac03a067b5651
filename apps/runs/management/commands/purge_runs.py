"""`manage.py purge_runs --older-than DAYS`: remove finished runs, and their recordings, older than a cut-off.

The work is apps/runs/retention.py's; this parses, reports each batch on a line, and exits non-zero with one
line when an argument is wrong or the database role may not delete append-only records. manage.py connects as
the owner role for this command (DATABASE_OWNER_URL), as it does for migrate.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.core.exceptions import ApplicationError
from apps.runs.retention import DEFAULT_BATCH_SIZE, PurgeBatch, runs_purge


def _kinds(counts: dict[str, int]) -> str:
    shown = [f"{count} {kind}" for kind, count in counts.items() if count and kind != "runs"]
    return ", ".join(shown) if shown else "nothing else"


class Command(BaseCommand):
    help = (
        "Remove finished runs (succeeded, failed, cancelled) that finished more than DAYS days ago, with their "
        "step runs, child runs, approvals and model-call records, in batches; the audit trail records each batch. "
        "Uploaded input documents older than DAYS days that no remaining run names go too (one uploaded since and "
        "not used yet stays), and so do outbox rows relayed more than DAYS days ago."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--older-than", type=int, required=True, metavar="DAYS", help="Age cut-off in days.")
        parser.add_argument("--dry-run", action="store_true", help="Count what would be removed; remove nothing.")
        parser.add_argument(
            "--workflow",
            metavar="SLUG",
            help="Only runs of this workflow (and their child runs), and the documents only they named; "
            "no other documents and no outbox rows.",
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=DEFAULT_BATCH_SIZE,
            metavar="N",
            help=f"Top-level runs per transaction (default {DEFAULT_BATCH_SIZE}).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        dry_run = options["dry_run"]
        verb = "would remove" if dry_run else "removed"

        def progress(batch: PurgeBatch) -> None:
            line = f"Batch {batch.number}: {verb} {len(batch.run_ids)} runs"
            if batch.run_ids:
                line += f" (ids {batch.run_ids[0]}..{batch.run_ids[-1]}): {_kinds(batch.removed)}"
            if batch.kept:
                line += "; held back " + ", ".join(f"{count} ({reason})" for reason, count in batch.kept.items())
            self.stdout.write(line + ".")

        try:
            report = runs_purge(
                older_than_days=options["older_than"],
                workflow_slug=options["workflow"],
                batch_size=options["batch_size"],
                dry_run=dry_run,
                progress=progress,
            )
        except ApplicationError as error:
            raise CommandError(error.message) from None
        removed = report.removed
        scope = f" of workflow {options['workflow']}" if options["workflow"] else ""
        summary = (
            f"{'Dry run: would remove' if dry_run else 'Removed'} {removed['runs']} runs{scope} that "
            f"finished before {report.cutoff:%Y-%m-%d %H:%M} UTC, in {len(report.batches)} batch(es)"
        )
        if removed["runs"]:
            summary += f"; with them {_kinds(dict(removed))}"
        kept = report.kept
        if kept:
            summary += "; held back " + ", ".join(f"{count} ({reason})" for reason, count in kept.items())
        self.stdout.write(self.style.SUCCESS(summary + "."))
        unused = report.unused_document_ids
        if not options["workflow"]:
            before = f"{report.cutoff:%Y-%m-%d %H:%M} UTC"
            documents = f"{len(unused)} input documents that no run names, uploaded before {before}"
            if unused:
                documents += f" (ids {unused[0]}..{unused[-1]})"
            self.stdout.write(f"{'Would remove' if dry_run else 'Removed'} {documents}.")
            self.stdout.write(
                f"{'Would remove' if dry_run else 'Removed'} {report.outbox_rows} outbox rows relayed before {before}."
            )
        if dry_run:
            self.stdout.write("Nothing was changed.")
