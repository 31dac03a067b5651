"""The retention purge (`manage.py purge_runs`, apps/runs/retention.py) on the real database.

Old finished runs go with everything recorded about them (step runs and results, child runs, approvals and their
decisions, model-call records, a finished replay); recent runs, unfinished runs and the runs that a run which
stays refers to remain; dashboard rollups of the purged days stay as they were, even through a rebuild; every
batch leaves one audit event, and the audit trail still verifies.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from datetime import timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import psycopg
import psycopg.types.json
import pytest
from django.apps import apps as django_apps
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from apps.approvals.models import ApprovalActivity, ApprovalDecision, ApprovalRequest
from apps.approvals.services import approval_decide
from apps.audit.models import AuditEvent
from apps.audit.selectors import audit_verify
from apps.core.env import database_from_url
from apps.dashboards.models import QueueDayRollup, WorkflowDayRollup
from apps.dashboards.rollups import local_day, rollups_rebuild
from apps.evaluations.models import EvaluationReport, EvaluationResult, EvaluationSuite
from apps.inference.models import InferenceCall
from apps.runs.documents import document_input_value, document_page_png, document_store
from apps.runs.models import InputDocument, Outbox, Run, RunDocument, StepResult, StepRun
from apps.runs.retention import (
    DEFAULT_BATCH_SIZE,
    DOCUMENTS_PURGED_VERB,
    PURGED_VERB,
    RUN_DEPENDENTS,
    purge_candidates,
    run_ids_digest,
    runs_purge,
)
from apps.runs.services import run_replay, run_restart, run_start
from apps.workflows.services import workflow_create, workflow_version_create, workflow_version_publish
from tests.approvals.items import claim_workflow, parked_item
from tests.support.documents import pdf_of
from tests.support.engine import drive
from tests.support.processes import REPO, database_url_as, service_env

pytestmark = pytest.mark.django_db

NUMBER = {"type": "object", "properties": {"n": {"type": "number"}}, "required": ["n"]}
DAYS = 90


def transform(key: str, **fields: str) -> dict[str, Any]:
    return {"key": key, "type": "data.transform", "config": {"fields": fields}}


def publish(owner: Any, team: Any, name: str, graph: dict[str, Any]) -> Any:
    workflow = workflow_create(actor=owner, name=name, team=team)
    version = workflow_version_create(actor=owner, workflow=workflow, graph=graph, input_schema=NUMBER)
    workflow_version_publish(actor=owner, version=version)
    return workflow


def age(run: Run, days: float) -> Run:
    """Move a run's (and its child runs') times `days` into the past, as if it had happened then."""
    family = [run.pk, *Run.objects.filter(parent_step_run__run=run).values_list("pk", flat=True)]
    for member in Run.objects.filter(pk__in=family):
        shift = timedelta(days=days)
        Run.objects.filter(pk=member.pk).update(
            created_at=member.created_at - shift,
            started_at=member.started_at - shift if member.started_at else None,
            finished_at=member.finished_at - shift if member.finished_at else None,
        )
    run.refresh_from_db()
    return run


def record_call(run: Run) -> InferenceCall:
    """A stored model-call record of the run's first step (what an llm step writes; no model server needed)."""
    step = run.step_runs.order_by("position").first()
    assert step is not None
    return InferenceCall.objects.create(
        run_id=run.pk,
        step_run_id=step.pk,
        step_key=step.step_key,
        endpoint_name="small",
        endpoint_url="http://127.0.0.1:9/",
        protocol="tgi",
        input_sha256="0" * 64,
        status=InferenceCall.Status.OK,
        started_at=run.started_at,
    )


def finished(owner: Any, workflow: Any, *, days: float, n: float = 1.0) -> Run:
    run = drive(run_start(actor=owner, workflow=workflow, inputs={"n": n})[0])
    assert run.status == Run.Status.SUCCEEDED, run.error
    return age(run, days)


@pytest.fixture
def doubling(analyst: Any, team: Any) -> Any:
    return publish(analyst, team, "Double", {"steps": [transform("double", x="input.n * 2.0")]})


@pytest.fixture
def parent(analyst: Any, team: Any, doubling: Any) -> Any:
    graph = {
        "steps": [
            {
                "key": "call",
                "type": "flow.subworkflow",
                "config": {"workflow": doubling.slug},
                "inputs": {"n": "input.n"},
            },
            transform("use", y="steps.call.output.x + 1.0"),
        ]
    }
    return publish(analyst, team, "Parent", graph)


def rollup_rows(model: Any) -> list[dict[str, Any]]:
    """A rollup table's rows without their ids (a rebuilt day gets new ones), in a stable order."""
    rows = [{k: v for k, v in row.items() if k != "id"} for row in model.objects.values()]
    return sorted(rows, key=repr)


def exists(*runs: Run) -> list[bool]:
    present = set(Run.objects.filter(pk__in=[run.pk for run in runs]).values_list("pk", flat=True))
    return [run.pk in present for run in runs]


def test_old_finished_runs_go_with_their_records_and_everything_else_stays(
    analyst: Any, reviewer: Any, team: Any, doubling: Any, parent: Any
) -> None:
    # Old and finished: a plain run with a model-call record, a run with a child run, an approved run.
    plain = finished(analyst, doubling, days=200)
    plain_call = record_call(plain)
    with_child = finished(analyst, parent, days=150)
    child = Run.objects.get(parent_step_run__run=with_child)
    approvals = claim_workflow(analyst, team)
    item = parked_item(analyst, approvals)
    approval_decide(request=item, actor=reviewer, decision="approved")
    approved = drive(item.run)
    assert approved.status == Run.Status.SUCCEEDED
    age(approved, 120)
    # An old run with a finished old replay: both go (the replay in an earlier batch, then its original).
    replayed = finished(analyst, doubling, days=300, n=3)
    replay = drive(run_replay(run=replayed, actor=analyst))
    assert replay.status == Run.Status.SUCCEEDED
    age(replay, 250)
    # Stay: a recent run; an old run that never finished; an old run a live replay reads from; an old run that a
    # recent restart reused steps of; an old child whose parent is recent.
    recent = finished(analyst, doubling, days=DAYS - 1)
    waiting = parked_item(analyst, approvals).run
    age(waiting, 400)
    read_by_live = finished(analyst, doubling, days=200, n=4)
    live_replay = run_replay(run=read_by_live, actor=analyst)  # not driven: it is still running
    restarted = finished(analyst, parent, days=200, n=5)
    restart = drive(run_restart(run=restarted, step_key="use", actor=analyst))
    assert restart.status == Run.Status.SUCCEEDED and StepRun.objects.filter(run=restart, reused_from__isnull=False)
    recent_parent = finished(analyst, parent, days=1, n=6)
    old_child = Run.objects.get(parent_step_run__run=recent_parent)
    Run.objects.filter(pk=old_child.pk).update(finished_at=timezone.now() - timedelta(days=500))

    rollups_rebuild(start=local_day(timezone.now() - timedelta(days=310)), end=local_day(timezone.now()))
    workflow_rollups, queue_rollups = rollup_rows(WorkflowDayRollup), rollup_rows(QueueDayRollup)
    assert workflow_rollups and queue_rollups
    events_before = AuditEvent.objects.count()

    gone = [plain, with_child, child, approved, replayed, replay]
    kept = [recent, waiting, read_by_live, live_replay, restarted, restart, recent_parent, old_child]
    dry = runs_purge(older_than_days=DAYS, batch_size=1, dry_run=True)
    out = StringIO()
    call_command("purge_runs", "--older-than", str(DAYS), "--batch-size", "1", stdout=out)
    # The dry run named exactly what the purge then removed (a replay's original included, though the replay was
    # still there when the dry run reached it).
    assert sorted(pk for batch in dry.batches for pk in batch.run_ids) == sorted(run.pk for run in gone)

    assert exists(*gone) == [False] * len(gone), out.getvalue()
    assert exists(*kept) == [True] * len(kept), out.getvalue()
    gone_ids = [run.pk for run in gone]
    assert not StepRun.objects.filter(run_id__in=gone_ids).exists()
    assert not StepResult.objects.filter(run_id__in=gone_ids).exists()
    assert not InferenceCall.objects.filter(pk=plain_call.pk).exists()
    assert not ApprovalRequest.objects.filter(pk=item.pk).exists()
    assert not ApprovalDecision.objects.filter(request_id=item.pk).exists()
    assert not ApprovalActivity.objects.filter(request_id=item.pk).exists()
    # What stays is whole.
    assert ApprovalRequest.objects.filter(run=waiting).exists()
    assert StepRun.objects.filter(run=read_by_live).count() == 1

    # One event per batch that removed runs, naming what it removed; together they name every run removed.
    events = list(AuditEvent.objects.filter(verb=PURGED_VERB).order_by("id"))
    assert len(events) == AuditEvent.objects.count() - events_before
    assert len(events) == 5  # five top-level runs, one per batch (a child goes with its parent)
    purged: list[int] = []
    for event in events:
        data = json.loads(event.data)
        assert event.actor_id is None and data["count"] == data["removed"]["runs"]
        assert data["run_ids_sha256"] and data["first_run_id"] <= data["last_run_id"]
        purged += [pk for pk in gone_ids if data["first_run_id"] <= pk <= data["last_run_id"]]
    assert sorted(set(purged)) == sorted(gone_ids)
    assert "Batch 1: removed" in out.getvalue() and "model-call records" in out.getvalue()

    # The chain hashes the event rows, not their targets: events about removed runs still verify.
    assert AuditEvent.objects.filter(target_type="runs.run", target_id=str(plain.pk)).exists()
    report = audit_verify()
    assert report.intact, report.problems
    call_command("verify_audit", stdout=StringIO())

    # Rollups are aggregates: the purge keeps them, and a later rebuild of the purged days changes nothing.
    assert rollup_rows(WorkflowDayRollup) == workflow_rollups
    rebuilt = StringIO()
    since = local_day(timezone.now() - timedelta(days=310))
    until = local_day(timezone.now() - timedelta(days=100))
    call_command("dashboards_rebuild", "--since", since.isoformat(), "--until", until.isoformat(), stdout=rebuilt)
    assert "were kept as they stand" in rebuilt.getvalue()
    assert rollup_rows(WorkflowDayRollup) == workflow_rollups
    assert rollup_rows(QueueDayRollup) == queue_rollups

    # Once the live replay has finished and aged too, its original may go with it.
    drive(live_replay)
    age(live_replay, 200)
    runs_purge(older_than_days=DAYS)
    assert exists(read_by_live, live_replay) == [False, False]


def test_the_audit_event_digest_names_the_batch(analyst: Any, doubling: Any) -> None:
    runs = [finished(analyst, doubling, days=100, n=n) for n in (1, 2, 3)]
    report = runs_purge(older_than_days=DAYS, batch_size=10)
    [batch] = report.batches
    assert batch.run_ids == sorted(run.pk for run in runs)
    event = AuditEvent.objects.get(verb=PURGED_VERB)
    assert f'"run_ids_sha256":"{run_ids_digest(run.pk for run in runs)}"' in event.data
    assert event.target_id == "" and event.stream == "system"


def test_a_dry_run_counts_and_changes_nothing(analyst: Any, doubling: Any) -> None:
    old = finished(analyst, doubling, days=100)
    record_call(old)
    counts = (Run.objects.count(), StepRun.objects.count(), InferenceCall.objects.count(), AuditEvent.objects.count())
    out = StringIO()
    call_command("purge_runs", "--older-than", str(DAYS), "--dry-run", stdout=out)
    assert (
        Run.objects.count(),
        StepRun.objects.count(),
        InferenceCall.objects.count(),
        AuditEvent.objects.count(),
    ) == counts
    text = out.getvalue()
    assert "Batch 1: would remove 1 runs" in text and "1 step runs" in text and "1 model-call records" in text
    assert "Nothing was changed." in text


def test_workflow_limits_the_purge_to_its_runs(analyst: Any, team: Any, doubling: Any) -> None:
    other = publish(analyst, team, "Other", {"steps": [transform("t", x="input.n")]})
    mine, theirs = finished(analyst, doubling, days=100), finished(analyst, other, days=100)
    call_command("purge_runs", "--older-than", str(DAYS), "--workflow", doubling.slug, stdout=StringIO())
    assert exists(mine, theirs) == [False, True]


def test_a_finished_evaluation_keeps_its_results_and_a_scoring_one_its_runs(analyst: Any, doubling: Any) -> None:
    scored, scoring = finished(analyst, doubling, days=100, n=1), finished(analyst, doubling, days=100, n=2)
    suite = EvaluationSuite.objects.create(workflow=doubling, created_by=analyst, updated_by=analyst)
    version = doubling.versions.get()
    reports = {
        state: EvaluationReport.objects.create(
            suite=suite,
            workflow=doubling,
            version=version,
            version_number=1,
            draft_revision=1,
            content_checksum="c",
            suite_checksum="s",
            started_by=analyst,
            state=state,
        )
        for state in (EvaluationReport.State.PASSED, EvaluationReport.State.RUNNING)
    }
    done = EvaluationResult.objects.create(report=reports["passed"], case_name="a", run=scored, passed=True)
    EvaluationResult.objects.create(report=reports["running"], case_name="b", run=scoring)
    report = runs_purge(older_than_days=DAYS)
    assert exists(scored, scoring) == [False, True]
    done.refresh_from_db()
    assert done.run is None and done.passed is True
    assert report.kept == {"an evaluation report is still scoring it": 1}


@pytest.mark.django_db(transaction=True)
def test_a_run_someone_holds_is_skipped_and_taken_by_the_next_purge(analyst: Any, doubling: Any) -> None:
    """The batch takes its runs with SKIP LOCKED (the lock-order rule's exemption): a run another transaction holds,
    as a replay or restart starting from it does, waits for a later purge instead of making the purge wait."""
    held, free = finished(analyst, doubling, days=100, n=1), finished(analyst, doubling, days=100, n=2)
    owner = connection.settings_dict
    with psycopg.connect(
        host=owner["HOST"], port=owner["PORT"], dbname=owner["NAME"], user=owner["USER"], password=owner["PASSWORD"]
    ) as other:
        other.execute("SELECT id FROM runs_run WHERE id = %s FOR UPDATE", [held.pk])
        out = StringIO()
        call_command("purge_runs", "--older-than", str(DAYS), stdout=out)
        assert exists(held, free) == [True, False]
        assert "held back 1 (in use right now; a later purge takes it)" in out.getvalue()
        other.rollback()
    runs_purge(older_than_days=DAYS)
    assert exists(held) == [False]


def test_every_link_to_runs_and_step_runs_is_handled_by_the_purge() -> None:
    """A new foreign key to Run or StepRun must be given a fate in the purge (and listed here): otherwise the
    batch's commit fails on it. Each entry says what the purge does."""
    handled = {
        # the runs app's own rows: removed with the run
        "runs.StepRun.run": "removed",
        "runs.StepResult.run": "removed",
        "runs.StepResult.step_run": "removed",
        "runs.Timer.run": "removed",
        "runs.Timer.step_run": "removed",
        "runs.Incident.run": "removed",
        "runs.Incident.step_run": "removed",
        "runs.EffectRecord.run": "removed",
        "runs.RunDocument.run": "removed (which input documents the run named)",
        "runs.StepRun.parent": "removed (tool calls of a removed step)",
        "runs.StepRun.reused_from": "holds the original back while the reusing run stays",
        "runs.Run.restarted_from": "holds the original back while the restart stays",
        "runs.Run.replay_of": "holds the original back while the replay stays",
        "runs.Run.parent_step_run": "child runs go with their parent, never alone",
        "runs.TriggerFiring.run": "unlinked (the firing history stays)",
        "runs.WebhookReceipt.run": "unlinked",
        "approvals.ApprovalRequest.run": "removed with its decisions, activities, timers and notifications",
        "approvals.ApprovalRequest.step_run": "removed (as above)",
        "evaluations.EvaluationResult.run": "unlinked; a report still scoring holds the run back",
        "assistants.ChatMessage.run": "unlinked after its answer text is filled in",
    }
    links = {
        f"{model._meta.label}.{field.name}"
        for model in django_apps.get_models()
        for field in model._meta.get_fields()
        if field.concrete and field.is_relation and field.related_model in (Run, StepRun)
    }
    assert links == set(handled)
    assert {"approvals", "evaluations", "assistants", "dashboards"} <= set(RUN_DEPENDENTS)


CONTRACT_INPUT = {
    "type": "object",
    "properties": {
        "contract": {"type": "object", "format": "document"},
        "annex": {"type": "object", "format": "document"},
    },
    "required": ["contract"],
}


@pytest.fixture
def contracts(analyst: Any, team: Any) -> Any:
    """A workflow whose input is two documents (a contract and an optional annex)."""
    workflow = workflow_create(actor=analyst, name="Contracts", team=team)
    graph = {"steps": [transform("read", pages="input.contract.pages")]}
    version = workflow_version_create(actor=analyst, workflow=workflow, graph=graph, input_schema=CONTRACT_INPUT)
    workflow_version_publish(actor=analyst, version=version)
    return workflow


def uploaded(actor: Any, name: str, *, days: float, pdf: bool = False) -> InputDocument:
    """A stored document (a text file, or a PDF), uploaded `days` ago."""
    text = f"Contract {name}: Jane Doe, 1 Main St."
    if pdf:
        document = document_store(actor=actor, name=f"{name}.pdf", data=pdf_of([text]))
    else:
        document = document_store(actor=actor, name=f"{name}.txt", data=text.encode())
    InputDocument.objects.filter(pk=document.pk).update(created_at=timezone.now() - timedelta(days=days))
    return document


def contract_run(actor: Any, workflow: Any, *, days: float, contract: Any, annex: Any = None) -> Run:
    inputs = {"contract": document_input_value(contract)}
    if annex is not None:
        inputs["annex"] = document_input_value(annex)
    run = drive(run_start(actor=actor, workflow=workflow, inputs=inputs)[0])
    assert run.status == Run.Status.SUCCEEDED, run.error
    return age(run, days)


def page_images(document: InputDocument) -> list[Path]:
    """The page images of `document` this host has cached (rendering them first while it is stored)."""
    if InputDocument.objects.filter(pk=document.pk).exists():
        document_page_png(document, 1)
    return sorted((Path(settings.AIOS_DATA_DIR) / "page-images").glob(f"*/{document.sha256}-*.png"))


def present(*documents: InputDocument) -> list[bool]:
    stored = set(InputDocument.objects.filter(pk__in=[d.pk for d in documents]).values_list("pk", flat=True))
    return [document.pk in stored for document in documents]


def test_input_documents_go_once_no_run_that_stays_names_them(
    analyst: Any, contracts: Any, django_capture_on_commit_callbacks: Any
) -> None:
    alone = uploaded(analyst, "alone", days=200, pdf=True)  # named only by an old run: goes with it
    shared = uploaded(analyst, "shared", days=200, pdf=True)  # named by an old run and a recent one: stays
    annex = uploaded(analyst, "annex", days=200)  # named by an old run that goes and one that is held back
    young = uploaded(analyst, "young", days=30)  # its run is old, but it was uploaded after the cut-off
    forgotten = uploaded(analyst, "forgotten", days=200)  # never used: the last pass takes it
    fresh = uploaded(analyst, "fresh", days=1)  # uploaded, not used yet: its run is probably about to start
    old_run = contract_run(analyst, contracts, days=100, contract=alone, annex=annex)
    contract_run(analyst, contracts, days=120, contract=shared)
    recent = contract_run(analyst, contracts, days=1, contract=shared)
    contract_run(analyst, contracts, days=110, contract=young)
    held = contract_run(analyst, contracts, days=150, contract=annex)
    live_replay = run_replay(run=held, actor=analyst)  # running: it and its original stay, and so does the annex
    assert RunDocument.objects.filter(run=live_replay, document=annex).exists()
    gone, kept = [alone, forgotten], [shared, annex, young, fresh]
    # A reviewer saw both PDFs' pages: this host cached them as images.
    images = [page_images(document) for document in (alone, shared)]
    assert images[0] and images[1]

    dry = runs_purge(older_than_days=DAYS, dry_run=True)
    assert dry.document_ids == sorted(document.pk for document in gone)
    assert dry.unused_document_ids == [forgotten.pk]
    assert present(*gone, *kept) == [True] * 6

    out = StringIO()
    with django_capture_on_commit_callbacks(execute=True):  # the batches' commits
        call_command("purge_runs", "--older-than", str(DAYS), stdout=out)
    assert present(*gone) == [False, False], out.getvalue()
    assert present(*kept) == [True] * 4, out.getvalue()
    assert exists(old_run, recent, held) == [False, True, True]
    assert not RunDocument.objects.filter(run=old_run).exists()
    assert page_images(alone) == [] and page_images(shared) == images[1]
    assert "Removed 1 input documents that no run names, uploaded before" in out.getvalue()
    assert "1 input documents" in out.getvalue().split("Removed 1 input documents that")[0]

    # The batch that removed the old run names the document that went with it; the last pass has its own event.
    [batch_event] = [
        data
        for data in (json.loads(e.data) for e in AuditEvent.objects.filter(verb=PURGED_VERB))
        if data["first_run_id"] <= old_run.pk <= data["last_run_id"]
    ]
    assert batch_event["removed"]["input documents"] == 1
    assert batch_event["document_ids_sha256"] == run_ids_digest([alone.pk])
    assert batch_event["first_document_id"] == batch_event["last_document_id"] == alone.pk
    unused_event = json.loads(AuditEvent.objects.get(verb=DOCUMENTS_PURGED_VERB).data)
    assert (unused_event["count"], unused_event["first_document_id"]) == (1, forgotten.pk)
    assert unused_event["document_ids_sha256"] == run_ids_digest([forgotten.pk])
    assert audit_verify().intact

    # Once the replay has finished and aged too, the annex goes with the last run that named it.
    drive(live_replay)
    age(live_replay, 140)
    report = runs_purge(older_than_days=DAYS)
    assert exists(held, live_replay) == [False, False]
    assert report.document_ids == [annex.pk] and present(annex, shared, young, fresh) == [False, True, True, True]


def test_a_purge_of_one_workflow_takes_only_the_documents_its_runs_named(
    analyst: Any, contracts: Any, doubling: Any
) -> None:
    named = uploaded(analyst, "named", days=200)
    forgotten = uploaded(analyst, "forgotten", days=200)
    contract_run(analyst, contracts, days=100, contract=named)
    call_command("purge_runs", "--older-than", str(DAYS), "--workflow", doubling.slug, stdout=StringIO())
    assert present(named, forgotten) == [True, True]
    out = StringIO()
    call_command("purge_runs", "--older-than", str(DAYS), "--workflow", contracts.slug, stdout=out)
    assert present(named, forgotten) == [False, True], out.getvalue()
    assert "outbox" not in out.getvalue()


@pytest.mark.django_db(transaction=True)
def test_a_document_a_starting_run_names_is_not_purged_under_it(analyst: Any, contracts: Any) -> None:
    """Inserting a run that names a document key-share locks the document until the run commits; the purge takes
    documents with SKIP LOCKED, so it passes over one named by a run that is starting right now."""
    template = contract_run(analyst, contracts, days=1, contract=uploaded(analyst, "template", days=1))
    forgotten = uploaded(analyst, "forgotten", days=200)
    owner = connection.settings_dict
    with psycopg.connect(
        host=owner["HOST"], port=owner["PORT"], dbname=owner["NAME"], user=owner["USER"], password=owner["PASSWORD"]
    ) as other:
        columns = [
            field.column
            for field in Run._meta.concrete_fields
            if field.column not in {"id", "inputs"} and field.column != "parent_step_run_id"
        ]
        listed = ", ".join(columns)
        other.execute(
            f"INSERT INTO runs_run (inputs, {listed}) SELECT %s, {listed} FROM runs_run WHERE id = %s",
            [psycopg.types.json.Jsonb({"contract": document_input_value(forgotten)}), template.pk],
        )
        out = StringIO()
        call_command("purge_runs", "--older-than", str(DAYS), stdout=out)
        assert present(forgotten) == [True]
        assert "Removed 0 input documents that no run names" in out.getvalue()
        other.commit()
    # Started: the run names it now, so it stays however old.
    runs_purge(older_than_days=DAYS)
    assert present(forgotten) == [True]


def test_the_migration_records_what_existing_runs_name(analyst: Any, contracts: Any) -> None:
    """The migration that introduced RunDocument filled it for the runs before it by the rule its trigger
    follows: only document fields of the run's version's schema, and only ids of stored documents."""
    contract, annex = uploaded(analyst, "c", days=0), uploaded(analyst, "a", days=0)
    both = contract_run(analyst, contracts, days=0, contract=contract, annex=annex)
    one = contract_run(analyst, contracts, days=0, contract=contract)
    recorded = set(RunDocument.objects.values_list("run_id", "document_id"))
    assert recorded == {(both.pk, contract.pk), (both.pk, annex.pk), (one.pk, contract.pk)}
    # Neither a field the schema does not call a document nor an id that names no document is a reference.
    Run.objects.filter(pk=one.pk).update(inputs={**one.inputs, "note": {"document": annex.pk}})
    stray = contract_run(analyst, contracts, days=0, contract=contract)
    Run.objects.filter(pk=stray.pk).update(inputs={"contract": {**stray.inputs["contract"], "document": 10**12}})
    RunDocument.objects.all().delete()
    migration = importlib.import_module("apps.runs.migrations.0012_run_documents_retention")
    with connection.cursor() as cursor:
        cursor.execute(migration.RUN_DOCUMENTS_BACKFILL)
    assert set(RunDocument.objects.values_list("run_id", "document_id")) == recorded


def test_relayed_outbox_rows_older_than_the_cut_off_go_and_unrelayed_ones_stay(analyst: Any, doubling: Any) -> None:
    long_ago = timezone.now() - timedelta(days=200)
    rows = {
        name: Outbox.objects.create(task="runs.execute_step", queue="engine", args=[0])
        for name in ("relayed long ago", "never relayed", "relayed late", "recent")
    }
    Outbox.objects.filter(pk=rows["relayed long ago"].pk).update(created_at=long_ago, relayed_at=long_ago)
    Outbox.objects.filter(pk=rows["never relayed"].pk).update(created_at=long_ago)
    Outbox.objects.filter(pk=rows["relayed late"].pk).update(created_at=long_ago, relayed_at=timezone.now())
    Outbox.objects.filter(pk=rows["recent"].pk).update(relayed_at=timezone.now())

    def left() -> list[str]:
        pks = set(Outbox.objects.values_list("pk", flat=True))
        return [name for name, row in rows.items() if row.pk in pks]

    call_command("purge_runs", "--older-than", str(DAYS), "--workflow", doubling.slug, stdout=StringIO())
    assert left() == list(rows)
    dry = StringIO()
    call_command("purge_runs", "--older-than", str(DAYS), "--dry-run", stdout=dry)
    assert "Would remove 1 outbox rows relayed before" in dry.getvalue() and left() == list(rows)
    out = StringIO()
    call_command("purge_runs", "--older-than", str(DAYS), stdout=out)
    assert "Removed 1 outbox rows relayed before" in out.getvalue()
    assert left() == ["never relayed", "relayed late", "recent"]


def test_a_daily_purge_finds_its_runs_through_an_index(analyst: Any, doubling: Any) -> None:
    """A purge that runs every day meets a few runs past the cut-off under many newer ones: its selection must
    reach them through an index, not by walking back through every newer run."""
    template = finished(analyst, doubling, days=1)
    now = timezone.now()
    with connection.cursor() as cursor:
        # 6,000 top-level runs finished over the last 90 days, and 30 just past the cut-off, oldest first.
        cursor.execute(
            """
            INSERT INTO runs_run (workflow_id, version_id, inputs, status, trigger, initiator_id, idempotency_key,
                request_hash, error, restart_step_key, total_prompt_tokens, total_generated_tokens, total_cost,
                traceparent, mode, overrides, test_settings, created_at, started_at, finished_at)
            SELECT workflow_id, version_id, inputs, status, trigger, initiator_id, '', '', '', '', 0, 0, 0, '', mode,
                '{}', '{}', finish, finish, finish
            FROM runs_run, LATERAL (
                SELECT %s + make_interval(secs => g * 1296.0) AS finish FROM generate_series(1, 6030) g
            ) times
            WHERE id = %s
            """,
            [now - timedelta(days=DAYS, seconds=30.5 * 1296), template.pk],
        )
        cursor.execute("ANALYZE runs_run")
        cutoff = now - timedelta(days=DAYS)
        assert purge_candidates(cutoff).count() == 30
        sql, params = purge_candidates(cutoff).values_list("pk", flat=True)[:DEFAULT_BATCH_SIZE].query.sql_with_params()
        cursor.execute("EXPLAIN " + sql, params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "run_finished_top_level_idx" in plan, plan


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--older-than", "-1"], "DAYS must be 0 or more, not -1."),
        (["--older-than", "30", "--workflow", "no-such-workflow"], "There is no workflow with the slug"),
        (["--older-than", "30", "--batch-size", "0"], "The batch size must be from 1 to"),
    ],
)
def test_bad_arguments_are_refused_with_a_reason(arguments: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        call_command("purge_runs", *arguments, stdout=StringIO())


def manage(*arguments: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "manage.py"), *arguments],
        env=service_env(**env),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_command_exits_non_zero_on_bad_arguments_and_without_the_owner_role() -> None:
    bad = manage("purge_runs", "--older-than", "-3")
    assert bad.returncode != 0 and "DAYS must be 0 or more" in bad.stderr, bad.stdout + bad.stderr
    # The application role as "owner": it may not delete append-only records, and the command says what to do.
    application = database_url_as(database_from_url("DATABASE_URL", settings.DATABASE_URL))
    assert connection.settings_dict["USER"] not in application.split("@")[0]
    refused = manage("purge_runs", "--older-than", "30", DATABASE_OWNER_URL=application)
    assert refused.returncode != 0, refused.stdout + refused.stderr
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "DATABASE_OWNER_URL" in lines[0] and "owner" in lines[0], refused.stderr
    # A dry run deletes nothing, so the application role may run it.
    dry = manage("purge_runs", "--older-than", "30", "--dry-run", DATABASE_OWNER_URL=application)
    assert dry.returncode == 0 and "Nothing was changed." in dry.stdout, dry.stdout + dry.stderr
