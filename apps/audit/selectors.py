"""Reading and verifying the audit trail.

`audit_verify` checks, in one consistent database snapshot:
1. every stream: positions 1, 2, 3 with no gap, each `prev_hash` the previous event's hash, each hash
   recomputing from the row, each MAC verifying under the audit key (the legacy stream, which predates
   MACs, is checked as it always was: by its global sequence, links and hashes);
2. every anchor: seq 1, 2, 3 with no gap, links, hash, MAC, the Merkle root recomputing from its heads, and
   every head it records still present in its stream with the same hash;
3. the newest signed checkpoint outside the database: its signature under this installation's key, and the
   anchor it signs present with the same hash and time.

What each tampering trips: an edited row its hash; a deleted row a position gap (or, at a stream's end, an
anchored head that is gone); an inserted or forged row its MAC (and the link after it); reordered rows a
link; a cut tail an anchored head, or, when the anchors were cut too, the checkpoint; a consistent rewrite
with recomputed hashes the MACs, the anchors and the checkpoint.

What it cannot see: events (and anchors) written after the newest checkpoint can be cut, all of them from
some point on, without a trace, because nothing outside the database remembers them yet; and someone who
holds AIOS_AUDIT_SIGNING_KEY as well as the database can rewrite anything not yet covered by a checkpoint
file they cannot alter. Keep the key out of the database's reach and the checkpoints on another volume.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.contrib.auth.models import AbstractUser, AnonymousUser
from django.db import connection, transaction
from django.db.models import QuerySet

from apps.audit import crypto
from apps.audit.models import (
    GENESIS_HASH,
    LEGACY_STREAM,
    AuditAnchor,
    AuditEvent,
    AuditVerification,
    event_hash,
    iso_utc,
)
from apps.audit.services import CHECKPOINT_FORMAT, checkpoint_directory
from apps.core.permissions import restrict

PAGE_SIZE = 5000
# Anchors carry their heads (hundreds after a busy interval): fewer per page keeps memory flat.
ANCHOR_PAGE_SIZE = 200
MAX_PROBLEMS = 20


@dataclass(frozen=True)
class AuditProblem:
    """One broken thing: `where` names it (a stream and position, an anchor, a checkpoint file)."""

    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass
class AuditReport:
    """The outcome of `audit_verify`; `problems` is empty when the trail is intact."""

    events_checked: int = 0
    streams_checked: int = 0
    legacy_events: int = 0
    anchors_checked: int = 0
    last_anchor: tuple[int, str] | None = None
    checkpoint: str = ""
    problems: list[AuditProblem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not self.problems

    def add(self, where: str, reason: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(AuditProblem(where, reason))


def audit_event_list_for_target(*, target_type: str, target_id: str) -> QuerySet[AuditEvent]:
    """The events about one object, oldest first. Callers must already have checked access to it.

    By id, not created_at: ids come from one sequence at insert time, so within a stream (whose writers are
    serialised) they follow the stream's order even when the writers' clocks disagree."""
    return AuditEvent.objects.filter(target_type=target_type, target_id=target_id).order_by("id")


def audit_verify(*, checkpoint_dir: Path | None = None, require_checkpoint: bool = False) -> AuditReport:
    """Verify streams, anchors and the newest signed checkpoint (see the module docstring for what each
    check catches); reports at most one problem per stream or check and at most MAX_PROBLEMS in all.

    Runs in one REPEATABLE READ snapshot when called outside a transaction, so events and anchors written
    meanwhile never look like tampering. Reads stream by stream in index order, PAGE_SIZE rows at a time,
    keeping only the current stream's state in memory: time grows linearly with the trail, memory does not.
    """
    report = AuditReport()
    directory = checkpoint_dir or checkpoint_directory()
    # Chosen before the snapshot: a checkpoint is written only after its anchor committed, so the snapshot
    # taken next is sure to contain the anchor of any checkpoint already on disk.
    newest_checkpoint = _newest_checkpoint(directory)
    # SET TRANSACTION is allowed only as a transaction's first statement: inside a caller's transaction (a
    # test case), its snapshot rules apply instead.
    opens_transaction = not connection.in_atomic_block
    with transaction.atomic():
        if opens_transaction:
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        key = crypto.mac_key()
        _verify_streams(report, key)
        _verify_legacy(report)
        _verify_anchors(report, key)
        _verify_anchored_heads(report)
        _verify_checkpoint(report, directory, newest_checkpoint, require_checkpoint)
    return report


# --- streams -------------------------------------------------------------------------------------------------

_EVENT_COLUMNS = (
    "id, stream, stream_seq, created_at, actor_id, actor_label, verb, target_type, target_id, target_label, "
    "data, request_id, prev_hash, hash, mac"
)


def _stream_rows() -> Iterator[tuple[Any, ...]]:
    """Every non-legacy event in (stream, stream_seq) order, by keyset pages over the unique index: no
    server-side cursor, so it also works through PgBouncer in transaction mode."""
    after: tuple[str, int] = ("", 0)
    with connection.cursor() as cursor:
        while True:
            cursor.execute(
                f"SELECT {_EVENT_COLUMNS} FROM audit_auditevent "
                "WHERE (stream, stream_seq) > (%s, %s) AND stream <> %s ORDER BY stream, stream_seq LIMIT %s",
                [after[0], after[1], LEGACY_STREAM, PAGE_SIZE],
            )
            rows = cursor.fetchall()
            yield from rows
            if len(rows) < PAGE_SIZE:
                return
            after = (rows[-1][1], rows[-1][2])


def _row_hash(row: tuple[Any, ...], position: int | None) -> str:
    (_, stream, _, created_at, actor_id, actor_label, verb, target_type, target_id, target_label, data, request_id,
     prev_hash, *_) = row  # fmt: skip
    return event_hash(
        stream=stream,
        position=position,
        created_at=created_at,
        actor_id=actor_id,
        actor_label=actor_label,
        verb=verb,
        target_type=target_type,
        target_id=target_id,
        target_label=target_label,
        data=data,
        request_id=request_id,
        prev_hash=prev_hash,
    )


def _verify_streams(report: AuditReport, key: bytes) -> None:
    stream: str | None = None
    expected_seq, expected_prev, broken = 1, GENESIS_HASH, False
    for row in _stream_rows():
        event_id, row_stream, seq, prev_hash, hash_, mac = row[0], row[1], row[2], row[12], row[13], row[14]
        if row_stream != stream:
            stream, expected_seq, expected_prev, broken = row_stream, 1, GENESIS_HASH, False
            report.streams_checked += 1
        report.events_checked += 1
        if broken:
            continue
        where = f"stream {stream} event #{seq} (id {event_id})"
        reason = ""
        if seq != expected_seq:
            missing = f"#{expected_seq}" if seq == expected_seq + 1 else f"#{expected_seq}–#{seq - 1}"
            reason = f"event {missing} is missing: the stream jumps from #{expected_seq - 1} to #{seq}"
            where = f"stream {stream} event {missing}"
        elif prev_hash != expected_prev:
            reason = (
                f"prev_hash does not match the hash of event #{seq - 1}: rows were reordered, inserted or removed"
                if seq > 1
                else "the first event of the stream does not start from the genesis hash"
            )
        elif _row_hash(row, seq) != hash_:
            reason = "content does not match its hash: the row was altered"
        elif not crypto.mac_matches(crypto.EVENT_MAC_DOMAIN, hash_, mac, key):
            reason = (
                "its MAC does not verify: the event was forged, or rewritten with recomputed hashes, by someone "
                "without the audit key"
            )
        if reason:
            report.add(where, reason)
            broken = True
            continue
        expected_seq, expected_prev = seq + 1, hash_


def _verify_legacy(report: AuditReport) -> None:
    """The stream of rows written before streams existed, checked exactly as the single chain always was."""
    expected_sequence, expected_prev, after = 1, GENESIS_HASH, 0
    with connection.cursor() as cursor:
        while True:
            cursor.execute(
                f"SELECT {_EVENT_COLUMNS}, sequence FROM audit_auditevent WHERE stream = %s AND sequence > %s "
                "ORDER BY sequence LIMIT %s",
                [LEGACY_STREAM, after, PAGE_SIZE],
            )
            rows = cursor.fetchall()
            for row in rows:
                sequence, event_id = row[15], row[0]
                where = f"stream {LEGACY_STREAM} event #{sequence} (id {event_id})"
                reason = ""
                if sequence != expected_sequence:
                    reason = f"sequence jumps from #{expected_sequence - 1} to #{sequence}: events are missing"
                elif row[12] != expected_prev:
                    reason = f"prev_hash does not match the hash of event #{sequence - 1}"
                elif _row_hash(row, sequence) != row[13]:
                    reason = "content does not match its hash: the row was altered"
                if reason:
                    report.add(where, reason)
                    return
                report.legacy_events += 1
                expected_sequence, expected_prev = sequence + 1, row[13]
            if len(rows) < PAGE_SIZE:
                break
            after = rows[-1][15]
    if report.legacy_events:
        report.streams_checked += 1
        report.events_checked += report.legacy_events


# --- anchors -------------------------------------------------------------------------------------------------


def _anchor_rows() -> Iterator[AuditAnchor]:
    after = 0
    while True:
        page = list(AuditAnchor.objects.filter(seq__gt=after).order_by("seq")[:ANCHOR_PAGE_SIZE])
        yield from page
        if len(page) < ANCHOR_PAGE_SIZE:
            return
        after = page[-1].seq


def _verify_anchors(report: AuditReport, key: bytes) -> None:
    expected_seq, expected_prev = 1, GENESIS_HASH
    for anchor in _anchor_rows():
        where = f"anchor #{anchor.seq} (id {anchor.pk})"
        reason = ""
        if anchor.seq != expected_seq:
            reason = f"anchors #{expected_seq}–#{anchor.seq - 1} are missing"
            where = f"anchor #{expected_seq}"
        elif anchor.prev_hash != expected_prev:
            reason = f"prev_hash does not match the hash of anchor #{anchor.seq - 1}"
        elif anchor.compute_merkle_root() != anchor.merkle_root:
            reason = "its Merkle root does not match the heads it records: the heads were altered"
        elif anchor.compute_hash() != anchor.hash:
            reason = "content does not match its hash: the anchor was altered"
        elif not crypto.mac_matches(crypto.ANCHOR_MAC_DOMAIN, anchor.hash, anchor.mac, key):
            reason = "its MAC does not verify: the anchor was forged or rewritten by someone without the audit key"
        if reason:
            report.add(where, reason)
            return
        report.anchors_checked += 1
        report.last_anchor = (anchor.seq, anchor.hash)
        expected_seq, expected_prev = anchor.seq + 1, anchor.hash


# Every (stream, seq, hash) an anchor records, joined to the event at that position: a missing or different
# event is an anchored event that was removed or changed. One hash join in the database instead of one lookup
# per head, which is what keeps this linear for millions of heads.
_ANCHORED_HEAD_MISMATCHES_SQL = """
SELECT a.seq, h.key, (h.value->>0)::bigint, h.value->>1, e.hash
FROM audit_auditanchor a
CROSS JOIN LATERAL jsonb_each(a.heads) h
LEFT JOIN audit_auditevent e
    ON e.stream = h.key AND e.stream_seq = (h.value->>0)::bigint AND h.key <> %(legacy)s
LEFT JOIN audit_auditevent l
    ON l.stream = %(legacy)s AND l.sequence = (h.value->>0)::bigint AND h.key = %(legacy)s
WHERE coalesce(e.hash, l.hash) IS DISTINCT FROM h.value->>1
ORDER BY a.seq, h.key
LIMIT %(limit)s
"""


def _verify_anchored_heads(report: AuditReport) -> None:
    with connection.cursor() as cursor:
        cursor.execute(_ANCHORED_HEAD_MISMATCHES_SQL, {"legacy": LEGACY_STREAM, "limit": MAX_PROBLEMS})
        mismatches = cursor.fetchall()
        for anchor_seq, stream, seq, anchored_hash, found_hash in mismatches:
            if found_hash is not None:
                report.add(
                    f"stream {stream} event #{seq}",
                    f"anchor #{anchor_seq} recorded it with hash {anchored_hash[:12]}…, the database now has "
                    f"{found_hash[:12]}…: the event was rewritten",
                )
                continue
            column = "sequence" if stream == LEGACY_STREAM else "stream_seq"
            cursor.execute(f"SELECT max({column}) FROM audit_auditevent WHERE stream = %s", [stream])
            last = cursor.fetchone()[0] or 0
            first_missing = last + 1 if last < seq else seq
            report.add(
                f"stream {stream} event #{first_missing}",
                f"missing: anchor #{anchor_seq} recorded the stream up to #{seq}, but it now ends at #{last} "
                "(its tail was cut)"
                if last < seq
                else f"missing: anchor #{anchor_seq} recorded it as the stream's head",
            )


# --- the signed checkpoint ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint file as read from disk: `payload` is what was signed."""

    path: Path
    payload: dict[str, Any]
    signature: str


def checkpoint_files(directory: Path) -> list[Path]:
    """The directory's checkpoint files, oldest anchor first."""
    if not directory.is_dir():
        return []
    return sorted(directory.glob("checkpoint-*.json"))


def checkpoint_read(path: Path) -> Checkpoint:
    """Parse one checkpoint file; ValueError when it is not one."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        payload, signature = document["payload"], document["signature"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"unreadable ({error})") from None
    if not isinstance(payload, dict) or not isinstance(signature, str):
        raise ValueError("not a checkpoint document")
    return Checkpoint(path, payload, signature)


def _newest_checkpoint(directory: Path) -> Path | None:
    files = checkpoint_files(directory)
    return files[-1] if files else None


def _verify_checkpoint(report: AuditReport, directory: Path, path: Path | None, required: bool) -> None:
    if path is None:
        message = (
            f"no signed checkpoint in {directory}: a tail cut from streams and anchors together would go unseen "
            "(run `manage.py audit_checkpoint`, and schedule it)"
        )
        if required:
            report.add(f"checkpoint directory {directory}", message)
        elif report.last_anchor is not None:
            report.warnings.append(message)
        return
    where = f"checkpoint {path}"
    try:
        checkpoint = checkpoint_read(path)
    except ValueError as error:
        report.add(where, str(error))
        return
    payload = checkpoint.payload
    if payload.get("format") != CHECKPOINT_FORMAT:
        report.add(where, f"unknown format {payload.get('format')!r}")
        return
    if payload.get("key_id") != crypto.key_id():
        report.add(
            where,
            f"signed by key {payload.get('key_id')}, but this installation's key is {crypto.key_id()}: "
            "AIOS_AUDIT_SIGNING_KEY changed, or the file was not written by this installation",
        )
        return
    if not crypto.signature_valid(crypto.canonical_json(payload), checkpoint.signature):
        report.add(where, "its signature does not verify: the file was altered")
        return
    database = str(connection.settings_dict["NAME"])
    if payload.get("database") != database:
        report.add(where, f"it was written for database {payload.get('database')!r}, not {database!r}")
        return
    anchor_seq, signed_hash = int(payload["anchor_seq"]), str(payload["anchor_hash"])
    signed = f"anchor #{anchor_seq} (hash {signed_hash[:12]}…, {payload.get('anchor_created_at')})"
    anchor = AuditAnchor.objects.filter(seq=anchor_seq).defer("heads").first()
    if anchor is None:
        newest = AuditAnchor.objects.order_by("-seq").values_list("seq", flat=True).first()
        first_missing = (newest or 0) + 1
        report.add(
            where,
            f"it signs {signed}, but the database's anchors end at #{newest or 0}: anchor #{first_missing} "
            f"and everything after it are missing, with the events they anchored (the tail was cut)",
        )
        return
    if anchor.hash != signed_hash or iso_utc(anchor.created_at) != payload.get("anchor_created_at"):
        report.add(
            where,
            f"it signs {signed}, but the database's anchor #{anchor_seq} has hash {anchor.hash[:12]}… "
            f"({iso_utc(anchor.created_at)}): the anchors were rewritten",
        )
        return
    # Recompute too: an anchor row whose stored hash matches the signature but whose content does not is
    # already reported by the anchor pass; this keeps the checkpoint's verdict self-contained.
    if anchor.compute_hash() != anchor.hash:
        report.add(where, f"anchor #{anchor_seq} no longer matches its own hash")
        return
    report.checkpoint = f"{path} signs anchor #{anchor_seq}, signed at {payload.get('signed_at')}"


def audit_public_key() -> dict[str, str]:
    """The checkpoint key's public half and id, for anyone who verifies checkpoints independently."""
    return {"key_id": crypto.key_id(), "public_key": crypto.public_key_hex(), "algorithm": "Ed25519"}


# --- the viewer -----------------------------------------------------------------------------------------------

VIEW_PERMISSION = "audit.view_auditevent"

# Distinct values of an indexed column by a loose index scan: one index probe per distinct value, instead of
# reading every row (there are a few dozen verbs and target types, and millions of events).
_DISTINCT_SQL = """
WITH RECURSIVE walk(value) AS (
    (SELECT {column} FROM audit_auditevent ORDER BY {column} LIMIT 1)
    UNION ALL
    SELECT (SELECT {column} FROM audit_auditevent WHERE {column} > walk.value ORDER BY {column} LIMIT 1)
    FROM walk WHERE walk.value IS NOT NULL
)
SELECT value FROM walk WHERE value IS NOT NULL AND value <> ''
"""


def audit_may_view(user: AbstractUser | AnonymousUser) -> bool:
    """Whether `user` may read the audit trail (admins and auditors): everyone else is shown a 404."""
    return bool(user.is_authenticated and user.is_active and user.has_perm(VIEW_PERMISSION))


def audit_events_for_user(user: AbstractUser | AnonymousUser) -> QuerySet[AuditEvent]:
    """The events `user` may read: all of them for holders of the role permission, none otherwise."""
    return restrict(AuditEvent.objects.all(), user, VIEW_PERMISSION)


def audit_event_values(column: str) -> list[str]:
    """The distinct non-empty values of `verb` or `target_type`, sorted (the viewer's filter choices)."""
    if column not in ("verb", "target_type"):
        raise ValueError(column)
    with connection.cursor() as cursor:
        cursor.execute(_DISTINCT_SQL.format(column=column))
        return [row[0] for row in cursor.fetchall()]


def audit_event_neighbours(event: AuditEvent) -> tuple[AuditEvent | None, AuditEvent | None]:
    """The events just before and after `event` in its stream."""
    column = "sequence" if event.is_legacy else "stream_seq"
    position = event.position or 0
    around = {
        row.position: row
        for row in AuditEvent.objects.filter(stream=event.stream, **{f"{column}__in": [position - 1, position + 1]})
    }
    return around.get(position - 1), around.get(position + 1)


@dataclass(frozen=True)
class Coverage:
    """The first anchor that records `event`'s stream at or past its position, and the newest checkpoint's
    anchor: the event is provable outside the database once `signed` is true."""

    anchor_seq: int
    anchor_created_at: Any
    signed: bool


def audit_event_coverage(event: AuditEvent, newest_signed_anchor: int | None) -> Coverage | None:
    """Which anchor first covers `event`, or None while none does yet (anchors come every few seconds).

    Looks from a little before the event's time onwards, through the anchors' time index: the anchor that
    covers an event is written after it commits, give or take the clocks of the hosts involved.
    """
    key = LEGACY_STREAM if event.is_legacy else event.stream
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT seq, created_at FROM audit_auditanchor WHERE created_at >= %s AND heads ? %s "
            "AND ((heads -> %s) ->> 0)::bigint >= %s ORDER BY created_at, seq LIMIT 1",
            [event.created_at - timedelta(minutes=5), key, key, event.position or 0],
        )
        row = cursor.fetchone()
    if row is None:
        return None
    return Coverage(
        anchor_seq=row[0],
        anchor_created_at=row[1],
        signed=newest_signed_anchor is not None and row[0] <= newest_signed_anchor,
    )


@dataclass(frozen=True)
class CheckpointSummary:
    """The newest signed checkpoint on disk, as the viewer shows it."""

    file: str
    anchor_seq: int | None
    anchor_created_at: str
    signed_at: str
    key_id: str
    signature_valid: bool
    problem: str = ""


def audit_newest_checkpoint() -> CheckpointSummary | None:
    """The newest checkpoint file of this database, read and its signature checked; None when there is none."""
    files = checkpoint_files(checkpoint_directory())
    if not files:
        return None
    try:
        checkpoint = checkpoint_read(files[-1])
    except ValueError as error:
        return CheckpointSummary(files[-1].name, None, "", "", "", False, problem=str(error))
    payload = checkpoint.payload
    valid = crypto.signature_valid(crypto.canonical_json(payload), checkpoint.signature)
    try:
        anchor_seq: int | None = int(payload.get("anchor_seq"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        anchor_seq = None
    return CheckpointSummary(
        file=files[-1].name,
        anchor_seq=anchor_seq,
        anchor_created_at=str(payload.get("anchor_created_at") or ""),
        signed_at=str(payload.get("signed_at") or ""),
        key_id=str(payload.get("key_id") or ""),
        signature_valid=valid,
        problem="" if valid else "its signature does not verify under this installation's key",
    )


def audit_verifications(limit: int = 10) -> list[AuditVerification]:
    """The newest "Verify now" requests with their outcomes."""
    return list(AuditVerification.objects.order_by("-requested_at", "-id")[:limit])
