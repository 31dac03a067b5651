from django.db import migrations, models
from django.db.models import Count


def refuse_duplicate_rows(apps, schema_editor):
    """Two ledger rows for one step exist only if workers of two releases sent one effect under two keys: which
    key the outside system acted on is the operator's call, so the migration names them instead of choosing."""
    EffectRecord = apps.get_model("runs", "EffectRecord")
    twice = list(EffectRecord.objects.values("run_id", "step_key").annotate(rows=Count("id")).filter(rows__gt=1)[:20])
    if twice:
        named = ", ".join(f"run {row['run_id']} step {row['step_key']}" for row in twice)
        raise RuntimeError(
            f"runs.0013: the effect ledger holds two rows for one step ({named}). Keep the row whose "
            "idempotency key the outside system saw, delete the other (runs_effectrecord), and migrate again."
        )


class Migration(migrations.Migration):
    dependencies = [
        ("runs", "0012_run_documents_retention"),
    ]

    operations = [
        migrations.RunPython(refuse_duplicate_rows, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="effectrecord",
            constraint=models.UniqueConstraint(fields=("run", "step_key"), name="effect_one_per_step"),
        ),
    ]
