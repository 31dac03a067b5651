"""Writing to the audit chain."""

from __future__ import annotations

import json
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, models, transaction
from django.utils import timezone

from apps.audit.models import AuditEvent
from apps.core.context import request_id

GENESIS_HASH = "0" * 64

# One fixed advisory-lock key serialises writers of the chain, so each row's prev_hash is its true
# predecessor. The lock is transaction-scoped: it is held until the change being audited commits, which
# is what keeps sequence order equal to commit order.
_CHAIN_LOCK_KEY = 0x41494F53  # "AIOS"


def audit_record(
    *,
    actor: AbstractBaseUser | AnonymousUser | None,
    verb: str,
    target: models.Model | None = None,
    data: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one event to the chain, inside the caller's transaction (so it commits with the change).

    `verb` is `<entity>.<past-tense action>` ("workflow.published"); `data` must be JSON-serialisable and
    must never hold secrets. Called outside a transaction it opens its own.
    """
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_CHAIN_LOCK_KEY])
        last = AuditEvent.objects.order_by("-sequence").values_list("sequence", "hash").first()
        sequence, prev_hash = (last[0] + 1, last[1]) if last else (1, GENESIS_HASH)
        is_user = actor is not None and actor.is_authenticated
        event = AuditEvent(
            sequence=sequence,
            created_at=timezone.now(),
            actor_id=actor.pk if is_user else None,  # type: ignore[union-attr]
            actor_label=actor.get_username() if is_user else "system",  # type: ignore[union-attr]
            verb=verb,
            target_type=target._meta.label_lower if target is not None else "",
            target_id=str(target.pk) if target is not None else "",
            target_label=str(target)[:200] if target is not None else "",
            data=json.dumps(data or {}, cls=DjangoJSONEncoder, sort_keys=True, separators=(",", ":")),
            request_id=request_id.get() or "",
            prev_hash=prev_hash,
        )
        event.hash = event.compute_hash()
        event.save(force_insert=True)
        return event
