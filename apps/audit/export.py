"""Exporting a range of the audit trail with everything needed to verify it without the database.

An export is one JSON Lines file. Its records, in order:

- `export`: the format, when and by whom, the range asked for, the counts, and the checkpoint key's public
  half and id (compare the id with `manage.py audit_checkpoint --public-key` run by someone you trust);
- per stream, a `stream` record (its first and last exported position, the hash of the event just before
  them, the anchor that covers its last exported event), then its `event` records in position order with
  every column that goes into their hash. Events of the range are `"in_range": true`; the others are the
  few after the range, up to the head an anchor recorded, that link the range to that anchor;
- `anchor` records: the chain fields (no heads) of every anchor from the oldest covering one up to the
  checkpoint's, so each links to the next and the last is the one the checkpoint signs;
- `inclusion` records: for each stream, the RFC 6962 audit path from its recorded head to the covering
  anchor's Merkle root;
- `checkpoint`: the newest signed checkpoint (payload and Ed25519 signature) as it is on disk;
- `manifest`, last: the SHA-256 of every line before it, the streams with their first and last positions
  and counts, signed with the checkpoint key. The chains prove each exported event genuine; the manifest
  proves none was dropped from the file.

So the chain of trust offline runs: signature → checkpoint's anchor → anchor links back to each covering
anchor → its Merkle root → the stream's head → prev_hash links back through every exported event. MACs are
not part of it: they need the secret key, which an export never carries.

Only events an anchor at or below the checkpoint covers are exported; the export is preceded by a fresh
anchor and checkpoint, so that leaves out at most the events committed while it ran (counted in the header).
`apps/audit/offline_verify.py` is the verifier; docs/audit.md shows it in use.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import IO, Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import connection, transaction
from django.db.models import Count, Max, Min
from django.db.models.functions import Coalesce
from django.utils import timezone

from apps.audit import crypto
from apps.audit.models import LEGACY_STREAM, AuditAnchor, AuditEvent, iso_utc
from apps.audit.selectors import audit_public_key, checkpoint_files, checkpoint_read
from apps.audit.services import audit_checkpoint_write, audit_record, checkpoint_directory
from apps.core.exceptions import ApplicationError

logger = logging.getLogger(__name__)

EXPORT_FORMAT = "aios-audit-export/1"
MANIFEST_FORMAT = "aios-audit-export-manifest/1"
# One export is one file built in one database snapshot: past this many events in the range, ask for a
# narrower one (a year can be exported month by month; each file verifies on its own).
MAX_EXPORT_EVENTS = 200_000
# How far an event's clock may run ahead of the anchor writer's (processes on different hosts): anchors are
# looked for from this long before the range's first event.
CLOCK_SKEW_SECONDS = 300

_EVENT_COLUMNS = (
    "id",
    "stream",
    "stream_seq",
    "sequence",
    "created_at",
    "actor_id",
    "actor_label",
    "verb",
    "target_type",
    "target_id",
    "target_label",
    "data",
    "request_id",
    "prev_hash",
    "hash",
)


@dataclass
class ExportSummary:
    """What an export holds, for the audit event and the page that offers the file."""

    events_in_range: int = 0
    events: int = 0
    streams: int = 0
    anchors: int = 0
    left_out: int = 0
    checkpoint_anchor: int | None = None
    sha256: str = ""
    notes: list[str] = field(default_factory=list)


# --- Merkle audit paths (RFC 6962, section 2.1.1) ---------------------------------------------------------------


def _subtree_hash(leaves: list[bytes], start: int, end: int) -> bytes:
    count = end - start
    if count == 1:
        return leaves[start]
    split = 1 << ((count - 1).bit_length() - 1)
    return hashlib.sha256(
        b"\x01" + _subtree_hash(leaves, start, start + split) + _subtree_hash(leaves, start + split, end)
    ).digest()


def merkle_audit_path(leaves: list[bytes], index: int) -> list[bytes]:
    """The sibling hashes from leaf `index` up to the root of `leaves` (which are in the tree's order),
    nearest first: with them and the leaf, anyone recomputes the root without the other leaves."""
    path: list[bytes] = []

    def walk(start: int, end: int) -> None:
        count = end - start
        if count <= 1:
            return
        split = 1 << ((count - 1).bit_length() - 1)
        if index < start + split:
            walk(start, start + split)
            path.append(_subtree_hash(leaves, start + split, end))
        else:
            walk(start + split, end)
            path.append(_subtree_hash(leaves, start, start + split))

    walk(0, len(leaves))
    return path


# --- the export -------------------------------------------------------------------------------------------------


def _position_column(stream: str) -> str:
    return "sequence" if stream == LEGACY_STREAM else "stream_seq"


def _range_streams(
    since: datetime | None, until: datetime | None, stream: str
) -> tuple[list[tuple[str, int, int, int]], datetime | None]:
    """(stream, first position, last position, events) of every stream with events in the range, and the
    time of the range's earliest event."""
    events = AuditEvent.objects.all()
    if since is not None:
        events = events.filter(created_at__gte=since)
    if until is not None:
        events = events.filter(created_at__lt=until)
    if stream:
        events = events.filter(stream=stream)
    position = Coalesce("stream_seq", "sequence")
    rows = list(
        events.values("stream")
        .annotate(first=Min(position), last=Max(position), count=Count("id"), earliest=Min("created_at"))
        .order_by("stream")
    )
    earliest = min((row["earliest"] for row in rows), default=None)
    return [(row["stream"], int(row["first"]), int(row["last"]), int(row["count"])) for row in rows], earliest


# For each stream, the lowest head at or after `wanted` that an anchor up to the checkpoint recorded (the
# anchor that covers the range's last event), or when there is none, the highest head below it.
_COVERING_HEADS_SQL = """
WITH wanted AS (
    SELECT unnest(%(streams)s::text[]) AS stream, unnest(%(positions)s::bigint[]) AS position
), heads AS (
    SELECT h.key AS stream, (h.value->>0)::bigint AS head, h.value->>1 AS hash, a.seq AS anchor
    FROM audit_auditanchor a
    CROSS JOIN LATERAL jsonb_each(a.heads) h
    JOIN wanted w ON w.stream = h.key
    WHERE a.seq <= %(checkpoint)s AND a.created_at >= %(after)s
)
SELECT DISTINCT ON (w.stream) w.stream, h.head, h.hash, h.anchor
FROM wanted w JOIN heads h ON h.stream = w.stream
ORDER BY w.stream, (h.head >= w.position) DESC,
         CASE WHEN h.head >= w.position THEN h.head ELSE -h.head END, h.anchor
"""


def _covering_heads(
    ranges: list[tuple[str, int, int, int]], checkpoint_seq: int, after: datetime
) -> dict[str, tuple[int, str, int]]:
    """stream → (head position, head hash, anchor seq), as described above `_COVERING_HEADS_SQL`."""
    if not ranges:
        return {}
    with connection.cursor() as cursor:
        cursor.execute(
            _COVERING_HEADS_SQL,
            {
                "streams": [row[0] for row in ranges],
                "positions": [row[2] for row in ranges],
                "checkpoint": checkpoint_seq,
                "after": after,
            },
        )
        return {stream: (int(head), str(hash_), int(anchor)) for stream, head, hash_, anchor in cursor.fetchall()}


def _stream_events(stream: str, first: int, last: int) -> Iterator[dict[str, Any]]:
    column = _position_column(stream)
    after = first - 1
    while True:
        page = list(
            AuditEvent.objects.filter(stream=stream, **{f"{column}__gt": after, f"{column}__lte": last})
            .order_by(column)
            .values(*_EVENT_COLUMNS)[:2000]
        )
        yield from page
        if len(page) < 2000:
            return
        after = page[-1][column]


def _event_record(row: dict[str, Any], in_range: bool) -> dict[str, Any]:
    legacy = row["stream"] == LEGACY_STREAM
    return {
        "type": "event",
        "id": row["id"],
        "stream": row["stream"],
        "position": row["sequence"] if legacy else row["stream_seq"],
        "created_at": iso_utc(row["created_at"]),
        "actor_id": row["actor_id"],
        "actor_label": row["actor_label"],
        "verb": row["verb"],
        "target_type": row["target_type"],
        "target_id": row["target_id"],
        "target_label": row["target_label"],
        "data": row["data"],
        "request_id": row["request_id"],
        "prev_hash": row["prev_hash"],
        "hash": row["hash"],
        "in_range": in_range,
    }


class _Writer:
    """JSON Lines to `out`, hashing what it writes so the audit event can name the exact file."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.digest = hashlib.sha256()

    def write(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, ensure_ascii=False, sort_keys=True, separators=(",", ":")) + "\n").encode()
        self.digest.update(line)
        self.out.write(line)


def audit_export_write(
    *,
    actor: AbstractBaseUser | AnonymousUser,
    out: IO[bytes],
    since: datetime | None = None,
    until: datetime | None = None,
    stream: str = "",
) -> ExportSummary:
    """Write the events created in [since, until) (of one stream, when `stream` is given) to `out` with the
    proofs that verify them offline (see the module docstring), and record the export as an audit event.

    First anchors the stream heads and signs a checkpoint (as the beat does), so the range is covered up to
    the moment of the export. Raises ApplicationError when the range holds more than MAX_EXPORT_EVENTS
    events, or when no signed checkpoint can be read.
    """
    try:
        audit_checkpoint_write()
    except OSError as error:
        # A web process that may not write the checkpoint volume still exports, against the newest checkpoint
        # the scheduler wrote; events after it are left out and counted.
        logger.warning("audit export: could not write a fresh checkpoint (%s); using the newest on disk", error)
    files = checkpoint_files(checkpoint_directory())
    summary = ExportSummary()
    checkpoint = None
    if files:
        try:
            checkpoint = checkpoint_read(files[-1])
        except ValueError as error:
            raise ApplicationError(f"The newest signed checkpoint cannot be read: {error}.") from None
    writer = _Writer(out)
    opens_transaction = not connection.in_atomic_block
    with transaction.atomic():
        if opens_transaction:
            # One snapshot for the whole file: events and anchors written meanwhile never half-appear.
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        ranges, earliest = _range_streams(since, until, stream)
        matched = sum(row[3] for row in ranges)
        if matched > MAX_EXPORT_EVENTS:
            raise ApplicationError(
                f"The range holds {matched:,} events; one export takes at most "
                f"{MAX_EXPORT_EVENTS:,}. Choose a shorter period or one stream."
            )
        if ranges and checkpoint is None:
            raise ApplicationError("There is no signed checkpoint to prove the events against yet.")
        checkpoint_seq = int(checkpoint.payload["anchor_seq"]) if checkpoint else 0
        summary.checkpoint_anchor = checkpoint_seq or None
        after = (earliest or timezone.now()) - timedelta(seconds=CLOCK_SKEW_SECONDS)
        first_of = {row[0]: row[1] for row in ranges}
        # A stream whose newest anchored head is below the range's first event has nothing provable yet.
        heads = {
            name: head
            for name, head in _covering_heads(ranges, checkpoint_seq, after).items()
            if head[0] >= first_of[name]
        }
        covering_anchors = sorted({anchor for _, _, anchor in heads.values()})
        anchors = list(
            AuditAnchor.objects.filter(seq__gte=covering_anchors[0], seq__lte=checkpoint_seq)
            .order_by("seq")
            .values_list("seq", "created_at", "merkle_root", "snapshot", "prev_hash", "hash")
            if covering_anchors
            else []
        )
        writer.write(
            {
                "type": "export",
                "format": EXPORT_FORMAT,
                "exported_at": iso_utc(timezone.now()),
                "exported_by": actor.get_username() if actor.is_authenticated else "system",
                "range": {
                    "since": iso_utc(since) if since else None,
                    "until": iso_utc(until) if until else None,
                    "stream": stream or None,
                },
                "key": audit_public_key(),
                "checkpoint_anchor": summary.checkpoint_anchor,
            }
        )
        stream_counts: dict[str, list[int]] = {}
        since_text = iso_utc(since) if since else ""
        until_text = iso_utc(until) if until else ""
        for name, first, last, count in ranges:
            head = heads.get(name)
            if head is None:
                summary.left_out += count
                continue
            end = head[0]
            exported_in_range = 0
            records: list[dict[str, Any]] = []
            for row in _stream_events(name, first, end):
                record = _event_record(row, False)
                position = record["position"]
                in_time = (not since_text or record["created_at"] >= since_text) and (
                    not until_text or record["created_at"] < until_text
                )
                record["in_range"] = position <= last and in_time
                exported_in_range += record["in_range"]
                records.append(record)
            if not records:
                continue
            summary.left_out += count - exported_in_range
            summary.events_in_range += exported_in_range
            writer.write(
                {
                    "type": "stream",
                    "stream": name,
                    "first": first,
                    "last": end,
                    "prev_hash": records[0]["prev_hash"],
                    "events_in_range": exported_in_range,
                    "anchor": head[2],
                    "head": [head[0], head[1]],
                }
            )
            for record in records:
                writer.write(record)
            stream_counts[name] = [first, end, exported_in_range]
            summary.streams += 1
            summary.events += len(records)
        for seq, created_at, root, snapshot, prev_hash, hash_ in anchors:
            writer.write(
                {
                    "type": "anchor",
                    "seq": seq,
                    "created_at": iso_utc(created_at),
                    "merkle_root": root,
                    "snapshot": snapshot,
                    "prev_hash": prev_hash,
                    "hash": hash_,
                }
            )
        summary.anchors = len(anchors)
        by_anchor: dict[int, list[str]] = {}
        for name, (_, _, anchor_seq) in heads.items():
            by_anchor.setdefault(anchor_seq, []).append(name)
        for anchor_seq in covering_anchors:
            anchor = AuditAnchor.objects.only("heads").get(seq=anchor_seq)
            triples = anchor.head_triples
            leaves = [crypto.merkle_leaf(*triple) for triple in triples]
            index_of = {triple[0]: index for index, triple in enumerate(triples)}
            for name in sorted(by_anchor.get(anchor_seq, [])):
                index = index_of[name]
                writer.write(
                    {
                        "type": "inclusion",
                        "stream": name,
                        "anchor": anchor_seq,
                        "head": [triples[index][1], triples[index][2]],
                        "leaf_index": index,
                        "tree_size": len(leaves),
                        "path": [node.hex() for node in merkle_audit_path(leaves, index)],
                    }
                )
        if checkpoint is not None:
            writer.write(
                {
                    "type": "checkpoint",
                    "file": checkpoint.path.name,
                    "payload": checkpoint.payload,
                    "signature": checkpoint.signature,
                }
            )
        # Signed last, over the digest of every line before it: what the installation says the file holds,
        # so a stream or event dropped from the file shows, which the chains alone cannot tell.
        manifest = {
            "format": MANIFEST_FORMAT,
            "records_sha256": writer.digest.hexdigest(),
            "range": {
                "since": iso_utc(since) if since else None,
                "until": iso_utc(until) if until else None,
                "stream": stream or None,
            },
            "streams": stream_counts,
            "events": summary.events,
            "events_in_range": summary.events_in_range,
            "left_out": summary.left_out,
            "anchors": [anchors[0][0], anchors[-1][0]] if anchors else None,
            "checkpoint_anchor": summary.checkpoint_anchor,
            "key_id": crypto.key_id(),
        }
        writer.write(
            {"type": "manifest", "payload": manifest, "signature": crypto.sign(crypto.canonical_json(manifest))}
        )
    summary.sha256 = writer.digest.hexdigest()
    if summary.left_out:
        summary.notes.append(
            f"{summary.left_out} event(s) of the range were written after the newest checkpoint and are not in "
            "this file; export again in a minute to include them."
        )
    audit_record(
        actor=actor,
        verb="audit.exported",
        data={
            "since": iso_utc(since) if since else None,
            "until": iso_utc(until) if until else None,
            "stream": stream or None,
            "events_in_range": summary.events_in_range,
            "events": summary.events,
            "streams": summary.streams,
            "anchors": summary.anchors,
            "left_out": summary.left_out,
            "checkpoint_anchor": summary.checkpoint_anchor,
            "sha256": summary.sha256,
        },
    )
    return summary
