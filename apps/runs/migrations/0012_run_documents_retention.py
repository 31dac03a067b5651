import django.db.models.deletion
from django.db import migrations, models

# Every existing run's document references, by the rule run_create applies to new runs: a property of the run's
# version's input schema that is a document field, whose value in the run's input names a stored document.
RUN_DOCUMENTS_BACKFILL = """
INSERT INTO runs_rundocument (run_id, document_id)
SELECT DISTINCT run.id, document.id
FROM runs_run run
JOIN workflows_workflowversion version ON version.id = run.version_id
CROSS JOIN LATERAL jsonb_each(CASE WHEN jsonb_typeof(run.inputs) = 'object' THEN run.inputs ELSE '{}' END)
    AS field(name, value)
JOIN runs_inputdocument document ON document.id = CASE
    WHEN jsonb_typeof(field.value) = 'object' AND (field.value ->> 'document') ~ '^[0-9]{1,18}$'
    THEN (field.value ->> 'document')::bigint
END
WHERE version.input_schema -> 'properties' -> field.name ->> 'type' = 'object'
  AND version.input_schema -> 'properties' -> field.name ->> 'format' = 'document'
"""


class Migration(migrations.Migration):
    dependencies = [
        ("runs", "0011_singleton_lease"),
    ]

    operations = [
        migrations.CreateModel(
            name="RunDocument",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                (
                    "document",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT, related_name="+", to="runs.inputdocument"
                    ),
                ),
                (
                    "run",
                    models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="runs.run",
                    ),
                ),
            ],
            options={
                "constraints": [models.UniqueConstraint(fields=("run", "document"), name="run_document_unique")],
            },
        ),
        migrations.RunSQL(RUN_DOCUMENTS_BACKFILL, reverse_sql=migrations.RunSQL.noop),
        migrations.AddIndex(
            model_name="run",
            index=models.Index(
                condition=models.Q(
                    ("parent_step_run__isnull", True), ("status__in", ["succeeded", "failed", "cancelled"])
                ),
                fields=["finished_at"],
                name="run_finished_top_level_idx",
            ),
        ),
    ]
