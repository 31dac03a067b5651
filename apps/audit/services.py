"""Writing the audit trail: events into their streams, anchors over the stream heads, signed checkpoints.

Ordering without a global lock. Each stream has its own order:
- a run's stream (`run:<pk>`) is ordered by the run's row lock, which the engine already holds in every
  transaction that audits a run (`FOR NO KEY UPDATE`), or by the run having been created in the same
  transaction. `audit_record` takes no lock for it. A caller that breaks that rule cannot fork the
  stream: `unique(stream, stream_seq)` makes the second of two writers that read the same head fail;
- every other stream is low-rate (one object's publishes, edits, sign-ins) and takes a transaction-scoped
  advisory lock on the stream's name, so it works behind PgBouncer in transaction mode. Two streams whose
  names hash alike only share a lock, never a chain.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.serializers.json import DjangoJSONEncoder
from django.db import DEFAULT_DB_ALIAS, connection, connections, models, transaction
from django.utils import timezone

from apps.audit import crypto
from apps.audit.models import (
    GENESIS_HASH,
    LEGACY_STREAM,
    RUN_STREAM_PREFIX,
    AuditAnchor,
    AuditEvent,
    iso_utc,
)
from apps.core.context import request_id

__all__ = [
    "GENESIS_HASH",
    "audit_anchor_write",
    "audit_checkpoint_write",
    "audit_condense",
    "audit_record",
    "audit_stream_for",
]

# Advisory-lock keys. Low-rate streams use the two-integer form (this class, hashtext(stream)), whose key
# space PostgreSQL keeps apart from the single-bigint form the anchor writer and the engine use.
_STREAM_LOCK_CLASS = 0x41554454  # "AUDT"
_ANCHOR_LOCK_KEY = 0x41494F5341414E43  # "AIOSAANC"

SYSTEM_STREAM = "system"
CHECKPOINT_FORMAT = "aios-audit-checkpoint/1"


def audit_stream_for(target: models.Model | None) -> str:
    """The stream an event about `target` belongs to.

    A run, and anything that belongs to one (it has a `run_id`: step runs, incidents, approval requests,
    timers), goes to the run's stream, so a run's whole story is one ordered chain. Anything else gets a
    stream of its own object (`workflows.workflow:7`): per object rather than per model, because a stream
    per model would make every edit of every workflow wait for every other, which is the global lock again
    on a smaller scale. Events about nothing in particular go to `system`.
    """
    if target is None:
        return SYSTEM_STREAM
    # Duck typing, not an import of apps.runs: audit sits below runs in the layers.
    if target._meta.label_lower == "runs.run":
        return f"{RUN_STREAM_PREFIX}{target.pk}"
    run_id = getattr(target, "run_id", None)
    if isinstance(run_id, int):
        return f"{RUN_STREAM_PREFIX}{run_id}"
    return f"{target._meta.label_lower}:{target.pk}"


def _stream_lock(stream: str) -> None:
    if not stream.startswith(RUN_STREAM_PREFIX):  # a run's stream is guarded by the run's row lock
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", [_STREAM_LOCK_CLASS, stream])


def audit_stream_lock(target: models.Model) -> None:
    """Take the lock `audit_record` takes for `target`'s stream now, in the caller's transaction (it is held
    to the commit). For a change that locks `target`'s row FOR UPDATE (a delete) and then audits it: another
    transaction may have added a row that refers to `target` and audited on its stream, and PostgreSQL checks
    that reference only at its commit, where it waits for the row lock. Taking the stream's lock before the
    row's keeps the order every writer of the stream follows. (A change that keeps the row locks it FOR NO KEY
    UPDATE instead, which such a check does not wait for.)"""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("audit_stream_lock holds its lock to the commit: call it inside a transaction.")
    _stream_lock(audit_stream_for(target))


def audit_condense(value: Any, *, limit: int | None = None) -> Any:
    """`value` with every string longer than `limit` characters (settings.AIOS_AUDIT_TEXT_LIMIT) replaced by
    `{"size": <UTF-8 bytes>, "sha256": <hex>}`, recursively through dicts, lists and tuples.

    Why: the chain is append-only and kept for years, and some of what it records is text a user chose (a
    what-if prompt up to the request body cap, a comment, an edited field). A copy of megabytes of it per
    event would let anyone with a form grow the chain at will, and would put personal data where it can
    never be erased. The size and hash still prove what the text was to whoever holds it.
    """
    limit = settings.AIOS_AUDIT_TEXT_LIMIT if limit is None else limit
    if isinstance(value, str):
        if len(value) <= limit:
            return value
        encoded = value.encode("utf-8", "surrogatepass")
        return {"size": len(encoded), "sha256": hashlib.sha256(encoded).hexdigest()}
    if isinstance(value, dict):
        return {key: audit_condense(item, limit=limit) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [audit_condense(item, limit=limit) for item in value]
    return value


def audit_record(
    *,
    actor: AbstractBaseUser | AnonymousUser | None,
    verb: str,
    target: models.Model | None = None,
    data: dict[str, Any] | None = None,
    stream: str | None = None,
) -> AuditEvent:
    """Append one event to its stream, inside the caller's transaction (so it commits with the change).

    `verb` is `<entity>.<past-tense action>` ("workflow.published"); `data` must be JSON-serialisable and
    must never hold secrets; strings in it longer than settings.AIOS_AUDIT_TEXT_LIMIT are stored as their
    size and SHA-256 (`audit_condense`). The stream is `stream` when given, else derived from `target` (see
    `audit_stream_for`). For a run stream the caller must hold the run's row lock or have created the run
    in this transaction; breaking that rule raises IntegrityError under concurrency, never forks the
    stream. Called outside a transaction it opens its own; inside one it adds no savepoint, so a failure
    here fails the change it was recording.
    """
    stream = stream or audit_stream_for(target)
    if stream == LEGACY_STREAM:
        raise ValueError("The legacy audit stream is closed: new events go to streams of their own.")
    with transaction.atomic(savepoint=False):
        # A separate statement from the head read below: under READ COMMITTED a statement sees the data as of
        # its start, so a head read in the same statement as the lock wait would be stale.
        _stream_lock(stream)
        # One probe of the unique (stream, stream_seq) index, backwards.
        head = AuditEvent.objects.filter(stream=stream).order_by("-stream_seq").values_list("stream_seq", "hash")[:1]
        last = next(iter(head), None)
        stream_seq, prev_hash = (int(last[0] or 0) + 1, last[1]) if last else (1, GENESIS_HASH)
        is_user = actor is not None and actor.is_authenticated
        event = AuditEvent(
            stream=stream,
            stream_seq=stream_seq,
            created_at=timezone.now(),
            actor_id=actor.pk if is_user else None,  # type: ignore[union-attr]
            actor_label=actor.get_username() if is_user else "system",  # type: ignore[union-attr]
            verb=verb,
            target_type=target._meta.label_lower if target is not None else "",
            target_id=str(target.pk) if target is not None else "",
            target_label=str(target)[:200] if target is not None else "",
            data=json.dumps(audit_condense(data or {}), cls=DjangoJSONEncoder, sort_keys=True, separators=(",", ":")),
            request_id=request_id.get() or "",
            prev_hash=prev_hash,
        )
        event.hash = event.compute_hash()
        event.mac = crypto.mac(crypto.EVENT_MAC_DOMAIN, event.hash)
        event.save(force_insert=True)
        return event


# --- anchors -------------------------------------------------------------------------------------------------

# The heads of the streams that grew since `previous` (a pg_snapshot text, or NULL for the first anchor), and
# the snapshot this statement ran under. Both come from ONE statement so that they describe the same instant:
# under READ COMMITTED every statement has its own snapshot, and pg_current_snapshot() returns the running
# statement's. An event is "new" when its transaction had not completed in the previous writer's snapshot;
# the txid range lets the index skip everything older than that snapshot's xmin.
_CHANGED_HEADS_SQL = """
WITH snap AS MATERIALIZED (SELECT pg_current_snapshot()::text AS now)
SELECT snap.now, heads.stream, heads.stream_seq, heads.hash
FROM snap LEFT JOIN (
    SELECT DISTINCT ON (stream) stream, stream_seq, hash
    FROM audit_auditevent
    WHERE txid >= %(xmin)s
      AND (%(previous)s::text IS NULL OR NOT pg_visible_in_snapshot(txid::text::xid8, %(previous)s::pg_snapshot))
    ORDER BY stream, stream_seq DESC
) heads ON true
"""


def _snapshot_xmin(snapshot: str | None) -> int:
    """The xmin of a pg_snapshot text ("xmin:xmax:xip,..."): every older transaction had completed."""
    return int(snapshot.split(":", 1)[0]) if snapshot else 0


def audit_anchor_write() -> AuditAnchor | None:
    """Append one anchor over the heads of every stream that grew since the previous anchor; None when no
    stream grew. Safe to call concurrently and repeatedly: writers queue on one transaction-scoped advisory
    lock, and each reads the previous anchor only after it holds the lock.

    Exactly-once coverage: an event is picked up by the first anchor whose snapshot sees its transaction
    committed, because each anchor keeps its snapshot and the next one takes only events whose transaction
    had not completed in it. Commits that land out of id order (a long transaction) are therefore anchored
    late, never skipped. A head seen later than events after it in other streams is fine: each stream is
    gap-free and hash-linked, so anchoring a head commits to the stream's whole prefix.
    """
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_ANCHOR_LOCK_KEY])
            # Not the heads: they can run to megabytes after a busy interval, and only the chain fields matter.
            previous = AuditAnchor.objects.order_by("-seq").values_list("seq", "hash", "snapshot").first()
            previous_snapshot = previous[2] if previous else None
            cursor.execute(
                _CHANGED_HEADS_SQL, {"xmin": _snapshot_xmin(previous_snapshot), "previous": previous_snapshot}
            )
            rows = cursor.fetchall()
            heads: dict[str, list[Any]] = {
                stream: [stream_seq, hash_] for _, stream, stream_seq, hash_ in rows if stream is not None
            }
            if previous is None:
                # The first anchor also commits to everything written before streams existed.
                cursor.execute(
                    "SELECT sequence, hash FROM audit_auditevent WHERE stream = %s ORDER BY sequence DESC LIMIT 1",
                    [LEGACY_STREAM],
                )
                legacy = cursor.fetchone()
                if legacy is not None:
                    heads[LEGACY_STREAM] = [legacy[0], legacy[1]]
        if not heads:
            return None
        anchor = AuditAnchor(
            seq=previous[0] + 1 if previous else 1,
            created_at=timezone.now(),
            heads=heads,
            snapshot=rows[0][0],
            prev_hash=previous[1] if previous else GENESIS_HASH,
        )
        anchor.merkle_root = anchor.compute_merkle_root()
        anchor.hash = anchor.compute_hash()
        anchor.mac = crypto.mac(crypto.ANCHOR_MAC_DOMAIN, anchor.hash)
        anchor.save(force_insert=True)
        return anchor


# --- signed checkpoints --------------------------------------------------------------------------------------


def checkpoint_directory(using: str = DEFAULT_DB_ALIAS) -> Path:
    """Where this database's checkpoints live: AIOS_AUDIT_CHECKPOINT_DIR/<database name>. Per database, so
    that two databases of one installation (a test database and a copy of it, say) never read each other's
    checkpoints as evidence of tampering; by name only, so moving the database to another host keeps them."""
    return Path(settings.AIOS_AUDIT_CHECKPOINT_DIR) / str(connections[using].settings_dict["NAME"])


def checkpoint_file_name(anchor_seq: int) -> str:
    # Zero-padded so that names sort like the anchors they sign.
    return f"checkpoint-{anchor_seq:012d}.json"


def checkpoint_payload(anchor: AuditAnchor, *, signed_at: str) -> dict[str, Any]:
    """What a checkpoint signs: the anchor's (seq, hash, created_at), and which database and key."""
    return {
        "format": CHECKPOINT_FORMAT,
        "database": str(connection.settings_dict["NAME"]),
        "anchor_seq": anchor.seq,
        "anchor_hash": anchor.hash,
        "anchor_created_at": iso_utc(anchor.created_at),
        "signed_at": signed_at,
        "key_id": crypto.key_id(),
    }


def audit_checkpoint_write() -> Path | None:
    """Anchor the current stream heads, then sign the newest anchor and write the checkpoint file outside the
    database; returns its path, or None when there is no anchor yet or the newest is already checkpointed.

    The file is written to a temporary name, flushed and renamed, so a crash never leaves half a
    checkpoint. Events written after the newest checkpoint are the ones a database-level attacker could
    still cut without detection: schedule this often enough for that window to be acceptable.
    """
    audit_anchor_write()
    anchor = AuditAnchor.objects.order_by("-seq").only("seq", "hash", "created_at").first()
    if anchor is None:
        return None
    directory = checkpoint_directory()
    target = directory / checkpoint_file_name(anchor.seq)
    if target.exists():
        return None
    directory.mkdir(parents=True, exist_ok=True)
    payload = checkpoint_payload(anchor, signed_at=iso_utc(timezone.now()))
    document = {"payload": payload, "signature": crypto.sign(crypto.canonical_json(payload))}
    descriptor, temporary = tempfile.mkstemp(prefix=".checkpoint-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    # The rename itself is durable only once the directory is synced.
    directory_descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(directory_descriptor)
    finally:
        os.close(directory_descriptor)
    return target
