"""The audit trail: hash-linked streams of business events, and the anchors that chain their heads together."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from django.contrib.postgres.indexes import BrinIndex
from django.db import models
from django.db.models import Q

from apps.audit.crypto import canonical_json, merkle_root, sha256_hex

GENESIS_HASH = "0" * 64
# Rows written before streams existed form this one stream, ordered by their global `sequence`; their hash
# content is exactly what it was then, so they keep verifying without being rewritten.
LEGACY_STREAM = "legacy"
RUN_STREAM_PREFIX = "run:"


def iso_utc(moment: datetime) -> str:
    """The timestamp text that hashes cover: UTC, microseconds, whatever time zone the value arrived in."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


class TransactionId(models.Func):
    """The inserting transaction's 64-bit id, the key the anchor writer uses to find events committed since
    its previous snapshot (see `apps.audit.services.audit_anchor_write`)."""

    template = "(pg_current_xact_id()::text::bigint)"
    output_field = models.BigIntegerField()


class AuditEvent(models.Model):
    """An immutable record of one business event, in one stream.

    A stream is one run (`run:<pk>`, ordered by the run's row lock) or one object of another kind
    (`<app_label.model>:<pk>`, or `system`). `stream_seq` numbers a stream's events 1, 2, 3 with no gaps and
    `prev_hash` is the hash of the previous event in the same stream, so editing, inserting, deleting or
    reordering rows breaks the stream at that row. `hash` covers every column that means something (not `id`
    or `txid`, which are bookkeeping); `mac` seals `hash` with a key the database does not hold, so rows
    forged or rewritten with recomputed hashes are caught too. Database triggers refuse UPDATE, DELETE and
    TRUNCATE outright. `actor_id` is a plain integer, not a foreign key, so that no cascade can ever touch
    this table. `data` holds the canonical JSON text that was hashed (jsonb would re-normalise numbers).

    Rows of the `legacy` stream predate streams: they are ordered by `sequence`, have no `stream_seq` or
    `mac`, and hash exactly as they always did. New rows have no `sequence`; they page by `id`.
    """

    sequence = models.BigIntegerField(null=True, blank=True)
    stream = models.CharField(max_length=200)
    stream_seq = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField()
    actor_id = models.BigIntegerField(null=True, blank=True)
    actor_label = models.CharField(max_length=150, blank=True)
    verb = models.CharField(max_length=64, db_index=True)
    target_type = models.CharField(max_length=100, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    target_label = models.CharField(max_length=200, blank=True)
    data = models.TextField(default="{}")
    request_id = models.CharField(max_length=64, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)
    mac = models.CharField(max_length=64, blank=True)
    txid = models.BigIntegerField(null=True, blank=True, editable=False, db_default=TransactionId())

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["target_type", "target_id"]),
            models.Index(fields=["txid"], name="audit_event_txid", condition=Q(txid__isnull=False)),
            # The viewer's filters: who did it (newest first), and a time range. BRIN because rows arrive in
            # time order and are never updated: a few pages of index for millions of rows, nothing per insert.
            models.Index(fields=["actor_label", "id"], name="audit_event_actor"),
            BrinIndex(fields=["created_at"], name="audit_event_created_brin"),
        ]
        constraints = [
            # The safety net of run streams, which take no lock of their own: two writers that both read
            # head n (a caller that broke the run-lock rule) cannot both append n + 1; one gets an error.
            models.UniqueConstraint(fields=["stream", "stream_seq"], name="audit_event_stream_seq_unique"),
            models.UniqueConstraint(
                fields=["sequence"], condition=Q(sequence__isnull=False), name="audit_event_legacy_sequence_unique"
            ),
            models.CheckConstraint(
                condition=(
                    Q(stream=LEGACY_STREAM, sequence__isnull=False, stream_seq__isnull=True)
                    | (~Q(stream=LEGACY_STREAM) & ~Q(stream="") & Q(sequence__isnull=True, stream_seq__gte=1))
                ),
                name="audit_event_position",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.stream} #{self.position} {self.verb} {self.target_type}:{self.target_id}"

    @property
    def is_legacy(self) -> bool:
        return self.stream == LEGACY_STREAM

    @property
    def position(self) -> int | None:
        """The event's number within its stream (`sequence` for the legacy stream)."""
        return self.sequence if self.is_legacy else self.stream_seq

    @property
    def data_dict(self) -> dict[str, Any]:
        return json.loads(self.data)

    def compute_hash(self) -> str:
        """The SHA-256 of this row's content and its predecessor's hash."""
        return event_hash(
            stream=self.stream,
            position=self.position,
            created_at=self.created_at,
            actor_id=self.actor_id,
            actor_label=self.actor_label,
            verb=self.verb,
            target_type=self.target_type,
            target_id=self.target_id,
            target_label=self.target_label,
            data=self.data,
            request_id=self.request_id,
            prev_hash=self.prev_hash,
        )


def event_hash(
    *,
    stream: str,
    position: int | None,
    created_at: datetime,
    actor_id: int | None,
    actor_label: str,
    verb: str,
    target_type: str,
    target_id: str,
    target_label: str,
    data: str,
    request_id: str,
    prev_hash: str,
) -> str:
    """An event's hash from its columns (the verifier calls this on raw rows, without model instances).

    A legacy row's content is the global `sequence` and no stream fields, exactly as hashed before streams
    existed; any other row's content names its stream and its position in it instead.
    """
    content: dict[str, Any] = {
        "created_at": iso_utc(created_at),
        "actor_id": actor_id,
        "actor_label": actor_label,
        "verb": verb,
        "target_type": target_type,
        "target_id": target_id,
        "target_label": target_label,
        "data": data,
        "request_id": request_id,
        "prev_hash": prev_hash,
    }
    if stream == LEGACY_STREAM:
        content["sequence"] = position
    else:
        content["stream"] = stream
        content["stream_seq"] = position
    return sha256_hex(canonical_json(content))


class AuditAnchor(models.Model):
    """An immutable, chained commitment to the heads of the audit streams.

    The anchor writer appends one every few seconds when some stream grew: `heads` holds
    {stream: [stream_seq, hash]} for each stream that changed since the previous anchor (the first anchor
    also holds the legacy stream's head), and `merkle_root` is the root over those (stream, seq, hash)
    triples. Because each stream is gap-free and hash-linked, recording a head commits to the stream's whole
    prefix. `seq` is gap-free, `prev_hash` links to the previous anchor, `hash` covers seq, created_at, the
    root, the writer's database snapshot and prev_hash, and `mac` seals it with the audit key. The newest
    anchor's (seq, hash, created_at) is what a signed checkpoint outside the database commits to.
    """

    seq = models.BigIntegerField(unique=True)
    created_at = models.DateTimeField()
    heads = models.JSONField()
    merkle_root = models.CharField(max_length=64)
    # The PostgreSQL snapshot (pg_snapshot text) the writer saw: the next writer anchors exactly the events
    # this snapshot did not see, so no event is missed and none is anchored twice.
    snapshot = models.TextField()
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)
    mac = models.CharField(max_length=64)

    class Meta:
        ordering = ["seq"]
        # Which anchor first covers an event: the viewer looks from the event's time onwards.
        indexes = [models.Index(fields=["created_at"], name="audit_anchor_created")]

    def __str__(self) -> str:
        return f"anchor #{self.seq}"

    @property
    def head_triples(self) -> list[tuple[str, int, str]]:
        return sorted((stream, int(value[0]), str(value[1])) for stream, value in self.heads.items())

    def compute_merkle_root(self) -> str:
        return merkle_root(self.head_triples)

    def compute_hash(self) -> str:
        return anchor_hash(
            seq=self.seq,
            created_at=self.created_at,
            merkle_root=self.merkle_root,
            snapshot=self.snapshot,
            prev_hash=self.prev_hash,
        )


def anchor_hash(*, seq: int, created_at: datetime, merkle_root: str, snapshot: str, prev_hash: str) -> str:
    """An anchor's hash from its columns."""
    content = {
        "seq": seq,
        "created_at": iso_utc(created_at),
        "merkle_root": merkle_root,
        "snapshot": snapshot,
        "prev_hash": prev_hash,
    }
    return sha256_hex(canonical_json(content))


class AuditVerification(models.Model):
    """One "Verify now" request and its outcome: a job as a row, so the page that polls it and a worker that
    runs it agree on its state, and a reload always shows the truth.

    `requested_by_id` is a plain integer, like `AuditEvent.actor_id`: the audit app sits below accounts and
    no cascade may touch what was verified by whom. The outcome fields are written once, when the worker
    finishes; the same transaction records the `audit.verified` event.
    """

    class State(models.TextChoices):
        QUEUED = "queued", "Waiting for a worker"
        RUNNING = "running", "Verifying"
        DONE = "done", "Finished"
        FAILED = "failed", "Could not run"

    requested_by_id = models.BigIntegerField(null=True, blank=True)
    requested_by_label = models.CharField(max_length=150, blank=True)
    requested_at = models.DateTimeField()
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    intact = models.BooleanField(null=True, blank=True)
    events_checked = models.BigIntegerField(default=0)
    streams_checked = models.BigIntegerField(default=0)
    anchors_checked = models.BigIntegerField(default=0)
    legacy_events = models.BigIntegerField(default=0)
    # [{"where": ..., "reason": ...}], at most apps.audit.selectors.MAX_PROBLEMS of them.
    problems = models.JSONField(default=list, blank=True)
    warnings = models.JSONField(default=list, blank=True)
    checkpoint = models.TextField(blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-requested_at", "-id"]

    def __str__(self) -> str:
        return f"verification #{self.pk} ({self.state})"

    @property
    def is_finished(self) -> bool:
        return self.state in (self.State.DONE, self.State.FAILED)

    @property
    def seconds(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()
