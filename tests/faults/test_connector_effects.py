"""D12 and D13: a worker dies right after a connector step changed the outside world and before the step's result
committed (the crash point `after_external_call`), and the retry must not change it twice.

D12, `email.send` to a real SMTP server (aiosmtpd on loopback): the SMTP server answered 250 and the worker died.
- delivery at_most_once (the step's default): the retry finds the effect ledger's unfinished intent and the step
  goes to a person as an incident; the message arrived once and is never sent again;
- delivery at_least_once: the retry sends again, with the same Message-ID, so a receiver that deduplicates by it
  shows one message; the run completes.

D13, `sql.query` in write mode with `:idempotency_key` stored in a unique column, against the machine's MariaDB
and a PostgreSQL database: the COMMIT happened and the worker died. The retry's INSERT meets the unique key,
the step reports `already_applied`, the run completes, and each run's row exists exactly once.

Phase 1 runs a worker with `after_external_call:1.0` and no sweeper, so every step's call is followed by a SIGKILL
of its pool child, once. When every effect is visible, that worker is killed; beat (the sweeper) and a worker
without faults take over, as in D3.
"""

from __future__ import annotations

from typing import Any

import pytest

from apps.connectors.services import connection_create
from apps.runs.models import Incident, StepRun
from apps.runs.services import run_start
from tests.faults.harness import check_invariants, describe_runs, sized, wait_runs, wait_until
from tests.faults.workflows import N_INPUT, publish
from tests.support import erp as erp_support
from tests.support.erp import ErpDatabase
from tests.support.figures import record_figure
from tests.support.smtp import private_smtp_server

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

erp, erp_mariadb, erp_postgresql = erp_support.erp, erp_support.erp_mariadb, erp_support.erp_postgresql

AT_MOST_ONCE = sized(4, 30)
AT_LEAST_ONCE = sized(3, 20)
SQL_PER_DIALECT = sized(3, 20)

POST = "INSERT INTO postings (invoice_number, amount, idempotency_key) VALUES (:invoice, :amount, :idempotency_key)"


def email_graph(delivery: str, tag: str) -> dict[str, Any]:
    return {
        "steps": [
            {"key": "prepare", "type": "data.transform", "config": {"fields": {"claim": '"C-" + string(input.n)'}}},
            {
                "key": "send",
                "type": "email.send",
                "config": {
                    "connection": "mail",
                    "to": f"{tag}-{{{{ input.n }}}}@example.com",
                    "subject": "Your claim {{ steps.prepare.claim }}",
                    "body_text": "Claim {{ steps.prepare.claim }} is approved.\n",
                    "delivery": delivery,
                },
            },
            {"key": "finish", "type": "data.transform", "config": {"fields": {"sent": "steps.send.message_id"}}},
        ]
    }


def sql_graph(connection: str) -> dict[str, Any]:
    return {
        "steps": [
            {"key": "prepare", "type": "data.transform", "config": {"fields": {"amount": "input.n * 10"}}},
            {
                "key": "post",
                "type": "sql.query",
                "config": {
                    "connection": connection,
                    "statement": POST,
                    "mode": "write",
                    "parameters": {"invoice": '"INV-" + string(input.n)', "amount": "steps.prepare.amount"},
                },
            },
            {
                "key": "finish",
                "type": "data.transform",
                "config": {"fields": {"applied": "steps.post.already_applied"}},
            },
        ]
    }


@pytest.mark.timeout(sized(180, 900))
def test_d12_d13_a_connector_step_retried_after_its_effect_takes_effect_once(
    analyst: Any, team: Any, fleet: Any, erp: list[ErpDatabase]
) -> None:
    with private_smtp_server() as mail:
        connection_create(
            actor=None,
            name="mail",
            label="Claims mail",
            kind="smtp",
            team=team,
            config={"host": mail.host, "port": mail.port, "security": "none", "from_address": "claims@example.com"},
            secrets={},
        )
        databases = {database.dialect: database for database in erp}
        for dialect, database in databases.items():
            connection_create(
                actor=None,
                name=f"erp-{dialect}",
                label=f"ERP {dialect}",
                kind="sql",
                team=team,
                config=dict(database.config),
                secrets=dict(database.secrets),
            )
        careful = publish(
            analyst, "D12 at most once", email_graph("at_most_once", "once"), team=team, input_schema=N_INPUT
        )
        eager = publish(
            analyst, "D12 at least once", email_graph("at_least_once", "again"), team=team, input_schema=N_INPUT
        )
        posting = {
            dialect: publish(analyst, f"D13 {dialect}", sql_graph(f"erp-{dialect}"), team=team, input_schema=N_INPUT)
            for dialect in databases
        }

        dying = fleet.worker(concurrency=2, AIOS_FAULTS="after_external_call:1.0")
        once_ids = [run_start(actor=analyst, workflow=careful, inputs={"n": n})[0].pk for n in range(AT_MOST_ONCE)]
        again_ids = [run_start(actor=analyst, workflow=eager, inputs={"n": n})[0].pk for n in range(AT_LEAST_ONCE)]
        sql_ids = {
            dialect: [
                run_start(actor=analyst, workflow=workflow, inputs={"n": n})[0].pk for n in range(SQL_PER_DIALECT)
            ]
            for dialect, workflow in posting.items()
        }

        def postings(dialect: str) -> int:
            return int(databases[dialect].query("SELECT count(*) FROM postings")[0][0])

        def every_effect_happened() -> bool:
            mails = mail.messages()
            return len(mails) >= AT_MOST_ONCE + AT_LEAST_ONCE and all(
                postings(dialect) >= SQL_PER_DIALECT for dialect in databases
            )

        wait_until(
            every_effect_happened,
            timeout=sized(90, 600),
            what="every connector step's first effect",
            detail=lambda: f"{len(mail.messages())} messages, postings {[postings(d) for d in databases]}",
        )
        dying.kill_group()
        fleet.worker(concurrency=2, wait=False)
        fleet.beat(wait=False)
        fleet.ready()

        all_sql = [pk for ids in sql_ids.values() for pk in ids]
        wait_runs([*again_ids, *all_sql], timeout=sized(90, 600))
        wait_until(
            lambda: Incident.objects.filter(run_id__in=once_ids, resolved_at=None).count() == len(once_ids),
            timeout=60,
            what="an incident on every at-most-once email whose outcome is unknown",
            detail=lambda: describe_runs(once_ids),
        )
        invariants = check_invariants([*again_ids, *all_sql])

        # D12: at most once, one message per run and a person deciding; at least once, the same Message-ID.
        once_counts = [len(mail.messages(to=f"once-{n}@example.com")) for n in range(AT_MOST_ONCE)]
        messages_once = sum(1 for count in once_counts if count == 1)
        resends = sum(max(count - 1, 0) for count in once_counts)
        incidents = Incident.objects.filter(run_id__in=once_ids).values("run_id").distinct().count()
        # Each at-least-once run's messages share one Message-ID, the one its step output names.
        outputs = dict(StepRun.objects.filter(run_id__in=again_ids, step_key="send").values_list("run_id", "output"))
        same_id = consistent = again_deliveries = 0
        for n, pk in enumerate(again_ids):
            received = mail.messages(to=f"again-{n}@example.com")
            again_deliveries += len(received)
            message_ids = {str(message["Message-ID"]) for message in received}
            same_id += len(message_ids) == 1
            consistent += message_ids == {(outputs.get(pk) or {}).get("message_id")}
    d12_ok = (
        messages_once == AT_MOST_ONCE
        and resends == 0
        and incidents == AT_MOST_ONCE
        and same_id == AT_LEAST_ONCE
        and consistent == AT_LEAST_ONCE
        and again_deliveries >= 2 * AT_LEAST_ONCE
        and not invariants.problems
    )
    record_figure(
        f"D12 email_send_crash_after_250 at_most_once_messages_once {messages_once}/{AT_MOST_ONCE} "
        f"incidents {incidents}/{AT_MOST_ONCE} blind_resends {resends} "
        f"at_least_once_same_message_id {same_id}/{AT_LEAST_ONCE} deliveries {again_deliveries} "
        f"{'ok' if d12_ok else 'miss'}"
    )

    # D13: one row per run in each database, the retry reporting the write as already applied.
    rows_once = 0
    applied_on_retry = 0
    for dialect, ids in sql_ids.items():
        counts = dict(
            (str(number), int(count))
            for number, count in databases[dialect].query(
                "SELECT invoice_number, count(*) FROM postings GROUP BY invoice_number"
            )
        )
        rows_once += sum(1 for n in range(SQL_PER_DIALECT) if counts.get(f"INV-{n}") == 1)
        outputs = dict(StepRun.objects.filter(run_id__in=ids, step_key="post").values_list("run_id", "output"))
        applied_on_retry += sum(1 for pk in ids if (outputs.get(pk) or {}).get("already_applied") is True)
    total = SQL_PER_DIALECT * len(sql_ids)
    d13_ok = rows_once == total and applied_on_retry == total and not invariants.problems
    record_figure(
        f"D13 sql_write_crash_after_commit rows_once {rows_once}/{total} already_applied_on_retry "
        f"{applied_on_retry}/{total} dialects {','.join(sorted(sql_ids))} {'ok' if d13_ok else 'miss'}"
    )
    assert not invariants.problems, "\n".join(invariants.problems)
    assert messages_once == AT_MOST_ONCE and resends == 0, f"at-most-once messages per run: {once_counts}"
    assert incidents == AT_MOST_ONCE, describe_runs(once_ids)
    assert same_id == AT_LEAST_ONCE and consistent == AT_LEAST_ONCE
    assert again_deliveries >= 2 * AT_LEAST_ONCE, "the at-least-once retries did not exercise a resend"
    assert rows_once == total and applied_on_retry == total, describe_runs(all_sql)
