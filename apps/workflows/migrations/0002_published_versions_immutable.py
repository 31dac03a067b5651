from __future__ import annotations

from django.db import migrations

from apps.core.db import append_only

IMMUTABLE_PUBLISHED_SQL = """
CREATE OR REPLACE FUNCTION aios_refuse_published_version_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.state = 'published' THEN
        RAISE EXCEPTION 'aios: workflow version % is published and immutable; % refused', OLD.id, TG_OP
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER aios_published_version_immutable BEFORE UPDATE OR DELETE ON workflows_workflowversion
    FOR EACH ROW EXECUTE FUNCTION aios_refuse_published_version_change();
"""


class Migration(migrations.Migration):
    """Published versions cannot change; history is append-only."""

    dependencies = [("workflows", "0001_initial"), ("accounts", "0002_roles_and_append_only_history")]

    operations = [
        migrations.RunSQL(
            IMMUTABLE_PUBLISHED_SQL,
            reverse_sql=(
                "DROP TRIGGER IF EXISTS aios_published_version_immutable ON workflows_workflowversion;"
                "DROP FUNCTION IF EXISTS aios_refuse_published_version_change();"
            ),
        ),
        append_only("workflows_historicalworkflow"),
        append_only("workflows_historicalworkflowversion"),
    ]
