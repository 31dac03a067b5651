"""Runs record the W3C trace context they were created in, so their steps join one trace across processes."""

from django.db import migrations, models

import apps.core.telemetry.tracing


class Migration(migrations.Migration):
    dependencies = [
        ("runs", "0008_webhook_receipts"),
    ]

    operations = [
        # Runs made before this have no trace: added with an empty value (one constant default, so adding the
        # column rewrites nothing), then given the callable default new runs use.
        migrations.AddField(
            model_name="run",
            name="traceparent",
            field=models.CharField(blank=True, default="", editable=False, max_length=55),
        ),
        migrations.AlterField(
            model_name="run",
            name="traceparent",
            field=models.CharField(
                blank=True,
                default=apps.core.telemetry.tracing.traceparent_for_new_run,
                editable=False,
                max_length=55,
            ),
        ),
    ]
