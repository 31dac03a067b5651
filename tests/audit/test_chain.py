"""The audit chain: linked hashes, database-enforced append-only, and tamper detection."""

from __future__ import annotations

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
