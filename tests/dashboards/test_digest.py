"""The weekly KPI digest: the opt-in toggle (POST with CSRF, audited, by persona), the mail itself over real SMTP
(HTML and text, tables rather than SVG, the known figures), once per person per week however often it runs, and
the periodic task on a real Celery worker."""

from __future__ import annotations

import json
import threading
from datetime import datetime, time, timedelta
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from apps.audit.models import AuditEvent
from apps.dashboards.digest import digest_subscription_set, digests_send
from apps.dashboards.models import DigestSubscription
from tests.dashboards.dataset import dataset_build
from tests.support.smtp import private_smtp_server, use_real_smtp, wait_for_caught


def _client(user: Any, *, csrf: bool = False) -> Client:
    client = Client(enforce_csrf_checks=csrf)
    client.force_login(user)
    return client


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("persona", "status"),
    [("manager", 302), ("analyst", 302), ("auditor", 302), ("reviewer", 403), ("outsider", 403), ("anonymous", 302)],
)
def test_the_toggle_by_persona(request: pytest.FixtureRequest, persona: str, status: int) -> None:
    client = Client() if persona == "anonymous" else _client(request.getfixturevalue(persona))
    response = client.post(reverse("dashboards:digest"), {"weekly": "on", "period": "30"})
    assert response.status_code == status
    if persona == "anonymous":
        assert "/accounts/login/" in response["Location"]
    subscribed = DigestSubscription.objects.filter(weekly=True).count()
    assert subscribed == (1 if status == 302 and persona != "anonymous" else 0)
    # GET changes nothing.
    if persona != "anonymous":
        assert client.get(reverse("dashboards:digest")).status_code == 405


@pytest.mark.django_db
def test_the_toggle_needs_csrf_and_is_audited(manager: Any, analyst: Any, reviewer: Any) -> None:
    data = dataset_build(owner=analyst, reviewer=reviewer)
    client = _client(manager, csrf=True)
    assert client.post(reverse("dashboards:digest"), {"weekly": "on"}).status_code == 403
    assert not DigestSubscription.objects.exists()

    client = _client(manager)
    page = client.get(reverse("dashboards:overview") + "?process=claims-triage").content.decode()
    assert "Email me a weekly digest" in page and 'name="csrfmiddlewaretoken"' in page
    response = client.post(reverse("dashboards:digest"), {"weekly": "on", "process": "claims-triage"})
    assert response.status_code == 302 and "process=claims-triage" in response["Location"]
    subscription = DigestSubscription.objects.get(user=manager)
    assert subscription.weekly and subscription.filter == {"workflow": data.claims.pk}
    page = client.get(response["Location"]).content.decode()
    assert "Weekly email digest is on" in page and "Turn off" in page and "(Claims triage)" in page

    client.post(reverse("dashboards:digest"), {"weekly": "off"})
    subscription.refresh_from_db()
    assert subscription.weekly is False
    verbs = list(AuditEvent.objects.filter(verb__startswith="kpi_digest.").order_by("pk").values_list("verb", "data"))
    assert [verb for verb, _ in verbs] == ["kpi_digest.subscribed", "kpi_digest.unsubscribed"]
    assert json.loads(verbs[1][1])["before"] == {"weekly": True, "filter": {"workflow": data.claims.pk}}


@pytest.mark.django_db
def test_a_bad_filter_does_not_turn_the_digest_on(manager: Any) -> None:
    response = _client(manager).post(reverse("dashboards:digest"), {"weekly": "on", "process": "nope"})
    assert response.status_code == 302
    assert not DigestSubscription.objects.exists()


@pytest.mark.django_db
def last_wednesday_noon() -> datetime:
    """Noon of the latest Wednesday before today: a time whose week neither began nor ends within hours, whatever
    day the suite runs (run on a Sunday night, "three hours later" was already next week)."""
    today = timezone.localdate()
    wednesday = today - timedelta(days=(today.weekday() - 2) % 7 or 7)
    return timezone.make_aware(datetime.combine(wednesday, time(12)))


def test_the_digest_goes_out_once_a_week_over_smtp(settings: Any, manager: Any, analyst: Any, reviewer: Any) -> None:
    data = dataset_build(owner=analyst, reviewer=reviewer, now=last_wednesday_noon())
    manager.email = "max@example.com"
    manager.save(update_fields=["email"])
    digest_subscription_set(actor=manager, weekly=True, covered={"workflow": data.claims.pk})
    # Someone subscribed who has since lost the right to read dashboards gets nothing.
    reviewer.email = "rita@example.com"
    reviewer.save(update_fields=["email"])
    DigestSubscription.objects.create(user=reviewer, weekly=True)
    # A Wednesday, so "this week" began two days ago.
    now = data.now
    with private_smtp_server() as server:
        use_real_smtp(settings, server)
        assert digests_send(now=now) == 1
        assert digests_send(now=now) == 0  # the same week: nothing again
        assert digests_send(now=now + timedelta(hours=3)) == 0
        [message] = server.messages(to="max@example.com")
        assert server.messages(to="rita@example.com") == []
        assert "your week in figures" in message["Subject"]
        text = message.get_body(preferencelist=("plain",)).get_content()
        html = message.get_body(preferencelist=("html",)).get_content()
        assert "<svg" not in html and "<script" not in html and "<table" in html
        assert "Claims triage" in text and "Claims triage" in html
        assert "/dashboards/" in text
        # The week's figures are for process X only (the subscription's filter).
        assert "Cases:" in text and "Straight-through rate:" in text
        assert digests_send(now=now + timedelta(days=7)) == 1  # next week: one more
        assert len(server.messages(to="max@example.com")) == 2


@pytest.mark.django_db(transaction=True)
def test_two_senders_at_once_mail_once(settings: Any, manager: Any) -> None:
    manager.email = "max@example.com"
    manager.save(update_fields=["email"])
    digest_subscription_set(actor=manager, weekly=True)
    results: list[int] = []
    barrier = threading.Barrier(2)

    def send() -> None:
        barrier.wait()
        try:
            results.append(digests_send())
        finally:
            connection.close()

    with private_smtp_server() as server:
        use_real_smtp(settings, server)
        threads = [threading.Thread(target=send) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert sorted(results) == [0, 1]
        assert len(server.messages(to="max@example.com")) == 1


@pytest.mark.django_db(transaction=True)
def test_the_periodic_task_mails_from_a_real_worker(celery_worker_process: Any, manager: Any) -> None:
    from workers.celery import app

    manager.email = "max-digest@example.com"
    manager.save(update_fields=["email"])
    digest_subscription_set(actor=manager, weekly=True)
    app.send_task("dashboards.kpi_digests_send")
    [message] = wait_for_caught(to="max-digest@example.com", timeout=30)
    assert "your week in figures" in message["Subject"]
    subscription = DigestSubscription.objects.get(user=manager)
    assert subscription.last_sent_at is not None and subscription.last_sent_at <= timezone.now()


@pytest.mark.django_db
def test_one_digest_that_cannot_be_sent_does_not_stop_the_others(settings: Any, manager: Any, auditor: Any) -> None:
    # An address with a line break (stored around the forms) makes the mail itself fail to build.
    manager.email = "max@example.com\nBcc: everyone@example.com"
    manager.save(update_fields=["email"])
    auditor.email = "aude@example.com"
    auditor.save(update_fields=["email"])
    digest_subscription_set(actor=manager, weekly=True)
    digest_subscription_set(actor=auditor, weekly=True)
    with private_smtp_server() as server:
        use_real_smtp(settings, server)
        assert digests_send() == 1
        assert len(server.messages(to="aude@example.com")) == 1
        assert server.messages(to="everyone@example.com") == []
    # Its claim rolled back with it: the next beat tries again.
    assert DigestSubscription.objects.get(user=manager).last_sent_at is None
    assert DigestSubscription.objects.get(user=auditor).last_sent_at is not None
