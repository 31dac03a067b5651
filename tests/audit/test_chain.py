"""Audit streams: linked hashes per stream, MACs, the legacy stream, append-only tables, and writers that
never wait for each other unless they share a stream."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from datetime import UTC, datetime
from itertools import pairwise

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, IntegrityError, OperationalError, connection, transaction
from django.test.utils import CaptureQueriesContext

from apps.audit import crypto
from apps.audit.models import GENESIS_HASH, LEGACY_STREAM, AuditEvent
from apps.audit.selectors import audit_verify
from apps.audit.services import audit_anchor_write, audit_record, audit_stream_for


@pytest.fixture(autouse=True)
def _checkpoints_in_tmp(settings, tmp_path):
    settings.AIOS_AUDIT_CHECKPOINT_DIR = tmp_path / "checkpoints"


@pytest.fixture
def three_events(analyst):
    audit_record(actor=analyst, verb="test.first", data={"amount": 1e20, "text": "naïve ✓"})
    audit_record(actor=None, verb="test.second", data={"n": 0.1})
    audit_record(actor=analyst, verb="test.third", target=analyst)
    return list(AuditEvent.objects.order_by("id"))


# --- streams and their derivation ----------------------------------------------------------------------------


def test_events_of_one_stream_form_a_linked_chain(three_events, analyst):
    system = [event for event in three_events if event.stream == "system"]
    assert [event.stream_seq for event in system] == [1, 2]
    assert system[0].prev_hash == GENESIS_HASH and system[1].prev_hash == system[0].hash
    user_events = AuditEvent.objects.filter(stream=f"accounts.user:{analyst.pk}")
    assert [(e.verb, e.stream_seq) for e in user_events] == [("user.created", 1), ("test.third", 2)]
    assert all(event.sequence is None and event.txid for event in three_events)
    report = audit_verify()
    assert report.intact, report.problems
    assert report.events_checked == AuditEvent.objects.count()


def test_run_targets_and_what_belongs_to_a_run_share_the_run_stream(claims_workflow):
    from apps.approvals.models import ApprovalRequest
    from apps.runs.models import Incident, Run, StepRun

    run = Run(pk=41)
    assert audit_stream_for(run) == "run:41"
    assert audit_stream_for(StepRun(pk=7, run_id=41)) == "run:41"
    assert audit_stream_for(Incident(pk=3, run_id=41)) == "run:41"
    assert audit_stream_for(ApprovalRequest(pk=9, run_id=41)) == "run:41"
    assert audit_stream_for(claims_workflow) == f"workflows.workflow:{claims_workflow.pk}"
    assert audit_stream_for(None) == "system"


def test_an_explicit_stream_wins_and_the_legacy_stream_is_closed(analyst):
    event = audit_record(actor=analyst, verb="test.explicit", target=analyst, stream="run:77")
    assert (event.stream, event.stream_seq, event.target_type) == ("run:77", 1, "accounts.user")
    with pytest.raises(ValueError, match="legacy audit stream is closed"):
        audit_record(actor=None, verb="test.legacy", stream=LEGACY_STREAM)


def test_a_run_stream_costs_one_head_read_and_one_insert(analyst):
    audit_record(actor=None, verb="test.warm", stream="run:5")
    with transaction.atomic(), CaptureQueriesContext(connection) as queries:
        audit_record(actor=None, verb="test.step", stream="run:5")
    statements = [query["sql"] for query in queries.captured_queries]
    assert len(statements) == 2, statements  # no lock, no savepoint, no global SELECT
    assert statements[0].startswith('SELECT "audit_auditevent"."stream_seq"') and "DESC LIMIT 1" in statements[0]
    assert statements[1].startswith('INSERT INTO "audit_auditevent"')


def test_a_low_rate_stream_takes_its_own_advisory_lock(analyst):
    with transaction.atomic(), CaptureQueriesContext(connection) as queries:
        audit_record(actor=analyst, verb="test.low_rate", target=analyst)
    statements = [query["sql"] for query in queries.captured_queries]
    assert "pg_advisory_xact_lock" in statements[0] and "hashtext" in statements[0]
    assert not any("SAVEPOINT" in statement for statement in statements)


# --- hashes, MACs and the legacy stream ----------------------------------------------------------------------


def _legacy_hash_as_before(event: AuditEvent) -> str:
    """The hash exactly as AuditEvent.compute_hash computed it before streams existed (kept here verbatim as
    the reference: a legacy row that hashes differently today would fail verification forever)."""
    content = {
        "sequence": event.sequence,
        "created_at": event.created_at.astimezone(UTC).isoformat(timespec="microseconds"),
        "actor_id": event.actor_id,
        "actor_label": event.actor_label,
        "verb": event.verb,
        "target_type": event.target_type,
        "target_id": event.target_id,
        "target_label": event.target_label,
        "data": event.data,
        "request_id": event.request_id,
        "prev_hash": event.prev_hash,
    }
    encoded = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()


def _legacy_event(sequence: int, prev_hash: str, **fields: object) -> AuditEvent:
    event = AuditEvent(
        stream=LEGACY_STREAM,
        sequence=sequence,
        stream_seq=None,
        txid=None,
        created_at=datetime(2026, 11, 1, 12, 0, sequence, 123456, tzinfo=UTC),
        actor_label="system",
        verb=f"legacy.event{sequence}",
        data=json.dumps({"n": sequence, "text": "naïve"}, separators=(",", ":"), sort_keys=True),
        prev_hash=prev_hash,
        **fields,
    )
    event.hash = event.compute_hash()
    return event


def write_legacy_chain(length: int) -> list[AuditEvent]:
    """A chain as the single-chain writer left it: sequence 1..n, no stream position, no MAC, no txid."""
    events, prev = [], GENESIS_HASH
    for sequence in range(1, length + 1):
        event = _legacy_event(sequence, prev)
        event.save(force_insert=True)
        events.append(event)
        prev = event.hash
    return events


LEGACY_GOLDEN_HASH = "ba8e995bf276a94528042818523563c137aa1c8253516192883e89d26cf75fea"


def test_legacy_rows_hash_exactly_as_they_always_did():
    event = _legacy_event(3, "a" * 64, actor_id=5, target_type="workflows.workflow", target_id="9")
    assert event.compute_hash() == _legacy_hash_as_before(event)
    # A fixed row and its fixed hash: a change to the canonical form anywhere shows up here.
    assert event.compute_hash() == LEGACY_GOLDEN_HASH


def test_new_rows_hash_their_stream_and_position_instead_of_a_sequence(analyst):
    event = audit_record(actor=analyst, verb="test.stream", stream="run:3")
    moved = AuditEvent(**{f.attname: getattr(event, f.attname) for f in AuditEvent._meta.concrete_fields})
    moved.stream = "run:4"
    assert moved.compute_hash() != event.hash
    moved.stream, moved.stream_seq = "run:3", 2
    assert moved.compute_hash() != event.hash


def test_each_new_event_carries_a_mac_of_its_hash_under_a_key_the_database_lacks(analyst):
    event = audit_record(actor=analyst, verb="test.mac", target=analyst)
    assert event.mac == crypto.mac(crypto.EVENT_MAC_DOMAIN, event.hash)
    assert crypto.mac_matches(crypto.EVENT_MAC_DOMAIN, event.hash, event.mac)
    assert not crypto.mac_matches(crypto.ANCHOR_MAC_DOMAIN, event.hash, event.mac)  # domains never mix
    assert not crypto.mac_matches(crypto.EVENT_MAC_DOMAIN, event.hash, event.mac, key=b"k" * 32)


def test_a_legacy_chain_keeps_verifying_beside_new_streams(analyst):
    legacy = write_legacy_chain(4)
    audit_record(actor=analyst, verb="test.after", stream="run:1")
    report = audit_verify()
    assert report.intact, report.problems
    assert report.legacy_events == len(legacy)


def test_a_broken_legacy_chain_is_reported_by_its_sequence(db):
    legacy = write_legacy_chain(3)
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER USER")
        cursor.execute("UPDATE audit_auditevent SET verb = 'legacy.forged' WHERE id = %s", [legacy[1].pk])
        cursor.execute("ALTER TABLE audit_auditevent ENABLE TRIGGER USER")
    report = audit_verify()
    assert [str(problem) for problem in report.problems] == [
        f"stream legacy event #2 (id {legacy[1].pk}): content does not match its hash: the row was altered"
    ]


def test_the_verify_audit_command_reports_an_intact_trail(three_events, capsys):
    call_command("verify_audit")
    out = capsys.readouterr().out
    assert f"Audit trail intact: {AuditEvent.objects.count()} events in " in out
    assert "no signed checkpoint yet" in out


# --- append-only -----------------------------------------------------------------------------------------------


def test_update_delete_and_truncate_are_refused_by_the_database(three_events):
    target, verb = three_events[1].pk, three_events[1].verb
    assert audit_anchor_write() is not None  # row triggers fire only for rows that exist
    for statement in (
        f"UPDATE audit_auditevent SET verb = 'forged' WHERE id = {target}",
        f"DELETE FROM audit_auditevent WHERE id = {target}",
        "TRUNCATE audit_auditevent",
        "UPDATE audit_auditanchor SET hash = 'x'",
        "TRUNCATE audit_auditanchor",
    ):
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(statement)
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(pk=target).update(verb="forged")
    assert AuditEvent.objects.get(pk=target).verb == verb


def test_history_tables_are_append_only(claims_workflow):
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("UPDATE workflows_historicalworkflow SET name = 'x'")


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


def test_flush_is_refused_outside_the_test_suite(settings, three_events):
    settings.AIOS_ENV = "production"
    with pytest.raises(CommandError, match="test suite only"):
        call_command("flush", interactive=False)
    assert AuditEvent.objects.count() >= len(three_events)


# --- concurrency: who waits for whom ----------------------------------------------------------------------------


class OpenTransaction(threading.Thread):
    """A connection of its own that runs `work` in a transaction and keeps it open until `finish()`."""

    def __init__(self, work, *, lock_timeout: str = "") -> None:
        super().__init__(daemon=True)
        self.work, self.lock_timeout = work, lock_timeout
        self.done_work, self.release = threading.Event(), threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with transaction.atomic():
                if self.lock_timeout:
                    with connection.cursor() as cursor:
                        cursor.execute(f"SET LOCAL lock_timeout = '{self.lock_timeout}'")
                self.work()
                self.done_work.set()
                self.release.wait(timeout=60)
        except BaseException as error:  # reported to the test
            self.error = error
        finally:
            self.done_work.set()
            connection.close()

    def finish(self) -> None:
        self.release.set()
        self.join(timeout=30)
        assert not self.is_alive()


def _runs(workflow, count: int):
    from apps.runs.models import Run

    version = workflow.versions.get()
    return [Run.objects.create(workflow=workflow, version=version, status="running") for _ in range(count)]


def _audit_under_run_lock(run_id: int, verb: str):
    from apps.runs.models import Run

    def work() -> None:
        run = Run.objects.select_for_update(of=("self",), no_key=True).get(pk=run_id)
        audit_record(actor=None, verb=verb, target=run)

    return work


@pytest.mark.django_db(transaction=True)
def test_audited_transactions_on_different_runs_do_not_wait_for_each_other(claims_workflow):
    """With the global chain lock, the second transaction would wait for the first to commit; here it must
    finish its audit while the first is still open (a 2 s lock timeout turns any wait into an error)."""
    first_run, second_run = _runs(claims_workflow, 2)
    first = OpenTransaction(_audit_under_run_lock(first_run.pk, "test.first_open"))
    first.start()
    assert first.done_work.wait(timeout=30) and first.error is None, first.error
    second = OpenTransaction(_audit_under_run_lock(second_run.pk, "test.second"), lock_timeout="2s")
    second.start()
    finished_while_first_open = second.done_work.wait(timeout=10)
    second.finish()
    first.finish()
    assert finished_while_first_open and second.error is None, second.error
    assert [e.stream for e in AuditEvent.objects.filter(verb__startswith="test.").order_by("id")] == [
        f"run:{first_run.pk}",
        f"run:{second_run.pk}",
    ]
    assert audit_verify().intact


@pytest.mark.django_db(transaction=True)
def test_a_low_rate_stream_serialises_its_own_writers_only(analyst, reviewer):
    holder = OpenTransaction(lambda: audit_record(actor=analyst, verb="test.hold", target=analyst))
    holder.start()
    assert holder.done_work.wait(timeout=30) and holder.error is None
    other_stream = OpenTransaction(
        lambda: audit_record(actor=reviewer, verb="test.other", target=reviewer), lock_timeout="2s"
    )
    same_stream = OpenTransaction(
        lambda: audit_record(actor=analyst, verb="test.same", target=analyst), lock_timeout="500ms"
    )
    other_stream.start()
    same_stream.start()
    other_stream.finish()
    same_stream.finish()
    holder.finish()
    assert other_stream.error is None
    assert isinstance(same_stream.error, OperationalError) and "lock timeout" in str(same_stream.error)


def _waiting_inserts() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query LIKE 'INSERT INTO \"audit_auditevent\"%%'"
        )
        return int(cursor.fetchone()[0])


@pytest.mark.django_db(transaction=True)
def test_two_writers_that_break_the_run_lock_rule_cannot_fork_the_stream():
    """No lock is taken for a run stream: the caller's run lock orders it. Two callers that skip the run lock
    both read the same head; the unique (stream, stream_seq) index lets only one of them append."""

    def write() -> None:
        audit_record(actor=None, verb="test.unlocked", stream="run:999")

    first = OpenTransaction(write)
    first.start()
    assert first.done_work.wait(timeout=30) and first.error is None, first.error
    second = OpenTransaction(write)
    second.start()
    # The second read head 0 too (the first has not committed) and now waits on the first's index entry.
    deadline = time.monotonic() + 20
    while _waiting_inserts() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not second.done_work.is_set()
    first.finish()
    second.finish()
    assert isinstance(second.error, IntegrityError) and "audit_event_stream_seq_unique" in str(second.error)
    assert list(AuditEvent.objects.filter(stream="run:999").values_list("stream_seq", flat=True)) == [1]
    assert audit_verify().intact


WRITER_THREADS, EVENTS_PER_THREAD = 8, 25


@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_keep_every_stream_intact():
    """Writers in separate connections share one low-rate stream and each own a run stream: the shared
    stream's lock orders its writers, so every event links to its true predecessor and no position is
    taken twice; the run streams need no lock at all."""
    start = threading.Barrier(WRITER_THREADS)
    failures: list[BaseException] = []

    def write(thread: int) -> None:
        try:
            start.wait(timeout=30)
            for index in range(EVENTS_PER_THREAD):
                with transaction.atomic():
                    audit_record(actor=None, verb="test.concurrent", data={"thread": thread, "index": index})
                    audit_record(actor=None, verb="test.own", stream=f"run:{1000 + thread}")
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

    shared = list(AuditEvent.objects.filter(stream="system").order_by("stream_seq"))
    assert [event.stream_seq for event in shared] == list(range(1, WRITER_THREADS * EVENTS_PER_THREAD + 1))
    assert all(after.prev_hash == before.hash for before, after in pairwise(shared))
    pairs = {(data["thread"], data["index"]) for data in (event.data_dict for event in shared)}
    assert pairs == {(thread, index) for thread in range(WRITER_THREADS) for index in range(EVENTS_PER_THREAD)}
    for thread in range(WRITER_THREADS):
        positions = AuditEvent.objects.filter(stream=f"run:{1000 + thread}").values_list("stream_seq", flat=True)
        assert sorted(positions) == list(range(1, EVENTS_PER_THREAD + 1))
    report = audit_verify()
    assert report.intact, report.problems
    assert report.streams_checked == 1 + WRITER_THREADS
