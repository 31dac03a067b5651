from django.db import migrations

from apps.core.db import append_only


class Migration(migrations.Migration):
    """Reviewers' decisions are the labelled record of what people decided, and queue history is evidence of
    who changed a queue's rules: the database refuses to change either."""

    dependencies = [("approvals", "0002_queues_claims_decisions"), ("audit", "0002_append_only")]

    operations = [append_only("approvals_approvaldecision"), append_only("approvals_historicalapprovalqueue")]
