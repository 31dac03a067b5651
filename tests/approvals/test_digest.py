"""The email digest, read back from a real SMTP server: one mail per person with unmailed notifications, links
that need a session, no way to decide from the mail, and nothing mailed twice."""

from __future__ import annotations

from django.urls import reverse

from apps.approvals.models import Notification
from apps.approvals.notifications import digests_send, public_url
from tests.approvals.items import api, claim_workflow, member, parked_item
from tests.support.smtp import private_smtp_server, use_real_smtp


def test_the_digest_goes_out_over_smtp_once(settings, analyst, team, reviewer, admin_user_role):
    reviewer.email = "rita@example.com"
    reviewer.save(update_fields=["email"])
    rex = member(team, "rex", email="rex@example.com")
    workflow = claim_workflow(analyst, team)
    first, second = parked_item(analyst, workflow), parked_item(analyst, workflow, amount=7.0)
    for item in (first, second):
        moved = api(admin_user_role).post(
            f"/api/approvals/{item.pk}/reassign/", {"to": "rita", "reason": "Her region"}, format="json"
        )
        assert moved.status_code == 200, moved.content
    assert Notification.objects.filter(user=reviewer, mailed_at__isnull=True).count() == 2
    assert not Notification.objects.filter(user=rex).exists()

    with private_smtp_server() as server:
        use_real_smtp(settings, server)
        assert digests_send() == 1
        [message] = server.messages(to="rita@example.com")
        assert message["Subject"] == "AIOS: 2 updates in your approval inbox"
        body = message.get_content()
        assert body.startswith("Hello Rita,")
        assert body.count("Check the claim: assigned to you") == 2
        for item in (first, second):
            assert public_url(reverse("approvals:item", args=[item.pk])) in body
        assert public_url(reverse("approvals:inbox")) in body
        assert "/decide/" not in body and "token" not in body.lower()
        assert server.messages(to="rex@example.com") == []

        # Everything went out: a second run sends nothing, and the in-app badge still counts them unread.
        assert digests_send() == 0
        assert len(server.messages()) == 1
    assert Notification.objects.filter(user=reviewer, mailed_at__isnull=True).count() == 0
    assert Notification.objects.filter(user=reviewer, read_at__isnull=True).count() == 2
