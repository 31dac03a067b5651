"""Retention: removing finished runs, and everything recorded about them, once they are older than a cut-off.

What goes with a run: its step runs, step results, timers, incidents and effect-ledger rows; its child runs
(a sub-workflow's or an agent tool call's run is part of its parent's record, so it goes with the parent and
never alone); its model-call records (the recordings a replay reads: a removed run cannot be replayed anyway);
and what upper apps keep about it, through `RUN_DEPENDENTS` (the approvals app: the run's approval requests
with their decisions, activities, escalation timers and notifications; the evaluations app unlinks its case
results; the assistants app unlinks chat messages). Trigger firings and webhook receipts keep their row and
lose the link, as their foreign keys say (SET NULL). Dashboard rollups and the audit trail are not touched:
rollups are aggregates that outlive the runs they count, and the trail is append-only; instead each batch
appends one `runs.purged` event naming what it removed (count, id range, a digest of the ids).

Uploaded input documents go too, once no run names them (RunDocument, which the database writes with each
run): a batch takes the documents its runs named that no run staying names and that were uploaded before the
cut-off, and a last pass takes the documents uploaded before the cut-off that no run names at all (never used,
or named only by runs removed earlier), in batches with a `documents.purged` event each. A document uploaded
since the cut-off and not used yet stays: its run is probably being started. Relayed outbox rows older than the
cut-off are plumbing nobody reads again (the relay and the metrics read unrelayed rows only), so they go as
well; unrelayed rows never.
A purge of one workflow (`workflow_slug`) takes only the documents its runs named, and leaves the other two.

What stays, however old: a run that is not finished, and a run that something staying depends on. A run is
held back with its whole family (it and its descendants) when any of them is unfinished, when a run outside
the removed set points at one of them (a replay, restart or what-if of it, a step that reused one of its
step results), or when an upper app says so (an evaluation report still scoring its case runs). References
point from newer runs to older ones, so batches go from the newest candidate to the oldest: a replay is
removed in an earlier batch than its original, which is then free to go.

Each batch is one transaction that locks its runs first, with SKIP LOCKED: a run that a replay or restart is
starting from right now is skipped (and its family held back); one that starts later waits for the batch and then
finds its original gone.
Model-call records and approval decisions are append-only (apps/core/db.py): only the database owner may
delete them, so the purge runs as the owner role (manage.py selects it; deploy/README.md, "Retention").
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg.errors
from django.db import DatabaseError, connection, transaction
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.utils import timezone

from apps.audit.services import audit_record
from apps.core.db import append_only_purge
from apps.core.exceptions import ApplicationError, ValidationFailed
from apps.inference.models import InferenceCall
from apps.runs.documents import document_page_images_forget
from apps.runs.models import (
    EffectRecord,
    Incident,
    InputDocument,
    Outbox,
    Run,
    RunDocument,
    StepResult,
    StepRun,
    Timer,
    TriggerFiring,
    WebhookReceipt,
)
from apps.workflows.models import Workflow

PURGED_VERB = "runs.purged"
DOCUMENTS_PURGED_VERB = "documents.purged"
DEFAULT_BATCH_SIZE = 100
MAX_BATCH_SIZE = 10_000
# Outbox rows per transaction: tiny rows that nothing else locks once relayed, so a large batch is cheap.
OUTBOX_BATCH_SIZE = 10_000

OWNER_NEEDED = (
    "purge_runs must run as the database owner role: the application role may not delete model-call records or "
    "approval decisions (they are append-only). Run it with DATABASE_OWNER_URL set to the owner's URL, as the "
    'migrate job does (deploy/README.md, "Database roles" and "Retention of runs and recordings").'
)


class PurgeNotPermitted(ApplicationError):
    """The database role this process connects as may not remove what the purge must remove."""


@dataclass(frozen=True)
class RunDependents:
    """What an upper app keeps about runs, for the purge (filled by that app's ready()).

    `count(run_ids)` and `remove(run_ids)` return {kind: rows} ("approval requests": 3): what the app would
    delete or unlink for those runs, and what it did; `remove` runs inside the batch's transaction, after the
    runs are locked. `keep(run_ids)` returns the ids among them that must stay for now, with a reason.
    """

    count: Callable[[list[int]], dict[str, int]]
    remove: Callable[[list[int]], dict[str, int]]
    keep: Callable[[list[int]], dict[int, str]] = lambda run_ids: {}


# name → the app's dependents; the approvals, evaluations and assistants apps register theirs.
RUN_DEPENDENTS: dict[str, RunDependents] = {}


@dataclass
class PurgeBatch:
    """One batch: the runs removed (or, in a dry run, that would be), rows per kind, and runs held back."""

    number: int
    run_ids: list[int]
    removed: dict[str, int]
    kept: dict[str, int] = field(default_factory=dict)
    # The input documents that went with these runs (no run that stays names them).
    document_ids: list[int] = field(default_factory=list)

    @property
    def digest(self) -> str:
        return run_ids_digest(self.run_ids)


@dataclass
class PurgeReport:
    """The whole purge: its cut-off, its batches, and the totals."""

    cutoff: datetime
    dry_run: bool
    batches: list[PurgeBatch] = field(default_factory=list)
    # The last pass: documents uploaded before the cut-off that no run names (none in a purge of one workflow).
    unused_document_ids: list[int] = field(default_factory=list)
    outbox_rows: int = 0

    @property
    def removed(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for batch in self.batches:
            total.update(batch.removed)
        return total

    @property
    def kept(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for batch in self.batches:
            total.update(batch.kept)
        return total

    @property
    def document_ids(self) -> list[int]:
        """Every input document removed (or, in a dry run, that would be), with its runs or in the last pass."""
        return sorted({pk for batch in self.batches for pk in batch.document_ids} | set(self.unused_document_ids))


def run_ids_digest(run_ids: Iterable[int]) -> str:
    """SHA-256 of the ids in ascending order, comma-separated: whoever holds a list of ids can check it."""
    return hashlib.sha256(",".join(str(pk) for pk in sorted(run_ids)).encode()).hexdigest()


def purge_candidates(cutoff: datetime, workflow: Workflow | None = None) -> QuerySet[Run]:
    """The top-level runs that finished before `cutoff` (of `workflow`): what the purge considers, newest first.
    Its filter implies the condition of the index `run_finished_top_level_idx`, which serves it."""
    candidates = Run.objects.filter(status__in=Run.FINISHED, finished_at__lt=cutoff, parent_step_run__isnull=True)
    if workflow is not None:
        candidates = candidates.filter(workflow=workflow)
    return candidates.order_by("-pk")


def runs_purge(
    *,
    older_than_days: int,
    workflow_slug: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    dry_run: bool = False,
    actor: Any = None,
    now: datetime | None = None,
    progress: Callable[[PurgeBatch], None] | None = None,
) -> PurgeReport:
    """Remove finished runs whose finish time is more than `older_than_days` days ago (of one workflow when
    `workflow_slug` is given), `batch_size` top-level runs (with their child runs) per transaction, newest first;
    with them the input documents no run names any more, uploaded before the same cut-off; then (unless
    `workflow_slug` is given) the other documents uploaded before it that no run names, and relayed outbox rows
    older than it.

    A dry run counts what would go, batch by batch, and changes nothing (any role may run it). Otherwise every
    batch appends one `runs.purged` audit event (actor: `actor`, or the system) in its own transaction, and
    every batch of the documents' last pass one `documents.purged` event.
    ValidationFailed for bad arguments; PurgeNotPermitted when the role may not delete append-only records.
    """
    problems: dict[str, list[str]] = {}
    if older_than_days < 0:
        problems["older_than"] = [f"DAYS must be 0 or more, not {older_than_days}."]
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        problems["batch_size"] = [f"The batch size must be from 1 to {MAX_BATCH_SIZE}, not {batch_size}."]
    workflow = None
    if workflow_slug is not None:
        workflow = Workflow.objects.filter(slug=workflow_slug).first()
        if workflow is None:
            problems["workflow"] = [f"There is no workflow with the slug {workflow_slug!r}."]
    if problems:
        message = " ".join(text for messages in problems.values() for text in messages)
        raise ValidationFailed(message, fields=problems)
    if not dry_run:
        _owner_check()

    cutoff = (now or timezone.now()) - timedelta(days=older_than_days)
    report = PurgeReport(cutoff=cutoff, dry_run=dry_run)
    candidates = purge_candidates(cutoff, workflow)
    below: int | None = None
    gone: set[int] = set()
    while True:
        page = candidates if below is None else candidates.filter(pk__lt=below)
        roots = list(page.values_list("pk", flat=True)[:batch_size])
        if not roots:
            break
        below = roots[-1]
        batch = _batch(
            number=len(report.batches) + 1,
            roots=roots,
            dry_run=dry_run,
            actor=actor,
            cutoff=cutoff,
            older_than_days=older_than_days,
            workflow=workflow,
            gone=gone,
        )
        if dry_run:
            gone.update(batch.run_ids)
        report.batches.append(batch)
        if progress is not None:
            progress(batch)
    if workflow is None:
        report.unused_document_ids = _unused_documents_purge(
            cutoff=cutoff, batch_size=batch_size, dry_run=dry_run, actor=actor, older_than_days=older_than_days
        )
        report.outbox_rows = _outbox_purge(cutoff=cutoff, dry_run=dry_run)
    return report


def _owner_check() -> None:
    """Fail before the first batch when this role may not switch the append-only guard off."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_has_role(current_user, relowner, 'USAGE') FROM pg_class WHERE oid = %s::regclass",
            [InferenceCall._meta.db_table],
        )
        row = cursor.fetchone()
    if not row or not row[0]:
        raise PurgeNotPermitted(OWNER_NEEDED)


def _batch(
    *,
    number: int,
    roots: list[int],
    dry_run: bool,
    actor: Any,
    cutoff: datetime,
    older_than_days: int,
    workflow: Workflow | None,
    gone: set[int],
) -> PurgeBatch:
    try:
        with transaction.atomic():
            families = _families(roots)
            members = sorted(pk for family in families.values() for pk in family)
            busy: set[int] = set()
            if not dry_run:
                # Lock first, then decide, with SKIP LOCKED (the lock-order rule's exemption, apps/runs/lifecycle.py:
                # it never waits, so it closes no cycle). A run someone holds (a replay or restart of it starting,
                # which locks it, or a row referring to it being inserted, which key-share locks it) is skipped and
                # its family held back; one that starts later waits for this batch and then finds the run gone.
                locked = Run.objects.select_for_update(skip_locked=True).filter(pk__in=members).values_list("pk")
                busy = set(members) - {pk for (pk,) in locked}
            kept = _hold_back(families, busy=busy, gone=gone)
            run_ids = sorted(pk for root, family in families.items() if root not in kept for pk in family)
            kept_reasons = Counter(kept.values())
            document_ids = _documents_leaving(run_ids, cutoff=cutoff, lock=not dry_run, gone=gone)
            if dry_run:
                return PurgeBatch(number, run_ids, _count(run_ids, document_ids), dict(kept_reasons), document_ids)
            removed = _remove(run_ids, document_ids)
            if run_ids:
                data: dict[str, Any] = {
                    "batch": number,
                    "count": len(run_ids),
                    "first_run_id": run_ids[0],
                    "last_run_id": run_ids[-1],
                    "run_ids_sha256": run_ids_digest(run_ids),
                    "finished_before": cutoff.isoformat(),
                    "older_than_days": older_than_days,
                    "workflow": workflow.slug if workflow is not None else None,
                    "removed": removed,
                    "kept": dict(kept_reasons),
                }
                if document_ids:
                    data |= {
                        "first_document_id": document_ids[0],
                        "last_document_id": document_ids[-1],
                        "document_ids_sha256": run_ids_digest(document_ids),
                    }
                audit_record(actor=actor, verb=PURGED_VERB, data=data)
            return PurgeBatch(number, run_ids, removed, dict(kept_reasons), document_ids)
    except DatabaseError as error:
        if isinstance(error.__cause__, psycopg.errors.InsufficientPrivilege):
            raise PurgeNotPermitted(OWNER_NEEDED) from error
        raise


def _families(roots: list[int]) -> dict[int, set[int]]:
    """Each top-level run with its descendants (child runs of its step runs, theirs, and so on)."""
    families = {root: {root} for root in roots}
    family_of = {root: root for root in roots}
    frontier = list(roots)
    while frontier:
        children = list(
            Run.objects.filter(parent_step_run__run_id__in=frontier).values_list("pk", "parent_step_run__run_id")
        )
        frontier = []
        for child, parent in children:
            if child in family_of:
                continue
            family_of[child] = family_of[parent]
            families[family_of[child]].add(child)
            frontier.append(child)
    return families


def _hold_back(families: dict[int, set[int]], *, busy: set[int], gone: set[int]) -> dict[int, str]:
    """{root: reason} for the families that must stay; the rest may go. Holding one back may hold back another
    (the one a run of it replays), so the check repeats until nothing changes. `gone`: runs an earlier batch of a
    dry run would have removed (they are still there, but their references would not be)."""
    family_of = {pk: root for root, family in families.items() for pk in family}
    kept: dict[int, str] = {family_of[pk]: "in use right now; a later purge takes it" for pk in busy}
    unfinished = (
        Run.objects.filter(pk__in=list(family_of)).exclude(status__in=Run.FINISHED).values_list("pk", flat=True)
    )
    for pk in unfinished:
        kept.setdefault(family_of[pk], "a run of its family is not finished")
    for dependents in RUN_DEPENDENTS.values():
        for pk, reason in dependents.keep(sorted(family_of)).items():
            kept.setdefault(family_of[pk], reason)
    while True:
        leaving = [pk for pk, root in family_of.items() if root not in kept]
        if not leaving:
            return kept
        referenced: list[int] = []
        for referrer, replay_of, restarted_from, parent_run in (
            Run.objects.filter(
                Q(replay_of__in=leaving) | Q(restarted_from__in=leaving) | Q(parent_step_run__run__in=leaving)
            )
            .exclude(pk__in=leaving)
            .values_list("pk", "replay_of", "restarted_from", "parent_step_run__run")
        ):
            if referrer not in gone:
                referenced += [pk for pk in (replay_of, restarted_from, parent_run) if pk is not None]
        for referrer, reused in (
            StepRun.objects.filter(reused_from__run__in=leaving)
            .exclude(run__in=leaving)
            .values_list("run", "reused_from__run")
        ):
            if referrer not in gone:
                referenced.append(reused)
        newly = {family_of[pk] for pk in referenced if pk in family_of and family_of[pk] not in kept}
        if not newly:
            return kept
        for root in newly:
            kept[root] = "a run that stays refers to it"


def _documents_delete(document_ids: list[int]) -> int:
    """Delete the input documents `document_ids` (their references already gone) and, once this transaction
    commits, the page images this host cached of contents no document keeps."""
    if not document_ids:
        return 0
    contents = set(InputDocument.objects.filter(pk__in=document_ids).values_list("sha256", flat=True))
    count = InputDocument.objects.filter(pk__in=document_ids)._raw_delete(connection.alias) or 0
    # Another uploader's copy of the same file shares the images.
    orphaned = contents - set(InputDocument.objects.filter(sha256__in=contents).values_list("sha256", flat=True))
    if orphaned:
        transaction.on_commit(lambda: document_page_images_forget(sorted(orphaned)))
    return count


def _documents_leaving(run_ids: list[int], *, cutoff: datetime, lock: bool, gone: set[int]) -> list[int]:
    """The input documents the runs `run_ids` name that may go with them: uploaded before `cutoff` and named by
    no other run (but the runs in `gone`, which an earlier batch of a dry run would have removed).

    Locked first, with SKIP LOCKED, and only then checked: a run being started right now that names one holds
    it (key share, see RunDocument's trigger), so it is skipped; a run that names it later waits for this batch
    and finds it gone, like any document id that names nothing."""
    if not run_ids:
        return []
    named = RunDocument.objects.filter(run_id__in=run_ids).values("document_id")
    old = InputDocument.objects.filter(pk__in=named, created_at__lt=cutoff)
    if lock:
        old = old.select_for_update(skip_locked=True)
    candidates = set(old.values_list("pk", flat=True))
    if not candidates:
        return []
    elsewhere = (
        RunDocument.objects.filter(document_id__in=candidates)
        .exclude(run_id__in=run_ids)
        .values_list("document_id", "run_id")
    )
    named_elsewhere = {document for document, run in elsewhere if run not in gone}
    return sorted(candidates - named_elsewhere)


def _unused_documents_purge(
    *, cutoff: datetime, batch_size: int, dry_run: bool, actor: Any, older_than_days: int
) -> list[int]:
    """The last pass over documents: those uploaded before `cutoff` that no run names, `batch_size` per
    transaction, each batch with a `documents.purged` event. Returns their ids (in a dry run, those that would go:
    the runs removed by the batches before still name theirs, which the batches counted already)."""
    unused = (
        InputDocument.objects.filter(created_at__lt=cutoff)
        .filter(~Exists(RunDocument.objects.filter(document_id=OuterRef("pk"))))
        .order_by("pk")
    )
    if dry_run:
        return list(unused.values_list("pk", flat=True))
    removed: list[int] = []
    after = 0
    while True:
        with transaction.atomic():
            # Locked before the second look at the references, as in `_documents_leaving`.
            locked = unused.filter(pk__gt=after).select_for_update(skip_locked=True)
            page = list(locked.values_list("pk", flat=True)[:batch_size])
            if not page:
                return removed
            after = page[-1]
            named = set(RunDocument.objects.filter(document_id__in=page).values_list("document_id", flat=True))
            document_ids = [pk for pk in page if pk not in named]
            if not document_ids:
                continue
            count = _documents_delete(document_ids)
            audit_record(
                actor=actor,
                verb=DOCUMENTS_PURGED_VERB,
                data={
                    "count": count,
                    "first_document_id": document_ids[0],
                    "last_document_id": document_ids[-1],
                    "document_ids_sha256": run_ids_digest(document_ids),
                    "uploaded_before": cutoff.isoformat(),
                    "older_than_days": older_than_days,
                    "reason": "named by no run",
                },
            )
            removed += document_ids


def _outbox_purge(*, cutoff: datetime, dry_run: bool) -> int:
    """Remove outbox rows relayed before `cutoff`, OUTBOX_BATCH_SIZE per transaction; how many (would) go.
    Rows never relayed stay, however old: the sweeper still owes their message."""
    # A row is relayed after it is written, so the created_at bound only lets the index on it narrow the scan.
    relayed = Outbox.objects.filter(created_at__lt=cutoff, relayed_at__lt=cutoff)
    if dry_run:
        return relayed.count()
    total = 0
    while True:
        with transaction.atomic():
            page = list(relayed.select_for_update(skip_locked=True).values_list("pk", flat=True)[:OUTBOX_BATCH_SIZE])
            if not page:
                return total
            total += int(Outbox.objects.filter(pk__in=page)._raw_delete(connection.alias))


def _kinds(run_ids: list[int]) -> list[tuple[str, QuerySet[Any]]]:
    """The runs app's own rows of `run_ids`, per kind, children before parents."""
    return [
        ("step results", StepResult.objects.filter(run_id__in=run_ids)),
        ("timers", Timer.objects.filter(run_id__in=run_ids)),
        ("incidents", Incident.objects.filter(run_id__in=run_ids)),
        ("effect records", EffectRecord.objects.filter(run_id__in=run_ids)),
        ("document references", RunDocument.objects.filter(run_id__in=run_ids)),
        ("step runs", StepRun.objects.filter(run_id__in=run_ids)),
        ("runs", Run.objects.filter(pk__in=run_ids)),
    ]


def _count(run_ids: list[int], document_ids: list[int]) -> dict[str, int]:
    if not run_ids:
        return {}
    counts: dict[str, int] = {}
    for dependents in RUN_DEPENDENTS.values():
        counts.update(dependents.count(run_ids))
    counts["trigger firings unlinked"] = TriggerFiring.objects.filter(run_id__in=run_ids).count()
    counts["webhook receipts unlinked"] = WebhookReceipt.objects.filter(run_id__in=run_ids).count()
    for kind, queryset in _kinds(run_ids):
        counts[kind] = queryset.count()
    counts["input documents"] = len(document_ids)
    counts["model-call records"] = InferenceCall.objects.filter(run_id__in=run_ids).count()
    return counts


def _remove(run_ids: list[int], document_ids: list[int]) -> dict[str, int]:
    """Delete the rows of `run_ids`, and the input documents `document_ids` that go with them, in the batch's
    transaction. Plain DELETEs in dependency order (the ORM's cascade would refuse the PROTECT links between
    runs that leave together); the foreign keys are checked at the commit, so anything this missed fails the
    batch instead of being left dangling."""
    if not run_ids:
        return {}
    removed: dict[str, int] = {}
    for dependents in RUN_DEPENDENTS.values():
        removed.update(dependents.remove(run_ids))
    removed["trigger firings unlinked"] = TriggerFiring.objects.filter(run_id__in=run_ids).update(run=None)
    removed["webhook receipts unlinked"] = WebhookReceipt.objects.filter(run_id__in=run_ids).update(run=None)
    for kind, queryset in _kinds(run_ids):
        removed[kind] = queryset._raw_delete(queryset.db) or 0
    removed["input documents"] = _documents_delete(document_ids)
    # Last: switching the guard off locks the table against writers until the commit, so hold it briefly.
    removed["model-call records"] = append_only_purge(InferenceCall.objects.filter(run_id__in=run_ids))
    return removed
