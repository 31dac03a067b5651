"""Audit viewer routes × personas (loaded by test_permission_matrix.py). The trail is for admins and auditors:
Aude the auditor reads every page; to everyone else among the personas the pages do not exist (404), which
tests/audit/test_viewer.py also checks for htmx fragments, "Verify now" and the export's download."""

from __future__ import annotations

from typing import Any

OK, HIDDEN, LOGIN = 200, 404, 302
AUDITORS_ONLY = {
    "analyst": HIDDEN,
    "reviewer": HIDDEN,
    "manager": HIDDEN,
    "auditor": OK,
    "outsider": HIDDEN,
    "anonymous": LOGIN,
}

MATRIX: dict[str, dict[str, int]] = {
    "audit:events": AUDITORS_ONLY,
    "audit:event": AUDITORS_ONLY,
    "audit:verify": AUDITORS_ONLY,
    "audit:verification": AUDITORS_ONLY,
    "audit:export": AUDITORS_ONLY,
}

EXEMPT: set[str] = set()


def world_args(world: dict[str, Any]) -> dict[str, list[Any]]:
    from django.utils import timezone

    from apps.audit.models import AuditEvent, AuditVerification

    event = AuditEvent.objects.filter(stream=f"run:{world['run'].pk}").order_by("stream_seq").first()
    verification = AuditVerification.objects.create(requested_at=timezone.now(), requested_by_label="aude")
    return {"audit:event": [event.pk], "audit:verification": [verification.pk]}
