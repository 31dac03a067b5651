"""Reading and verifying the audit chain."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from django.db.models import QuerySet

from apps.audit.models import AuditEvent
from apps.audit.services import GENESIS_HASH


@dataclass(frozen=True)
class ChainReport:
    """The outcome of a verification: `broken_at` is the sequence of the first bad row, or None."""

    events_checked: int
    broken_at: int | None
    reason: str
    last_hash: str

    @property
    def intact(self) -> bool:
        return self.broken_at is None


def audit_event_list_for_target(*, target_type: str, target_id: str) -> QuerySet[AuditEvent]:
    """The events about one object, oldest first. Callers must already have checked access to it."""
    return AuditEvent.objects.filter(target_type=target_type, target_id=target_id).order_by("sequence")


def _iter_chain(batch_size: int = 2000) -> Iterator[AuditEvent]:
    return AuditEvent.objects.order_by("sequence").iterator(chunk_size=batch_size)


def audit_chain_verify() -> ChainReport:
    """Walk the whole chain once, recomputing each hash; stop at the first broken link."""
    expected_prev = GENESIS_HASH
    expected_sequence = 1
    checked = 0
    for event in _iter_chain():
        if event.sequence != expected_sequence:
            return ChainReport(
                checked,
                event.sequence,
                f"sequence jumps from {expected_sequence - 1} to {event.sequence}",
                expected_prev,
            )
        if event.prev_hash != expected_prev:
            return ChainReport(
                checked, event.sequence, "prev_hash does not match the previous event's hash", expected_prev
            )
        if event.compute_hash() != event.hash:
            return ChainReport(
                checked, event.sequence, "content does not match its hash (the row was altered)", expected_prev
            )
        checked += 1
        expected_prev = event.hash
        expected_sequence += 1
    return ChainReport(checked, None, "", expected_prev)
