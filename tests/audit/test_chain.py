"""The audit chain: linked hashes, database-enforced append-only, and tamper detection."""

from __future__ import annotations

import json
import threading
from itertools import pairwise

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, transaction

from apps.audit.models import AuditEvent
from apps.audit.selectors import audit_chain_verify
from apps.audit.services import GENESIS_HASH, audit_record


@pytest.fixture
def three_events(analyst):
    audit_record(actor=analyst, verb="test.first", data={"amount": 1e20, "text": "naïve ✓"})
    audit_record(actor=None, verb="test.second", data={"n": 0.1})
    return list(AuditEvent.objects.order_by("sequence"))


def test_events_form_a_linked_chain(three_events):
    assert three_events[0].prev_hash == GENESIS_HASH
    for before, after in pairwise(three_events):
        assert after.prev_hash == before.hash
        assert after.sequence == before.sequence + 1
    report = audit_chain_verify()
    assert report.intact and report.events_checked == len(three_events)


def test_verify_audit_command_reports_intact_chain(three_events, capsys):
    call_command("verify_audit")
    assert f"Audit chain intact: {len(three_events)} events" in capsys.readouterr().out


def test_update_delete_and_truncate_are_refused_by_the_database(three_events):
    for statement in (
        "UPDATE audit_auditevent SET verb = 'forged' WHERE sequence = 2",
        "DELETE FROM audit_auditevent WHERE sequence = 2",
        "TRUNCATE audit_auditevent",
    ):
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(statement)
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(sequence=2).update(verb="forged")
    assert AuditEvent.objects.get(sequence=2).verb == "test.first"


def _tamper(sql: str) -> None:
    """What an attacker with owner rights could do: switch the trigger off, edit, switch it back on."""
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER aios_append_only")
        cursor.execute(sql)
        cursor.execute("ALTER TABLE audit_auditevent ENABLE TRIGGER aios_append_only")


def test_edited_row_is_detected(three_events):
    _tamper("UPDATE audit_auditevent SET data = '{\"amount\":1}' WHERE sequence = 2")
    report = audit_chain_verify()
    assert report.broken_at == 2 and "altered" in report.reason
    with pytest.raises(CommandError, match="Audit chain broken at event #2"):
        call_command("verify_audit")


def test_deleted_row_is_detected(three_events):
    _tamper("DELETE FROM audit_auditevent WHERE sequence = 2")
    report = audit_chain_verify()
    assert report.broken_at == 3 and "sequence jumps" in report.reason


def test_rehashed_row_is_detected_by_its_successor(three_events):
    forged = AuditEvent.objects.get(sequence=2)
    forged.verb = "test.forged"
    forged.hash = forged.compute_hash()
    _tamper(f"UPDATE audit_auditevent SET verb = 'test.forged', hash = '{forged.hash}' WHERE sequence = 2")
    report = audit_chain_verify()
    assert report.broken_at == 3 and "prev_hash" in report.reason


def test_history_tables_are_append_only(claims_workflow):
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("UPDATE workflows_historicalworkflow SET name = 'x'")


def test_cut_off_tail_is_detected_with_an_expected_head(three_events):
    head = three_events[-1].hash
    _tamper(f"DELETE FROM audit_auditevent WHERE sequence = {three_events[-1].sequence}")
    assert audit_chain_verify().intact  # a shorter chain is still a valid chain...
    with pytest.raises(CommandError, match="does not contain the expected head"):
        call_command("verify_audit", expect_head=head)  # ...but not the one recorded earlier


def test_flush_is_refused_outside_the_test_suite(settings, three_events):
    settings.AIOS_ENV = "production"
    with pytest.raises(CommandError, match="test suite only"):
        call_command("flush", interactive=False)
    assert AuditEvent.objects.count() == len(three_events)


HISTORY_TABLES = ["accounts_historicalteam", "workflows_historicalworkflow", "workflows_historicalworkflowversion"]


@pytest.mark.parametrize("table", HISTORY_TABLES)
@pytest.mark.parametrize("statement", ["DELETE FROM {table}", "TRUNCATE {table}"])
def test_history_rows_cannot_be_deleted_or_truncated(claims_workflow, table, statement):
    # Row triggers fire only for rows that exist: the demo workflow leaves history in all three tables.
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {table}")
        before = cursor.fetchone()[0]
        # The test's own transaction still holds deferred foreign-key checks on those rows, and Postgres
        # refuses any TRUNCATE while they are pending; run them now so the TRUNCATE reaches the trigger.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    assert before > 0
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(statement.format(table=table))
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {table}")
        assert cursor.fetchone()[0] == before


WRITER_THREADS, EVENTS_PER_THREAD = 8, 25


@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_keep_the_chain_intact():
    """Writers in separate connections and transactions never fork the chain: the advisory lock orders
    them, so every event links to its true predecessor and no sequence number is taken twice."""
    start = threading.Barrier(WRITER_THREADS)
    failures: list[BaseException] = []

    def write(thread: int) -> None:
        try:
            start.wait(timeout=30)
            for index in range(EVENTS_PER_THREAD):
                audit_record(actor=None, verb="test.concurrent", data={"thread": thread, "index": index})
        except BaseException as error:  # reported to the main thread, which fails the test
            failures.append(error)
        finally:
            connection.close()  # each thread has its own connection; leave none open for the flush

    threads = [threading.Thread(target=write, args=(number,)) for number in range(WRITER_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert not failures, failures

    sequences = list(AuditEvent.objects.order_by("sequence").values_list("sequence", flat=True))
    assert len(sequences) >= WRITER_THREADS * EVENTS_PER_THREAD
    assert sequences == list(range(1, len(sequences) + 1))
    written = AuditEvent.objects.filter(verb="test.concurrent")
    assert written.count() == WRITER_THREADS * EVENTS_PER_THREAD
    pairs = {(data["thread"], data["index"]) for data in map(json.loads, written.values_list("data", flat=True))}
    assert pairs == {(thread, index) for thread in range(WRITER_THREADS) for index in range(EVENTS_PER_THREAD)}
    report = audit_chain_verify()
    assert report.intact, report.reason
    assert report.events_checked == len(sequences)
