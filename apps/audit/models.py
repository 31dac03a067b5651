"""The audit chain: one row per business event, each holding the hash of the row before it."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC
from typing import Any

from django.db import models


class AuditEvent(models.Model):
    """An immutable record of one business event.

    `hash` covers every other column and `prev_hash`, so editing, inserting or deleting any row breaks
    the chain at that row; database triggers refuse UPDATE, DELETE and TRUNCATE outright. `actor_id` is a
    plain integer, not a foreign key, so that no cascade can ever touch this table. `data` holds the
    canonical JSON text that was hashed (jsonb would re-normalise numbers and break verification).
    """

    sequence = models.BigIntegerField(unique=True)
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

    class Meta:
        ordering = ["sequence"]
        indexes = [models.Index(fields=["target_type", "target_id"])]

    def __str__(self) -> str:
        return f"#{self.sequence} {self.verb} {self.target_type}:{self.target_id}"

    @property
    def data_dict(self) -> dict[str, Any]:
        return json.loads(self.data)

    def compute_hash(self) -> str:
        """The SHA-256 of this row's content and its predecessor's hash."""
        content = {
            "sequence": self.sequence,
            "created_at": self.created_at.astimezone(UTC).isoformat(timespec="microseconds"),
            "actor_id": self.actor_id,
            "actor_label": self.actor_label,
            "verb": self.verb,
            "target_type": self.target_type,
            "target_id": self.target_id,
            "target_label": self.target_label,
            "data": self.data,
            "request_id": self.request_id,
            "prev_hash": self.prev_hash,
        }
        encoded = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(encoded.encode("utf-8")).hexdigest()
