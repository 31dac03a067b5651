from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("evaluations", "0003_result_run_started_after_commit"),
    ]

    operations = [
        migrations.AddField(
            model_name="evaluationsuite",
            name="admin_reviewed_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
