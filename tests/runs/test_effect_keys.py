"""The idempotency key of a side-effecting step (apps.runs.effects.effect_key): the same on every attempt, never
the same for two runs even when a database reset hands out a run number again, and kept for a step whose ledger
row was written under the earlier rule. Driven in-process (tests/support/engine.py) against a real SMTP server."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.db import connection, connections

from apps.runs.effects import effect_intent_record, effect_key
from apps.runs.models import EffectRecord, Run, StepRun
from apps.runs.services import run_start
from apps.workflows.services import workflow_create, workflow_version_create, workflow_version_publish
from tests.connectors.test_smtp import FussyServer, fussy_smtp_server
from tests.support.engine import drive

NUMBER = {"type": "object", "properties": {"n": {"type": "number"}}, "required": ["n"]}


@pytest.fixture
def mail_server(tmp_path: Path, settings: Any) -> Iterator[FussyServer]:
    settings.AIOS_HTTP_ALLOWLIST = ["127.0.0.1/32", "::1/128"]
    with fussy_smtp_server(tmp_path) as server:
        yield server


@pytest.fixture
def mail_workflow(analyst: Any, team: Any, mail_server: FussyServer) -> Any:
    from apps.connectors.services import connection_create

    connection_create(
        actor=None,
        name="mail",
        label="Notices",
        kind="smtp",
        team=team,
        config=mail_server.config(from_address="notices@example.com"),
        secrets={},
    )
    graph = {
        "steps": [
            {
                "key": "send",
                "type": "email.send",
                "config": {
                    "connection": "mail",
                    "to": "ana@example.com",
                    "subject": "Notice {{ input.n }}",
                    "body_text": "x",
                    "delivery": "at_least_once",
                },
            }
        ]
    }
    workflow = workflow_create(actor=analyst, name="Notices", team=team)
    version = workflow_version_create(actor=analyst, workflow=workflow, graph=graph, input_schema=NUMBER)
    workflow_version_publish(actor=analyst, version=version)
    return workflow


def sent_message_id(run: Run) -> str:
    return str(StepRun.objects.get(run=run, step_key="send").output["message_id"])


@pytest.mark.django_db
def test_the_key_is_the_same_in_every_process_and_the_ledger_keeps_it(
    analyst: Any, mail_workflow: Any, mail_server: FussyServer
) -> None:
    run = run_start(actor=analyst, workflow=mail_workflow, inputs={"n": 1})[0]
    # The key from the instance just created and from the row read back (another process) agree to the microsecond.
    assert effect_key(run, "send") == effect_key(Run.objects.get(pk=run.pk), "send")
    assert drive(run).status == Run.Status.SUCCEEDED
    key = EffectRecord.objects.get(run=run, step_key="send").idempotency_key
    assert key == effect_key(run, "send")
    assert sent_message_id(run) == f"<{key}@example.com>"
    assert [str(message["Message-ID"]) for message in mail_server.messages()] == [f"<{key}@example.com>"]


@pytest.mark.django_db
def test_a_run_number_handed_out_again_after_a_reset_sends_another_message_id(
    analyst: Any, mail_workflow: Any, mail_server: FussyServer
) -> None:
    """A restore from an older backup (or a reset) loses run #N, and the database hands out #N again: the new
    run's mail must not share the old one's Message-ID, or a receiver that deduplicates by it drops the new one."""
    first = run_start(actor=analyst, workflow=mail_workflow, inputs={"n": 1})[0]
    drive(first)
    number, first_id = first.pk, sent_message_id(first)
    Run.objects.filter(pk=number).delete()
    with connection.cursor() as cursor:
        cursor.execute("SELECT setval(pg_get_serial_sequence('runs_run', 'id'), %s, false)", [number])
    second = run_start(actor=analyst, workflow=mail_workflow, inputs={"n": 2})[0]
    assert second.pk == number
    assert drive(second).status == Run.Status.SUCCEEDED
    assert sent_message_id(second) != first_id
    assert len({str(message["Message-ID"]) for message in mail_server.messages()}) == 2


@pytest.mark.django_db
def test_a_step_whose_ledger_row_has_a_key_of_the_earlier_rule_keeps_it(
    analyst: Any, mail_workflow: Any, mail_server: FussyServer
) -> None:
    """A run in flight across the upgrade: its step called out under the earlier key (run and step only) and died
    with the outcome unknown. The retry must send the same Message-ID as that attempt did."""
    run = run_start(actor=analyst, workflow=mail_workflow, inputs={"n": 1})[0]
    legacy = hashlib.sha256(f"aios:{run.pk}:send".encode()).hexdigest()
    EffectRecord.objects.create(idempotency_key=legacy, run=run, step_key="send", attempts=1)
    assert drive(run).status == Run.Status.SUCCEEDED
    assert sent_message_id(run) == f"<{legacy}@example.com>"
    record = EffectRecord.objects.get(run=run, step_key="send")
    assert (record.idempotency_key, record.state, record.attempts) == (legacy, EffectRecord.State.APPLIED, 2)


@pytest.mark.django_db(transaction=True)
def test_two_first_attempts_with_keys_of_two_rules_end_on_one_ledger_row(analyst: Any, mail_workflow: Any) -> None:
    """A rolling upgrade: a worker of the earlier release is inserting its ledger row (its key by the earlier rule)
    in a transaction not yet committed when a worker of this release makes the step's first attempt. The later
    insert must wait, fail on the one-row-per-step rule, and take the earlier key, not write a second row and send
    the same effect under a second key."""
    run = run_start(actor=analyst, workflow=mail_workflow, inputs={"n": 1})[0]
    step_run = StepRun.objects.get(run=run, step_key="send")
    StepRun.objects.filter(pk=step_run.pk).update(state=StepRun.State.RUNNING, fencing_token=7)
    step_run.refresh_from_db()
    legacy = hashlib.sha256(f"aios:{run.pk}:send".encode()).hexdigest()

    database = connection.settings_dict
    earlier = psycopg.connect(
        host=database["HOST"],
        port=database["PORT"],
        dbname=database["NAME"],
        user=database["USER"],
        password=database["PASSWORD"],
    )
    earlier.execute(
        "INSERT INTO runs_effectrecord (idempotency_key, run_id, step_key, state, attempts, first_at, last_at, "
        "outcome) VALUES (%s, %s, 'send', 'intent', 1, now(), now(), '')",
        [legacy, run.pk],
    )
    answer: list[Any] = []

    def this_release() -> None:
        try:
            answer.append(effect_intent_record(step_run=step_run))
        except Exception as error:  # reported to the test below
            answer.append(error)
        finally:
            connections.close_all()

    worker = threading.Thread(target=this_release)
    worker.start()
    worker.join(timeout=1.5)
    waited = worker.is_alive()
    earlier.commit()
    earlier.close()
    worker.join(timeout=30)

    assert waited, f"the second first attempt did not wait for the earlier row: {answer}"
    assert answer == [("intent", legacy)]
    assert list(EffectRecord.objects.filter(run=run).values_list("idempotency_key", "attempts")) == [(legacy, 2)]
