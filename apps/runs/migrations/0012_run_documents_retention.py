import django.db.models.deletion
from django.db import migrations, models

# Which stored documents a run names: a property of the run's version's input schema that is a document field
# (apps.workflows.input_schema.is_document) whose value in the run's input is `{"document": <id>, ...}`. The
# trigger records it for every new run, whichever code (or release, during a rolling update) inserts the row;
# the backfill for the runs before it.
RUN_DOCUMENTS_TRIGGER = """
CREATE OR REPLACE FUNCTION aios_run_documents_record() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    named bigint[];
BEGIN
    SELECT array_agg(DISTINCT (field.value ->> 'document')::bigint) INTO named
    FROM workflows_workflowversion version, jsonb_each(NEW.inputs) AS field(name, value)
    WHERE version.id = NEW.version_id
      AND version.input_schema -> 'properties' -> field.name ->> 'type' = 'object'
      AND version.input_schema -> 'properties' -> field.name ->> 'format' = 'document'
      AND jsonb_typeof(field.value) = 'object'
      AND (field.value ->> 'document') ~ '^[0-9]{1,18}$';
    IF named IS NULL THEN
        RETURN NULL;
    END IF;
    -- Key share until the run commits: the purge takes documents with SKIP LOCKED, so it passes over one a
    -- starting run names instead of deleting it under the run. An id that names no document is not recorded:
    -- the step that reads it says what is wrong.
    INSERT INTO runs_rundocument (run_id, document_id)
    SELECT NEW.id, document.id
    FROM (SELECT id FROM runs_inputdocument WHERE id = ANY(named) ORDER BY id FOR KEY SHARE) document;
    RETURN NULL;
END
$$;
CREATE TRIGGER aios_run_documents AFTER INSERT ON runs_run FOR EACH ROW
    WHEN (jsonb_typeof(NEW.inputs) = 'object' AND jsonb_path_exists(NEW.inputs, '$.*.document'))
    EXECUTE FUNCTION aios_run_documents_record();
"""
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
        migrations.RunSQL(
            RUN_DOCUMENTS_TRIGGER,
            reverse_sql="DROP TRIGGER aios_run_documents ON runs_run; DROP FUNCTION aios_run_documents_record();",
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
