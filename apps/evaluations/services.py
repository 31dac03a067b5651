"""Writes of evaluation suites: the suite and its cases, running it on a workflow's draft, scoring a report when
its case runs have finished, and the publish gate (with an admin's audited override).

A report runs one test run per case through `run_test_start` (model steps call the configured endpoint for real;
steps that reach the outside world or ask a person are simulated), and is scored by `evaluation_report_score`
once every case run has finished: the periodic task calls it for every running report, and so may anyone
else, since scoring claims the report by a conditional update and happens once.
"""

from __future__ import annotations

import math
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from apps.accounts.models import User
from apps.accounts.selectors import user_roles
from apps.approvals.models import ApprovalDecision
from apps.audit.services import audit_record
from apps.core.exceptions import ApplicationError, Conflict, Forbidden, ValidationFailed
from apps.evaluations.models import (
    EvaluationCase,
    EvaluationGateOverride,
    EvaluationGatePass,
    EvaluationReport,
    EvaluationResult,
    EvaluationSuite,
)
from apps.evaluations.outputs import checkable_steps, expected_problems, reader_for, values_match
from apps.evaluations.selectors import (
    content_checksum,
    report_newest_for_content,
    report_passing_for,
    suite_baseline,
    suite_checksum,
    suite_criteria,
    suite_fields,
    suite_for,
    suite_graph,
)
from apps.inference.models import InferenceCall
from apps.runs.draft_tests import run_test_start
from apps.runs.models import Run, StepRun
from apps.workflows.graph import graph_checksum, graph_errors
from apps.workflows.input_schema import input_validate
from apps.workflows.models import Workflow, WorkflowVersion
from apps.workflows.selectors import workflow_can_edit, workflow_draft_for
from apps.workflows.services import DraftConflict, GateVerdict, PublishRoute, workflow_version_publish
from apps.workflows.uses import uses_problems
from apps.workflows.validation import version_problems

MAX_CASES = 200
MAX_NAME_LENGTH = 120
# A case run still unfinished this long after its report started will not finish by itself: the report is
# closed as "could not finish" rather than waiting for ever (the gate stays shut).
REPORT_TIMEOUT = timedelta(minutes=30)
ACCURACY_PLACES = Decimal("0.01")


def _require_edit(actor: User, workflow: Workflow) -> None:
    if not workflow_can_edit(actor, workflow):
        raise Forbidden("You may read this workflow's evaluation suite but not change or run it.")


def _percent(value: Any, field: str) -> Decimal:
    try:
        number = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise ValidationFailed("Check the criteria.", fields={field: ["Give a percentage from 0 to 100."]}) from None
    if not number.is_finite() or number < 0 or number > 100:
        raise ValidationFailed("Check the criteria.", fields={field: ["Give a percentage from 0 to 100."]})
    # copy_abs: "-0" is stored and shown as 0.
    return number.quantize(ACCURACY_PLACES).copy_abs()


def _limit(value: Any, field: str, unit: str, places: Decimal) -> Decimal | None:
    """A positive limit below a million, rounded to the column's `places` (so what is stored is what was checked:
    999999.9999999 rounds to a million and is refused, never a database error)."""
    if value is None or str(value).strip() == "":
        return None
    try:
        number = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise ValidationFailed("Check the criteria.", fields={field: [f"Give {unit}, or leave it empty."]}) from None
    refused = ValidationFailed(
        "Check the criteria.", fields={field: [f"Give {unit} above 0 and below 1000000, or leave it empty."]}
    )
    # The range first: quantizing 1e309 would overflow the decimal context.
    if not number.is_finite() or number <= 0 or number >= LIMIT_CEILING:
        raise refused
    number = number.quantize(places)
    if number <= 0 or number >= LIMIT_CEILING:
        raise refused
    return number


LIMIT_CEILING = Decimal("1000000")
COST_PLACES = Decimal("0.000001")  # EvaluationSuite.max_cost_per_case: 12 digits, 6 places
LATENCY_PLACES = Decimal("0.01")  # EvaluationSuite.max_latency_p95_seconds: 9 digits, 2 places


def _suite_state(suite: EvaluationSuite) -> dict[str, Any]:
    """Everything that decides what the gate lets through, as plain values (an audit event's before and after)."""
    return {"step": suite.step_key, "enabled": suite.enabled, **suite_criteria(suite)}


def _loosenings(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What a change of an enabled suite's settings lets through that it did not before, one sentence each
    (empty when the change only tightens or keeps the criteria)."""
    found: list[str] = []
    if before["enabled"] and not after["enabled"]:
        found.append("switching the gate off")
    if before["step"] != after["step"]:
        found.append("changing the output checked")
    if Decimal(after["min_accuracy"]) < Decimal(before["min_accuracy"]):
        found.append("lowering the minimum accuracy")
    for name, value in before["field_min_accuracy"].items():
        now = after["field_min_accuracy"].get(name)
        if now is None:
            found.append(f'removing the minimum accuracy of "{name}"')
        elif Decimal(now) < Decimal(value):
            found.append(f'lowering the minimum accuracy of "{name}"')
    if before["require_schema_valid"] and not after["require_schema_valid"]:
        found.append("no longer requiring outputs to match the step's schema")
    for key, words in (("max_cost_per_case", "cost"), ("max_latency_p95_seconds", "time")):
        if before[key] is None:
            continue
        if after[key] is None:
            found.append(f"removing the highest {words} per case")
        elif Decimal(after[key]) > Decimal(before[key]):
            found.append(f"raising the highest {words} per case")
    return found


def _is_admin(actor: User) -> bool:
    return "admin" in user_roles(actor)


class SuiteLoosening(Forbidden):
    """A change that would let through what an enabled suite refuses: only an admin may make it. `extra` has
    "loosened", one sentence per loosening."""


def _refuse_loosening(actor: User, loosened: list[str], what: str) -> None:
    # The analyst the gate constrains must not be able to switch it off, publish, and switch it back.
    if loosened and not _is_admin(actor):
        raise SuiteLoosening(
            f"Only an admin may {what}: it loosens the evaluation suite that gates publishing "
            f"({'; '.join(loosened)}). Ask an admin to make this change; tightening the criteria and adding cases "
            "stay open to you.",
            extra={"loosened": loosened},
        )


# --- the suite and its cases -------------------------------------------------------------------------------------


@transaction.atomic
def evaluation_suite_save(
    *,
    actor: User,
    workflow: Workflow,
    step_key: str,
    min_accuracy: Any,
    field_min_accuracy: dict[str, Any] | None = None,
    require_schema_valid: bool = True,
    max_cost_per_case: Any = None,
    max_latency_p95_seconds: Any = None,
    enabled: bool = True,
) -> EvaluationSuite:
    """Create or change the workflow's suite: the checked step ("" for the run's output) and the criteria.

    The step must be one whose output has named fields (extraction, classification, generation, a transform) in
    the draft (or the newest version); per-field minimums must name its fields. Cases whose expected fields the
    new step does not output are refused (change or delete them first), so no case silently stops checking.
    """
    _require_edit(actor, workflow)
    step_key = step_key.strip()
    graph = suite_graph(workflow)
    found = reader_for(graph, step_key)
    if found is None:
        names = ", ".join(f'"{step.get("key")}"' for step in checkable_steps(graph)) or "none"
        raise ValidationFailed(
            "Choose the step whose output is checked.",
            fields={"step_key": [f'"{step_key}" is not a step whose output has fields (those that do: {names}).']},
        )
    reader, step = found
    fields = reader.fields(step)
    errors: dict[str, list[str]] = {}

    def collected(parse: Any, *args: Any) -> Any:
        # Every wrong value is named at once, so the analyst fixes the form in one pass.
        try:
            return parse(*args)
        except ValidationFailed as error:
            errors.update(error.fields)
            return None

    minimum = collected(_percent, min_accuracy, "min_accuracy")
    per_field: dict[str, str] = {}
    for name, value in (field_min_accuracy or {}).items():
        if value is None or str(value).strip() == "":
            continue
        if fields is not None and name not in {f.name for f in fields}:
            errors[f"field_min_accuracy.{name}"] = [f'"{name}" is not a field of the checked output.']
            continue
        percent = collected(_percent, value, f"field_min_accuracy.{name}")
        if percent is not None:
            per_field[name] = str(percent)
    cost = collected(_limit, max_cost_per_case, "max_cost_per_case", "a cost", COST_PLACES)
    latency = collected(
        _limit, max_latency_p95_seconds, "max_latency_p95_seconds", "a number of seconds", LATENCY_PLACES
    )
    if errors:
        raise ValidationFailed("Check the criteria.", fields=errors)
    suite = EvaluationSuite.objects.select_for_update().filter(workflow=workflow).first()
    created = suite is None
    if suite is None:
        suite = EvaluationSuite(workflow=workflow, created_by=actor)
    elif step_key != suite.step_key:
        stranded = [case.name for case in suite.cases.all() if expected_problems(fields, case.expected)]
        if stranded:
            raise ValidationFailed(
                "The checked step cannot change yet.",
                fields={
                    "step_key": [f"These cases expect fields the new step does not output: {', '.join(stranded)}."]
                },
            )
    before = _suite_state(suite) if not created else {}
    suite.step_key = step_key
    suite.min_accuracy = minimum
    suite.field_min_accuracy = per_field
    suite.require_schema_valid = bool(require_schema_valid)
    suite.max_cost_per_case = cost
    suite.max_latency_p95_seconds = latency
    suite.enabled = bool(enabled)
    after = _suite_state(suite)
    loosened = _loosenings(before, after) if before and before["enabled"] else []
    _refuse_loosening(actor, loosened, "make this change")
    if _is_admin(actor):
        # An admin saving the settings stands behind the cases the suite has now: they become its established
        # cases while no passing report let the published version through (selectors.suite_baseline).
        suite.admin_reviewed_at = timezone.now()
    suite.updated_by = actor
    suite.save()
    audit_record(
        actor=actor,
        verb="evaluation.suite_created" if created else "evaluation.suite_changed",
        target=suite,
        data={
            "workflow": workflow.slug,
            "step": step_key,
            "enabled": suite.enabled,
            "criteria": suite_criteria(suite),
            "after": after,
            **({"before": before, "loosened": loosened} if before else {}),
        },
    )
    return suite


def evaluation_case_check(
    suite: EvaluationSuite, *, name: str, inputs: Any, expected: Any
) -> tuple[str, dict[str, Any]]:
    """The trimmed name and cleaned inputs of a case, or ValidationFailed naming every field that is wrong (saves
    nothing)."""
    errors: dict[str, list[str]] = {}
    name = name.strip()
    if not name:
        errors["name"] = ["Give the case a name."]
    elif len(name) > MAX_NAME_LENGTH:
        errors["name"] = [f"At most {MAX_NAME_LENGTH} characters."]
    version = workflow_draft_for(suite.workflow) or suite.workflow.versions.order_by("-number").first()
    cleaned: dict[str, Any] = {}
    if version is not None:
        cleaned, input_errors = input_validate(version.input_schema, inputs)
        errors.update({f"inputs.{field}": messages for field, messages in input_errors.items()})
    for field, messages in expected_problems(suite_fields(suite), expected).items():
        errors[field if field == "expected" else f"expected.{field}"] = messages
    if errors:
        first = next(iter(errors.values()))[0]
        raise ValidationFailed(f"The case was not saved: {first}", fields=errors)
    return name, cleaned


@transaction.atomic
def evaluation_case_save(
    *,
    actor: User,
    suite: EvaluationSuite,
    name: str,
    inputs: Any,
    expected: Any,
    case: EvaluationCase | None = None,
    source: str = EvaluationCase.Source.MANUAL,
    source_reference: str = "",
) -> EvaluationCase:
    """Add a case (or change `case`): its inputs must fit the workflow's run form, and its expected output the
    checked step's fields and types; refused otherwise with a message naming each wrong field."""
    _require_edit(actor, suite.workflow)
    name, cleaned = evaluation_case_check(suite, name=name, inputs=inputs, expected=expected)
    taken = suite.cases.filter(name=name)
    if case is not None:
        taken = taken.exclude(pk=case.pk)
    if taken.exists():
        raise ValidationFailed("The case was not saved.", fields={"name": [f'A case named "{name}" exists.']})
    if case is None:
        if suite.cases.count() >= MAX_CASES:
            raise Conflict(f"A suite holds at most {MAX_CASES} cases.")
        case = EvaluationCase.objects.create(
            suite=suite,
            name=name,
            inputs=cleaned,
            expected=expected,
            source=source,
            source_reference=source_reference,
            created_by=actor,
        )
        verb = "evaluation.case_added"
    else:
        if case.suite_id != suite.pk:
            raise ApplicationError("That case belongs to another suite.")
        if suite.enabled:
            # Changing what a case expects (or feeds in) is removing a check and adding another; adding expected
            # fields, or renaming, only tightens.
            kept = case.inputs == cleaned and all(
                name in expected and expected[name] == value for name, value in case.expected.items()
            )
            if not kept:
                _refuse_loosening(
                    actor,
                    [f'changing the inputs or expected values of the case "{case.name}"'],
                    "change what a case checks",
                )
        case.name, case.inputs, case.expected = name, cleaned, expected
        case.save(update_fields=["name", "inputs", "expected", "updated_at"])
        verb = "evaluation.case_changed"
    audit_record(
        actor=actor,
        verb=verb,
        target=suite,
        data={"case": case.pk, "name": name, "source": case.source, "fields": sorted(expected)},
    )
    return case


@transaction.atomic
def evaluation_case_delete(*, actor: User, case: EvaluationCase) -> None:
    """Remove a case (reports keep what they ran with)."""
    suite = case.suite
    _require_edit(actor, suite.workflow)
    if suite.enabled:
        _refuse_loosening(actor, [f'removing the case "{case.name}"'], "remove a case")
    audit_record(actor=actor, verb="evaluation.case_deleted", target=suite, data={"case": case.pk, "name": case.name})
    case.delete()


@transaction.atomic
def evaluation_cases_import_corrections(*, actor: User, suite: EvaluationSuite) -> tuple[int, list[str]]:
    """Add a case per reviewer's decision on this workflow's checked step that kept or corrected its data: the
    run's inputs, and the data as the reviewer left it (only the fields the step outputs). Decisions already
    imported are skipped. Returns (cases added, one line per decision skipped and why)."""
    _require_edit(actor, suite.workflow)
    fields = suite_fields(suite)
    known = None if fields is None else {field.name for field in fields}
    done = set(suite.cases.filter(source=EvaluationCase.Source.CORRECTIONS).values_list("source_reference", flat=True))
    decisions = (
        ApprovalDecision.objects.filter(request__run__workflow=suite.workflow, decision="approved")
        .select_related("request", "request__run")
        .order_by("created_at", "pk")
    )
    added, skipped = 0, []
    for decision in decisions:
        request = decision.request
        reference = f"decision {decision.pk}"
        if reference in done:
            continue
        if suite.step_key and request.review_step_key and request.review_step_key != suite.step_key:
            continue  # a decision about another step's output says nothing about this one
        data = decision.data_after if isinstance(decision.data_after, dict) else {}
        expected = {name: value for name, value in data.items() if known is None or name in known}
        expected = {name: value for name, value in expected.items() if not expected_problems(fields, {name: value})}
        if not expected:
            skipped.append(f"Decision {decision.pk}: no field of the checked output in the reviewed data.")
            continue
        try:
            evaluation_case_save(
                actor=actor,
                suite=suite,
                name=f"Correction {decision.pk} (run {request.run_id})",
                inputs=request.run.inputs,
                expected=expected,
                source=EvaluationCase.Source.CORRECTIONS,
                source_reference=reference,
            )
        except ApplicationError as error:
            skipped.append(f"Decision {decision.pk}: {error.message}")
            continue
        added += 1
    return added, skipped


@transaction.atomic
def evaluation_case_from_run(*, actor: User, suite: EvaluationSuite, run: Run, name: str = "") -> EvaluationCase:
    """A case from a recorded run of this workflow the actor may see: its inputs, and as the expected output the
    checked output as that run produced it (review it: a case only helps when its expectation is right)."""
    if run.workflow_id != suite.workflow_id:
        raise ApplicationError("That run belongs to another workflow.")
    if run.mode != Run.Mode.LIVE:
        # A test, replay or what-if run shows what a draft or a changed input would do, not what the process
        # should produce: taken as the expectation, a bad draft's own output would vouch for it.
        raise ApplicationError(
            f"Run {run.pk} is not a live run ({run.get_mode_display().lower()}): only a live run's output can "
            "become a case's expectation."
        )
    if run.status != Run.Status.SUCCEEDED:
        raise ApplicationError(f"Run {run.pk} did not succeed; choose a run that finished.")
    found = reader_for(run.graph_snapshot or run.version.graph, suite.step_key)
    if found is None:
        raise ApplicationError(f'Run {run.pk} has no step "{suite.step_key}" to take the expected output from.')
    reader, step = found
    output = _checked_output(run, suite.step_key)
    actual = reader.actual(step, output)
    fields = suite_fields(suite)
    expected = {key: value for key, value in actual.items() if not expected_problems(fields, {key: value})}
    return evaluation_case_save(
        actor=actor,
        suite=suite,
        name=name or f"Run {run.pk}",
        inputs=run.inputs,
        expected=expected,
        source=EvaluationCase.Source.RECORDED_RUN,
        source_reference=f"run {run.pk}",
    )


def _require_revision(draft: WorkflowVersion, expected_revision: int | None) -> None:
    if expected_revision is not None and expected_revision != draft.revision:
        raise DraftConflict(
            "The draft changed since you looked at it; review the changes, then publish again.",
            extra={"revision": draft.revision},
        )


# --- running a suite on the draft ----------------------------------------------------------------------------------


@transaction.atomic
def evaluation_report_start(
    *,
    actor: User,
    workflow: Workflow,
    publish: bool = False,
    publish_note: str = "",
    expected_revision: int | None = None,
) -> EvaluationReport:
    """Run the suite on the workflow's draft: one test run per case, and a report that is scored when they have
    all finished. With `publish`, the draft is published as `actor` with `publish_note` when the report passes.

    A report already running on the same content and suite is returned instead of starting a second one (a
    double click, two tabs), taking over the publish request when one is made. With `expected_revision`, a draft
    that changed since the caller looked at it is refused (DraftConflict).
    """
    _require_edit(actor, workflow)
    suite = suite_for(workflow)
    if suite is None:
        raise ApplicationError("This workflow has no evaluation suite yet.")
    # The lock order of every draft write: the workflow row, then the version row.
    Workflow.objects.select_for_update().filter(pk=workflow.pk).first()
    draft = WorkflowVersion.objects.select_for_update().filter(workflow=workflow, state="draft").first()
    if draft is None:
        raise ApplicationError("This workflow has no draft to evaluate.")
    _require_revision(draft, expected_revision)
    cases = list(suite.cases.order_by("name", "pk"))
    if not cases:
        raise ApplicationError("The suite has no cases: add at least one before running it.")
    if reader_for(draft.graph, suite.step_key) is None:
        raise ApplicationError(
            f'The draft has no step "{suite.step_key}" whose output can be checked: choose the step again.'
        )
    checksum, suite_digest = content_checksum(draft), suite_checksum(suite)
    running = EvaluationReport.objects.filter(
        suite=suite, content_checksum=checksum, suite_checksum=suite_digest, state=EvaluationReport.State.RUNNING
    ).first()
    if running is not None:
        if publish:
            running.publish_requested, running.publish_note = True, publish_note.strip()[:5000]
            running.publish_requested_by = actor
            running.save(update_fields=["publish_requested", "publish_note", "publish_requested_by"])
        return running
    # What would stop every case's run is refused now, with the reason, rather than after the commit.
    refused = graph_errors(draft.graph) or uses_problems(actor, draft.graph, workflow=workflow, only=None)
    if refused:
        raise ApplicationError(
            "The suite cannot run on this draft: fix its problems first.", extra={"problems": refused}
        )
    for case in cases:
        _, errors = input_validate(draft.input_schema, case.inputs)
        if errors:
            raise ApplicationError(
                f'Case "{case.name}" cannot run on this draft: its inputs do not fit the draft\'s run form.',
                extra={"fields": errors},
            )
    report = EvaluationReport.objects.create(
        suite=suite,
        workflow=workflow,
        version=draft,
        version_number=draft.number,
        draft_revision=draft.revision,
        content_checksum=checksum,
        suite_checksum=suite_digest,
        step_key=suite.step_key,
        criteria=_report_criteria(suite, cases),
        started_by=actor,
        publish_requested=publish,
        publish_requested_by=actor if publish else None,
        publish_note=publish_note.strip()[:5000],
    )
    EvaluationResult.objects.bulk_create(
        EvaluationResult(report=report, case=case, case_name=case.name, inputs=case.inputs, expected=case.expected)
        for case in cases
    )
    audit_record(
        actor=actor,
        verb="evaluation.report_started",
        target=report,
        data={
            "workflow": workflow.slug,
            "version": draft.number,
            "revision": draft.revision,
            "checksum": checksum,
            "cases": len(cases),
            "publish": publish,
        },
    )
    # Each case's run starts after this commits, one transaction per run: a transaction locks at most one run,
    # and this one already holds the workflow and draft locks. Should this process die first, the periodic
    # scoring task starts what is left (see evaluation_reports_score_due).
    report_id = report.pk
    transaction.on_commit(lambda: evaluation_report_runs_start(report_id=report_id), robust=True)
    return report


def _report_criteria(suite: EvaluationSuite, cases: list[EvaluationCase]) -> dict[str, Any]:
    """The criteria a report keeps, with the suite's established cases ("baseline": their ids and where they come
    from, in words) when they are some but not all of its cases: the report is then scored over them as well as
    over every case (see selectors.suite_baseline for the rule)."""
    criteria = suite_criteria(suite)
    ids, words = suite_baseline(suite)
    present = {case.pk for case in cases}
    established = [pk for pk in ids if pk in present]
    if established and len(established) < len(present):
        criteria["baseline"] = {"cases": established, "source": words}
    return criteria


# A report's case runs normally start right after it commits; the periodic task starts those still waiting this
# long after (the process that should have started them died).
RUN_START_GRACE = timedelta(seconds=60)


class _NotStarted(Exception):
    """A case's run was started by someone else (`reason` empty), or must not start (`reason` says why)."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


def evaluation_report_runs_start(*, report_id: int) -> int:
    """Start the test run of each case of a running report that has none yet, each in its own transaction;
    returns how many this call started. Safe to repeat and to run alongside itself: a result's run is set once, by
    a conditional update, and a run whose claim lost is rolled back with it."""
    started = 0
    pending = EvaluationResult.objects.filter(
        report_id=report_id, report__state=EvaluationReport.State.RUNNING, run__isnull=True, start_error=""
    )
    for result_id in pending.order_by("case_name", "pk").values_list("pk", flat=True):
        if evaluation_result_run_start(result_id=result_id):
            started += 1
    return started


def evaluation_result_run_start(*, result_id: int) -> bool:
    """Start one case's test run, on the content its report is keyed on and without pinned test data, as the
    person who started the report; a case that cannot start is recorded as failed, with the reason. Returns
    whether this call started the run."""
    result = (
        EvaluationResult.objects.select_related("report", "report__workflow", "report__started_by")
        .filter(pk=result_id, run__isnull=True, start_error="")
        .first()
    )
    if result is None or result.report.state != EvaluationReport.State.RUNNING:
        return False
    report = result.report
    try:
        with transaction.atomic():
            try:
                # Without the pinned test data: pins are not part of the content the gate is keyed on, so a step
                # pinned to the expected values would pass a draft that gets them wrong.
                run = run_test_start(
                    actor=report.started_by, workflow=report.workflow, inputs=result.inputs, use_pinned=False
                )
            except ApplicationError as error:
                raise _NotStarted(f"The case's run could not start: {error.message}") from error
            # The draft is edited in place: the run must execute the content the report is about, or the case
            # proves nothing (and the report is failed rather than silently about other content).
            draft = WorkflowVersion.objects.get(pk=report.version_id)
            if draft.pk != run.version_id or graph_checksum(run.graph_snapshot or {}, draft.input_schema) != (
                report.content_checksum
            ):
                raise _NotStarted("The draft changed before the case's run started, so it was not run.")
            if not EvaluationResult.objects.filter(pk=result.pk, run__isnull=True, start_error="").update(run=run):
                raise _NotStarted()  # started meanwhile by another caller: this run is rolled back
    except _NotStarted as refusal:
        if refusal.reason:
            _result_not_started(result, refusal.reason)
        return False
    return True


@transaction.atomic
def _result_not_started(result: EvaluationResult, reason: str) -> None:
    claimed = EvaluationResult.objects.filter(pk=result.pk, run__isnull=True, start_error="").update(
        start_error=reason, passed=False, reason=reason
    )
    if claimed:
        audit_record(
            actor=None,
            verb="evaluation.case_not_started",
            target=result.report,
            data={"case": result.case_name, "reason": reason},
        )


def _checked_output(run: Run, step_key: str) -> Any:
    if not step_key:
        return run.output
    step_run = StepRun.objects.filter(run=run, step_key=step_key, state=StepRun.State.SUCCEEDED).order_by("-pk").first()
    return step_run.output if step_run is not None else None


def _step_failure(run: Run, step_key: str) -> str:
    """Why the checked output is missing, in words."""
    if not step_key:
        return f"The test run {run.get_status_display().lower()}" + (f": {run.error}" if run.error else ".")
    step_run = StepRun.objects.filter(run=run, step_key=step_key).order_by("-pk").first()
    if step_run is None:
        return f'The step "{step_key}" never ran (the run took another path).'
    return f'The step "{step_key}" {step_run.state}' + (f": {step_run.error}" if step_run.error else ".")


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "nothing"
    return repr(value) if isinstance(value, str) else str(value)


def _percentile(values: list[float], share: float) -> float | None:
    """Nearest-rank percentile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def _score_result(result: EvaluationResult, criteria: dict[str, Any], step_key: str) -> None:
    run = result.run
    if run is None:
        # Never ran (it could not start): nothing matched, nothing was spent.
        result.output, result.schema_valid, result.cost, result.latency_ms = None, None, Decimal("0"), None
        result.fields = [
            {"field": name, "expected": value, "actual": None, "match": False}
            for name, value in result.expected.items()
        ]
        result.passed = False
        result.reason = result.start_error or "The case's run never started."
        result.save(update_fields=["output", "fields", "schema_valid", "cost", "latency_ms", "passed", "reason"])
        return
    found = reader_for(run.graph_snapshot or run.version.graph, step_key)
    output = _checked_output(run, step_key)
    result.cost = InferenceCall.objects.filter(run_id=run.pk).aggregate(total=Sum("cost"))["total"] or Decimal("0")
    started = run.started_at or run.created_at
    result.latency_ms = (run.finished_at - started).total_seconds() * 1000 if run.finished_at else None
    reasons: list[str] = []
    if found is None or (output is None and (step_key or run.status != Run.Status.SUCCEEDED)):
        result.output, result.schema_valid = None, None
        result.fields = [
            {"field": name, "expected": value, "actual": None, "match": False}
            for name, value in result.expected.items()
        ]
        reasons.append(_step_failure(run, step_key))
    else:
        reader, step = found
        actual = reader.actual(step, output)
        result.output = actual
        result.fields = [
            {
                "field": name,
                "expected": value,
                "actual": actual.get(name),
                "match": values_match(value, actual.get(name)),
            }
            for name, value in result.expected.items()
        ]
        problems = reader.schema_problems(step, output)
        result.schema_valid = None if problems is None else not problems
        wrong = [row for row in result.fields if not row["match"]]
        if wrong:
            reasons.append(
                "; ".join(
                    f"{row['field']}: expected {_format(row['expected'])}, got {_format(row['actual'])}"
                    for row in wrong
                )
                + "."
            )
        if problems and criteria.get("require_schema_valid"):
            reasons.append("The output does not match the step's schema: " + "; ".join(problems) + ".")
    limit = criteria.get("max_cost_per_case")
    if limit is not None and result.cost > Decimal(limit):
        reasons.append(f"It cost {_plain(result.cost)}, above the limit of {_plain(Decimal(limit))} per case.")
    result.passed = not reasons
    checked = len(result.fields)
    result.reason = (
        " ".join(reasons)
        if reasons
        else ("The checked field matches." if checked == 1 else f"All {checked} checked fields match.")
    )
    result.save(update_fields=["output", "fields", "schema_valid", "cost", "latency_ms", "passed", "reason"])


def _plain(number: Decimal) -> str:
    """A decimal as people write it: 30, 0.015 (never 3E+1)."""
    return f"{number.normalize():f}"


def _outcome(key: str, label: str, limit: str, actual: str, passed: bool) -> dict[str, Any]:
    return {"key": key, "label": label, "limit": limit, "actual": actual, "passed": passed}


ALL_CASES = "all cases"
ESTABLISHED_CASES = "the suite's established cases"


def _score(report: EvaluationReport, results: list[EvaluationResult]) -> None:
    """Totals and per-criterion outcomes of a report whose case runs have all finished.

    With established cases (criteria["baseline"]), the pooled criteria (accuracy, per-field accuracy, the 95th
    percentile of time) are judged twice, over every case and over the established ones, and the report passes
    only when both do: easy cases added in numbers can make a report fail, never make it pass. The per-case
    criteria (finished, schema, cost) hold for every case already, so once is enough. Each outcome says over
    which cases it was judged ("scope": ALL_CASES or ESTABLISHED_CASES)."""
    criteria = report.criteria
    for result in results:
        _score_result(result, criteria, report.step_key)
    report.totals, report.outcomes = _judge(results, criteria)
    baseline = criteria.get("baseline") or {}
    established_ids = set(baseline.get("cases") or [])
    established = [result for result in results if result.case_id in established_ids]
    for outcome in report.outcomes:
        outcome["scope"] = ALL_CASES
    if established and len(established) < len(results):
        totals, outcomes = _judge(established, criteria)
        report.totals["established"] = {
            **{key: totals[key] for key in ("cases", "cases_passed", "fields_checked", "fields_matched", "accuracy")},
            "source": baseline.get("source", ""),
        }
        for outcome in report.outcomes:
            outcome["label"] = f"{outcome['label']}, over {ALL_CASES}"
        for outcome in outcomes:
            # A field minimum the established cases do not check says nothing about them (all cases judge it).
            pooled = outcome["key"] in ("accuracy", "latency") or outcome["key"].startswith("field:")
            if not pooled or outcome["actual"] == "not checked by any case":
                continue
            outcome.update(
                key=f"established:{outcome['key']}",
                label=f"{outcome['label']}, over {ESTABLISHED_CASES}",
                scope=ESTABLISHED_CASES,
            )
            report.outcomes.append(outcome)
    report.state = (
        EvaluationReport.State.PASSED if all(o["passed"] for o in report.outcomes) else EvaluationReport.State.FAILED
    )


def _judge(results: list[EvaluationResult], criteria: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Totals and per-criterion outcomes over `results` (already scored one by one)."""
    rows = [row for result in results for row in result.fields]
    per_field: dict[str, list[bool]] = {}
    for row in rows:
        per_field.setdefault(row["field"], []).append(bool(row["match"]))
    matched = sum(1 for row in rows if row["match"])
    accuracy = (Decimal(matched * 100) / len(rows)).quantize(ACCURACY_PLACES) if rows else Decimal("0")
    field_accuracy = {
        name: str((Decimal(sum(values) * 100) / len(values)).quantize(ACCURACY_PLACES))
        for name, values in sorted(per_field.items())
    }
    latencies = [result.latency_ms for result in results if result.latency_ms is not None]
    costs = [result.cost for result in results]
    p95 = _percentile(latencies, 0.95)
    invalid = [result.case_name for result in results if result.schema_valid is False]
    unfinished = [result.case_name for result in results if result.output is None]
    totals = {
        "cases": len(results),
        "cases_passed": sum(1 for result in results if result.passed),
        "fields_checked": len(rows),
        "fields_matched": matched,
        "accuracy": str(accuracy),
        "field_accuracy": field_accuracy,
        "schema_invalid": len(invalid),
        "cost_total": str(sum(costs, Decimal("0"))),
        "cost_max": str(max(costs, default=Decimal("0"))),
        "latency_p50_ms": _percentile(latencies, 0.5),
        "latency_p95_ms": p95,
    }
    minimum = Decimal(criteria["min_accuracy"])
    outcomes = [
        _outcome(
            "accuracy",
            "Accuracy over every checked field",
            f"at least {minimum} %",
            f"{accuracy} % ({matched} of {len(rows)})",
            accuracy >= minimum,
        ),
        _outcome(
            "finished",
            "Every case produced the checked output",
            "all cases",
            "all cases" if not unfinished else f"{len(unfinished)} did not: {', '.join(unfinished)}",
            not unfinished,
        ),
    ]
    for name, value in (criteria.get("field_min_accuracy") or {}).items():
        actual = Decimal(field_accuracy.get(name, "0"))
        outcomes.append(
            _outcome(
                f"field:{name}",
                f'Accuracy of "{name}"',
                f"at least {value} %",
                f"{actual} %" if name in field_accuracy else "not checked by any case",
                name in field_accuracy and actual >= Decimal(value),
            )
        )
    # A step that declares no schema (a transform, the run's output) has nothing to be valid against.
    if criteria.get("require_schema_valid") and any(result.schema_valid is not None for result in results):
        outcomes.append(
            _outcome(
                "schema",
                "Output matches the step's schema",
                "every case",
                "every case" if not invalid else f"{len(invalid)} did not: {', '.join(invalid)}",
                not invalid,
            )
        )
    if criteria.get("max_cost_per_case") is not None:
        limit = Decimal(criteria["max_cost_per_case"])
        highest = max(costs, default=Decimal("0"))
        outcomes.append(
            _outcome(
                "cost",
                "Cost per case",
                f"at most {_plain(limit)}",
                f"highest {_plain(highest)}",
                highest <= limit,
            )
        )
    if criteria.get("max_latency_p95_seconds") is not None:
        limit_seconds = Decimal(criteria["max_latency_p95_seconds"])
        outcomes.append(
            _outcome(
                "latency",
                "Time per case (95th percentile)",
                f"at most {_plain(limit_seconds)} s",
                "no timings" if p95 is None else f"{p95 / 1000:.2f} s",
                p95 is not None and Decimal(str(p95)) <= limit_seconds * 1000,
            )
        )
    return totals, outcomes


@transaction.atomic
def evaluation_report_score(*, report_id: int, now: Any = None) -> EvaluationReport | None:
    """Score a running report once every case run has finished (or close it as "could not finish" when they
    have not after REPORT_TIMEOUT), then publish the draft when the report passed and publishing was asked for.

    Safe to call any number of times, from anywhere: the report is claimed by a conditional update of its
    state, so exactly one caller scores it. Returns the report when this call finished it, else None.
    """
    now = now or timezone.now()
    report = EvaluationReport.objects.filter(pk=report_id, state=EvaluationReport.State.RUNNING).first()
    if report is None:
        return None
    results = list(report.results.select_related("run", "run__version").order_by("case_name", "pk"))
    # A case whose run could not start is finished (and failed); one whose run has not started yet is not.
    unfinished = [
        result
        for result in results
        if (result.run is None and not result.start_error) or (result.run is not None and not result.run.is_finished)
    ]
    timed_out = bool(unfinished) and now - report.created_at > REPORT_TIMEOUT
    if unfinished and not timed_out:
        return None
    # The lock order of every draft write, workflow row first: publishing below, and a publish request joining
    # this report (evaluation_report_start), take the same order, so the two cannot deadlock.
    Workflow.objects.select_for_update().filter(pk=report.workflow_id).first()
    # The claim: whoever moves the report out of "running" scores it; a second caller changes nothing.
    claimed = EvaluationReport.objects.filter(pk=report.pk, state=EvaluationReport.State.RUNNING).update(
        state=EvaluationReport.State.ERROR, finished_at=now
    )
    if not claimed:
        return None
    report.finished_at = now
    if timed_out:
        report.state = EvaluationReport.State.ERROR
        report.error = (
            f"{len(unfinished)} case run{'s' if len(unfinished) != 1 else ''} did not finish within "
            f"{int(REPORT_TIMEOUT.total_seconds() // 60)} minutes: {', '.join(r.case_name for r in unfinished)}."
        )
        report.totals = {"cases": len(results), "cases_passed": 0}
    else:
        _score(report, results)
    report.save(update_fields=["state", "totals", "outcomes", "error", "finished_at"])
    audit_record(
        actor=None,
        verb="evaluation.report_finished",
        target=report,
        data={
            "workflow": report.workflow.slug,
            "version": report.version_number,
            "state": report.state,
            "accuracy": report.totals.get("accuracy"),
            "cases_passed": report.totals.get("cases_passed"),
            "cases": report.totals.get("cases"),
            "failed": [o["key"] for o in report.outcomes if not o["passed"]],
        },
    )
    if report.publish_requested:
        _publish_after(report)
    return report


def _publish_after(report: EvaluationReport) -> None:
    """Publish the report's draft as the person who asked, when it passed and is still the draft it ran on."""
    if report.state != EvaluationReport.State.PASSED:
        report.publish_outcome = "Not published: the suite did not pass."
    else:
        draft = workflow_draft_for(report.workflow)
        if draft is None or draft.pk != report.version_id:
            report.publish_outcome = "Not published: the draft was published or replaced meanwhile."
        else:
            try:
                # A savepoint: a refusal (the draft changed, a right was lost) leaves the scores committed.
                with transaction.atomic():
                    # The revision the report ran on: an edit since (even one back to the same content, or to
                    # content another report passed) was not what the requester asked to publish.
                    version = workflow_version_publish(
                        actor=report.publish_requested_by or report.started_by,
                        version=draft,
                        note=report.publish_note,
                        expected_revision=report.draft_revision,
                    )
            except DraftConflict:
                report.publish_outcome = (
                    "Not published: the draft changed after the suite started on it, so this report says nothing "
                    "about it. Run the suite on the draft as it is now."
                )
            except ApplicationError as error:
                problems = error.extra.get("problems") or []
                report.publish_outcome = f"Not published: {error.message}" + (
                    " " + " ".join(str(p) for p in problems) if problems and problems[0] != error.message else ""
                )
            else:
                report.published_version = version
                report.publish_outcome = f"Published as version {version.number}."
    report.save(update_fields=["publish_outcome", "published_version"])


def evaluation_reports_score_due() -> int:
    """Score every running report whose case runs have finished (the periodic task); returns how many finished."""
    finished = 0
    # First the case runs that should have started right after their report committed and did not.
    stalled = EvaluationResult.objects.filter(
        report__state=EvaluationReport.State.RUNNING,
        report__created_at__lt=timezone.now() - RUN_START_GRACE,
        run__isnull=True,
        start_error="",
    )
    for report_id in stalled.values_list("report_id", flat=True).distinct():
        evaluation_report_runs_start(report_id=report_id)
    for report_id in EvaluationReport.objects.filter(state=EvaluationReport.State.RUNNING).values_list("pk", flat=True):
        if evaluation_report_score(report_id=report_id) is not None:
            finished += 1
    return finished


# --- the gate ---------------------------------------------------------------------------------------------------


def evaluation_publish_gate(actor: User, version: WorkflowVersion, override_reason: str) -> GateVerdict:
    """The publish gate (filled into apps.workflows.services.PUBLISH_GATES): a workflow with an enabled suite
    publishes only when the newest finished report on exactly this content, with the suite as it is, passed.

    Otherwise an admin may publish anyway by giving a reason: the override is recorded (a row and the audit
    event "evaluation.gate_overridden", in the publish transaction) and the version's note says so. Anyone else
    who gives a reason is refused (Forbidden).
    """
    suite = suite_for(version.workflow)
    if suite is None:
        return GateVerdict(evidence={"evaluation": {"gate": "no suite"}})
    digest = suite_checksum(suite)
    if not suite.enabled:
        return GateVerdict(evidence={"evaluation": {"gate": "suite disabled", "suite_checksum": digest}})
    passing = report_passing_for(suite, version)
    if passing is not None:
        # The evidence, kept with the version and in the audit chain, in the publish transaction.
        EvaluationGatePass.objects.create(version=version, report=passing)
        audit_record(
            actor=actor,
            verb="evaluation.gate_passed",
            target=version,
            data={"workflow": version.workflow.slug, "number": version.number, "report": passing.pk},
        )
        return GateVerdict(
            evidence={
                "evaluation": {
                    "gate": "passed",
                    "report": passing.pk,
                    "suite_checksum": digest,
                    "content_checksum": passing.content_checksum,
                }
            }
        )
    checksum = content_checksum(version)
    newest = (
        EvaluationReport.objects.filter(suite=suite, content_checksum=checksum).order_by("-created_at", "-pk").first()
    )
    if override_reason:
        if "admin" not in user_roles(actor):
            raise Forbidden("Only an admin may publish over an evaluation suite that has not passed.")
        EvaluationGateOverride.objects.create(version=version, report=newest, actor=actor, reason=override_reason)
        audit_record(
            actor=actor,
            verb="evaluation.gate_overridden",
            target=version,
            data={
                "workflow": version.workflow.slug,
                "number": version.number,
                "report": newest.pk if newest else None,
                "report_state": newest.state if newest else None,
                "reason": override_reason,
            },
        )
        said = f"report {newest.pk}, {newest.get_state_display().lower()}" if newest else "the suite never ran on it"
        return GateVerdict(
            overridden=(
                f"Published over the evaluation suite ({said}) by {actor.display_name}, an admin: {override_reason}"
            ),
            evidence={
                "evaluation": {
                    "gate": "overridden",
                    "report": newest.pk if newest else None,
                    "suite_checksum": digest,
                    "content_checksum": checksum,
                }
            },
        )
    from apps.evaluations.selectors import report_summary

    return GateVerdict(
        problems=[_gate_problem(newest, digest)],
        details={"evaluation": report_summary(newest) if newest else None},
    )


def _gate_problem(newest: EvaluationReport | None, digest: str) -> str:
    """Why the gate is shut, given the newest report on the draft's content and the suite's current checksum."""
    if newest is None:
        return "The evaluation suite has not run on this draft: run it, and publish when it passes."
    if newest.state == EvaluationReport.State.RUNNING:
        return f"The evaluation suite is still running on this draft (report {newest.pk})."
    if newest.suite_checksum != digest:
        return f"The evaluation suite changed since report {newest.pk}: run it again on this draft."
    failed = [o["label"] for o in newest.outcomes if not o.get("passed")] or [newest.error or "it did not pass"]
    return (
        f"The evaluation suite failed on this draft (report {newest.pk}, "
        f"{newest.totals.get('cases_passed', 0)} of {newest.totals.get('cases', 0)} cases passed): "
        + "; ".join(failed)
        + "."
    )


def evaluation_publish_gate_preview(version: WorkflowVersion) -> list[str]:
    """What the gate would refuse `version` for now, saving nothing (filled into
    apps.workflows.services.PUBLISH_GATE_PREVIEWS: the builder's "can publish" says it needs a passing suite)."""
    suite = suite_for(version.workflow)
    if suite is None or not suite.enabled or report_passing_for(suite, version) is not None:
        return []
    newest = report_newest_for_content(suite, content_checksum(version))
    return [_gate_problem(newest, suite_checksum(suite))]


def evaluation_publish_route(workflow: Workflow) -> PublishRoute | None:
    """The builder's publish form posts to the suite's publish page when the workflow has an enabled suite (filled
    into apps.workflows.services.PUBLISH_ROUTES)."""
    from django.urls import reverse

    if not EvaluationSuite.objects.filter(workflow=workflow, enabled=True).exists():
        return None
    return PublishRoute(
        action=reverse("evaluations:publish", args=[workflow.slug]),
        explanation=(
            "This workflow has an evaluation suite: publishing runs it on this draft first (unless it already "
            "passed on exactly this content) and publishes when it passes."
        ),
    )


@transaction.atomic
def evaluation_publish(
    *, actor: User, workflow: Workflow, note: str, expected_revision: int | None = None
) -> tuple[WorkflowVersion | None, EvaluationReport | None]:
    """ "Publish" on a workflow with a suite: publish now when a passing report on exactly this draft exists, else
    start the suite with a publish request. Returns (the version, None) or (None, the running report).

    With `expected_revision` (the revision the publisher looked at), a draft that changed since is refused
    (DraftConflict), checked with the draft locked and again by the publish itself.
    """
    _require_edit(actor, workflow)
    # The lock order of every draft write: the workflow row, then the version row.
    Workflow.objects.select_for_update().filter(pk=workflow.pk).first()
    draft = WorkflowVersion.objects.select_for_update().filter(workflow=workflow, state="draft").first()
    if draft is None:
        raise Conflict("There is no draft to publish.")
    _require_revision(draft, expected_revision)
    suite = suite_for(workflow)
    if suite is None or not suite.enabled or report_passing_for(suite, draft) is not None:
        return workflow_version_publish(
            actor=actor, version=draft, note=note, expected_revision=expected_revision
        ), None
    # A draft that could not be published anyway is refused now, not after every case has run.
    problems = version_problems(draft)
    if problems:
        raise ApplicationError("The version cannot be published.", extra={"problems": problems})
    return None, evaluation_report_start(
        actor=actor, workflow=workflow, publish=True, publish_note=note, expected_revision=expected_revision
    )
