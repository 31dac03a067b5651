from django.db import migrations

from apps.core.db import append_only


class Migration(migrations.Migration):
    """Call records and endpoint history are evidence: the database refuses to change them."""

    dependencies = [("inference", "0001_initial"), ("audit", "0002_append_only")]

    operations = [append_only("inference_inferencecall"), append_only("inference_historicalmodelendpoint")]
