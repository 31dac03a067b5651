from django.db import migrations, models


class Migration(migrations.Migration):
    """The days whose raw records the retention purge cut keep their rollups (RollupFreeze)."""

    dependencies = [("dashboards", "0003_rollup_lease_and_rebuild_requests")]

    operations = [
        migrations.CreateModel(
            name="RollupFreeze",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("frozen_through", models.DateField()),
            ],
        ),
    ]
