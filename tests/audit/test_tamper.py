"""A2: tampering with the audit trail as the database owner, against the real database, and its detection.

Each test builds the same small trail the way production does (events in their own transactions, anchors by
the anchor writer, a signed checkpoint file outside the database), then does what someone with owner rights
but without AIOS_AUDIT_SIGNING_KEY could do: switch the append-only triggers off, change rows, switch them
back on. The verifier must name what was done and where. The seven tamperings of the issue: an edited row,
a deleted row, an inserted row, reordered rows, a cut tail, a consistent rewrite of the tail with recomputed
hashes, forged appended events with valid hashes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.utils import timezone

from apps.audit import crypto
from apps.audit.models import AuditAnchor, AuditEvent, event_hash, iso_utc
from apps.audit.selectors import audit_verify
from apps.audit.services import audit_anchor_write, audit_checkpoint_write, audit_record
from tests.support.figures import record_figure

pytestmark = pytest.mark.django_db(transaction=True)

RUN = "run:101"
ATTACKER_KEY = b"not the installation audit key!!"  # whatever it tries, it lacks the real one


@pytest.fixture(autouse=True)
def _checkpoints_in_tmp(settings, tmp_path):
    settings.AIOS_AUDIT_CHECKPOINT_DIR = tmp_path / "checkpoints"


@dataclass
class Trail:
    checkpoint: Path
    run_ids: dict[int, int]  # stream position in RUN -> event id

    def event(self, position: int) -> AuditEvent:
        return AuditEvent.objects.get(stream=RUN, stream_seq=position)


@pytest.fixture
def trail(analyst) -> Trail:
    """run:101 with 8 events (1-6 in anchor #1, 7-8 in anchor #2), another run, a user's stream; a checkpoint
    of anchor #2; then one more event that no anchor or checkpoint covers yet."""
    for step in range(1, 7):
        audit_record(actor=None, verb="step.succeeded", stream=RUN, data={"step": f"s{step}"})
    audit_record(actor=None, verb="run.started", stream="run:102")
    audit_record(actor=analyst, verb="user.logged_in", target=analyst)
    assert audit_anchor_write() is not None
    for step in (7, 8):
        audit_record(actor=None, verb="step.succeeded", stream=RUN, data={"step": f"s{step}"})
    checkpoint = audit_checkpoint_write()  # writes anchor #2, then signs it
    assert checkpoint is not None and AuditAnchor.objects.count() == 2
    audit_record(actor=None, verb="run.succeeded", stream="run:102")
    report = audit_verify()
    assert report.intact, report.problems
    return Trail(checkpoint, dict(AuditEvent.objects.filter(stream=RUN).values_list("stream_seq", "id")))


@contextmanager
def as_owner() -> Iterator[object]:
    """The owner's power the application role lacks: switch the append-only triggers off, and back on."""
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER USER")
        cursor.execute("ALTER TABLE audit_auditanchor DISABLE TRIGGER USER")
        try:
            yield cursor
        finally:
            cursor.execute("ALTER TABLE audit_auditevent ENABLE TRIGGER USER")
            cursor.execute("ALTER TABLE audit_auditanchor ENABLE TRIGGER USER")


def forged_hash(event: AuditEvent) -> str:
    """What an attacker who read the source computes: a perfectly valid hash for the forged content."""
    return event_hash(
        stream=event.stream,
        position=event.stream_seq,
        created_at=event.created_at,
        actor_id=event.actor_id,
        actor_label=event.actor_label,
        verb=event.verb,
        target_type=event.target_type,
        target_id=event.target_id,
        target_label=event.target_label,
        data=event.data,
        request_id=event.request_id,
        prev_hash=event.prev_hash,
    )


def insert_forged(cursor: object, *, position: int, prev_hash: str, verb: str, data: str) -> AuditEvent:
    event = AuditEvent(
        stream=RUN,
        stream_seq=position,
        created_at=timezone.now(),
        actor_label="system",
        verb=verb,
        data=data,
        prev_hash=prev_hash,
    )
    event.hash = forged_hash(event)
    event.mac = crypto.mac(crypto.EVENT_MAC_DOMAIN, event.hash, key=ATTACKER_KEY)  # the best it can do
    event.save(force_insert=True)
    return event


def problems() -> list[str]:
    report = audit_verify()
    detected = [str(problem) for problem in report.problems]
    with pytest.raises(CommandError, match="AUDIT TRAIL BROKEN") as failure:
        call_command("verify_audit")
    for problem in detected:  # the command prints every problem the selector found
        assert problem in str(failure.value)
    return detected


def detected(name: str, found: list[str], expected: str) -> None:
    """Record the figure ("A2 tamper edited_row detected 1/1 ok") and check the verifier named it right."""
    hit = any(expected in problem for problem in found)
    record_figure(f"A2 tamper {name} detected {int(hit)}/1 {'ok' if hit else 'miss'}")
    assert hit, found


def test_an_edited_row_fails_its_hash(trail):
    with as_owner() as cursor:
        cursor.execute('UPDATE audit_auditevent SET data = \'{"step":"forged"}\' WHERE id = %s', [trail.run_ids[3]])
    found = problems()
    detected(
        "edited_row",
        found,
        f"stream {RUN} event #3 (id {trail.run_ids[3]}): content does not match its hash: the row was altered",
    )


def test_a_deleted_row_leaves_a_gap(trail):
    with as_owner() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE id = %s", [trail.run_ids[3]])
    found = problems()
    detected("deleted_row", found, f"stream {RUN} event #3: event #3 is missing: the stream jumps from #2 to #4")


def test_an_inserted_row_fails_its_mac(trail):
    """Make room at #4 (shift #4-#8 up by one), insert a row linked to #3 with a valid hash."""
    with as_owner() as cursor:
        cursor.execute(
            "UPDATE audit_auditevent SET stream_seq = stream_seq + 1000 WHERE stream = %s AND stream_seq >= 4", [RUN]
        )
        cursor.execute(
            "UPDATE audit_auditevent SET stream_seq = stream_seq - 999 WHERE stream = %s AND stream_seq > 1000", [RUN]
        )
        forged = insert_forged(
            cursor, position=4, prev_hash=trail.event(3).hash, verb="step.succeeded", data='{"step":"extra"}'
        )
    found = problems()
    detected(
        "inserted_row",
        found,
        f"stream {RUN} event #4 (id {forged.pk}): its MAC does not verify: the event was forged",
    )


def test_reordered_rows_break_the_links(trail):
    with as_owner() as cursor:
        for position, temporary in ((3, 1003), (4, 3), (1003, 4)):
            cursor.execute(
                "UPDATE audit_auditevent SET stream_seq = %s WHERE stream = %s AND stream_seq = %s",
                [temporary, RUN, position],
            )
    found = problems()
    detected(
        "reordered_rows",
        found,
        f"stream {RUN} event #3 (id {trail.run_ids[4]}): prev_hash does not match the hash of event #2: "
        "rows were reordered",
    )


def test_a_cut_tail_is_caught_by_the_anchor_that_recorded_it(trail):
    with as_owner() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE stream = %s AND stream_seq >= 7", [RUN])
    found = problems()
    detected(
        "cut_tail",
        found,
        f"stream {RUN} event #7: missing: anchor #2 recorded the stream up to #8, but it now ends at #6",
    )


def test_a_tail_cut_with_its_anchors_is_caught_by_the_signed_checkpoint(trail):
    with as_owner() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE stream = %s AND stream_seq >= 7", [RUN])
        cursor.execute("DELETE FROM audit_auditanchor WHERE seq >= 2")
    found = problems()
    detected(
        "cut_tail_and_anchors",
        found,
        f"checkpoint {trail.checkpoint}: it signs anchor #2 (hash ",
    )
    assert any("the database's anchors end at #1: anchor #2 and everything after it are missing" in p for p in found)


def test_a_consistent_rewrite_of_the_tail_fails_the_macs_anchors_and_checkpoint(trail):
    """Rewrite #7 and #8 with other content, recompute their hashes and links, and rebuild anchor #2 over the
    new head so that every hash in the database is consistent again."""
    with as_owner() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE stream = %s AND stream_seq >= 7", [RUN])
        prev = trail.event(6).hash
        for position in (7, 8):
            prev = insert_forged(
                cursor, position=position, prev_hash=prev, verb="step.failed", data=f'{{"step":"s{position}"}}'
            ).hash
        anchor = AuditAnchor.objects.get(seq=2)
        anchor.heads = {**anchor.heads, RUN: [8, prev]}
        anchor.merkle_root = anchor.compute_merkle_root()
        anchor.hash = anchor.compute_hash()
        anchor.mac = crypto.mac(crypto.ANCHOR_MAC_DOMAIN, anchor.hash, key=ATTACKER_KEY)
        cursor.execute(
            "UPDATE audit_auditanchor SET heads = %s::jsonb, merkle_root = %s, hash = %s, mac = %s WHERE seq = 2",
            [crypto.canonical_json(anchor.heads), anchor.merkle_root, anchor.hash, anchor.mac],
        )
    first_rewritten = AuditEvent.objects.get(stream=RUN, stream_seq=7)
    found = problems()
    detected(
        "consistent_rewrite",
        found,
        f"stream {RUN} event #7 (id {first_rewritten.pk}): its MAC does not verify",
    )
    assert any(p.startswith("anchor #2 ") and "its MAC does not verify" in p for p in found), found
    assert any(
        p.startswith(f"checkpoint {trail.checkpoint}: it signs anchor #2") and "the anchors were rewritten" in p
        for p in found
    ), found


def test_forged_events_appended_with_valid_hashes_fail_their_macs(trail):
    with as_owner() as cursor:
        prev = trail.event(8).hash
        forged = []
        for position in (9, 10):
            event = insert_forged(
                cursor, position=position, prev_hash=prev, verb="approval.approved", data='{"reason":"forged"}'
            )
            forged.append(event)
            prev = event.hash
    found = problems()
    detected(
        "forged_appended",
        found,
        f"stream {RUN} event #9 (id {forged[0].pk}): its MAC does not verify: the event was forged",
    )


def test_the_trail_is_intact_again_when_no_one_touched_it(trail):
    """The control: the fixture's trail, verified through the command, with its checkpoint."""
    call_command("verify_audit", require_checkpoint=True)
    assert iso_utc(AuditAnchor.objects.get(seq=2).created_at) in trail.checkpoint.read_text()
