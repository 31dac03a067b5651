"""Audit streams (one per run, low-rate ones for the rest), MACs, and chained anchors over stream heads.

Existing rows are never rewritten (the append-only trigger would refuse it anyway): every new column is
either nullable or added with a constant default, which PostgreSQL records in the catalogue without
touching a row. So the rows already written become the `legacy` stream with their `sequence`, no
`stream_seq`, no MAC and no txid, and hash exactly as before.
"""

from __future__ import annotations

from django.db import migrations, models

import apps.audit.models
from apps.core.db import append_only


class Migration(migrations.Migration):
    dependencies = [("audit", "0002_append_only")]

    operations = [
        # `sequence` is the legacy stream's position only; a partial unique index keeps new rows (NULL) out
        # of it instead of adding one useless index entry per event.
        migrations.AlterField(
            model_name="auditevent", name="sequence", field=models.BigIntegerField(null=True, blank=True)
        ),
        migrations.AddConstraint(
            model_name="auditevent",
            constraint=models.UniqueConstraint(
                condition=models.Q(sequence__isnull=False),
                fields=("sequence",),
                name="audit_event_legacy_sequence_unique",
            ),
        ),
        migrations.AddField(
            model_name="auditevent",
            name="stream",
            field=models.CharField(default="legacy", max_length=200),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="auditevent", name="stream_seq", field=models.BigIntegerField(null=True, blank=True)
        ),
        migrations.AddField(
            model_name="auditevent",
            name="mac",
            field=models.CharField(blank=True, max_length=64, default=""),
            preserve_default=False,
        ),
        # Added without a default, then given one: a volatile default in ADD COLUMN would rewrite the table
        # and stamp every legacy row with this migration's transaction id.
        migrations.AddField(
            model_name="auditevent",
            name="txid",
            field=models.BigIntegerField(null=True, blank=True, editable=False),
        ),
        migrations.AlterField(
            model_name="auditevent",
            name="txid",
            field=models.BigIntegerField(
                null=True, blank=True, editable=False, db_default=apps.audit.models.TransactionId()
            ),
        ),
        migrations.AddIndex(
            model_name="auditevent",
            index=models.Index(condition=models.Q(txid__isnull=False), fields=["txid"], name="audit_event_txid"),
        ),
        migrations.AddConstraint(
            model_name="auditevent",
            constraint=models.UniqueConstraint(fields=("stream", "stream_seq"), name="audit_event_stream_seq_unique"),
        ),
        migrations.AddConstraint(
            model_name="auditevent",
            constraint=models.CheckConstraint(
                condition=models.Q(stream="legacy", sequence__isnull=False, stream_seq__isnull=True)
                | (
                    ~models.Q(stream="legacy")
                    & ~models.Q(stream="")
                    & models.Q(sequence__isnull=True, stream_seq__gte=1)
                ),
                name="audit_event_position",
            ),
        ),
        migrations.AlterModelOptions(name="auditevent", options={"ordering": ["id"]}),
        migrations.CreateModel(
            name="AuditAnchor",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("seq", models.BigIntegerField(unique=True)),
                ("created_at", models.DateTimeField()),
                ("heads", models.JSONField()),
                ("merkle_root", models.CharField(max_length=64)),
                ("snapshot", models.TextField()),
                ("prev_hash", models.CharField(max_length=64)),
                ("hash", models.CharField(max_length=64, unique=True)),
                ("mac", models.CharField(max_length=64)),
            ],
            options={"ordering": ["seq"]},
        ),
        append_only("audit_auditanchor"),
    ]
