"""Signing in: clear messages, throttling after repeated failures, audited."""

from __future__ import annotations

import pytest
from django.core.cache import cache
from django.test import override_settings
from django.urls import reverse

from apps.audit.models import AuditEvent
from tests.conftest import PASSWORD


@pytest.fixture(autouse=True)
def _clean_throttle():
    cache.clear()
    yield
    cache.clear()


def test_correct_password_signs_in_and_is_audited(client, analyst):
    response = client.post(reverse("accounts:login"), {"username": "ana", "password": PASSWORD})
    assert response.status_code == 302 and response.url == reverse("home")
    assert AuditEvent.objects.filter(verb="user.logged_in", actor_id=analyst.pk).exists()


def test_wrong_password_gets_a_clear_message(client, analyst):
    response = client.post(reverse("accounts:login"), {"username": "ana", "password": "wrong"})
    assert response.status_code == 200
    assert "That username and password do not match" in response.content.decode()


@override_settings(AIOS_LOGIN_MAX_FAILURES=3)
def test_repeated_failures_lock_the_name_out_even_with_the_right_password(client, analyst):
    for _ in range(3):
        client.post(reverse("accounts:login"), {"username": "ana", "password": "wrong"})
    response = client.post(reverse("accounts:login"), {"username": "ana", "password": PASSWORD})
    assert response.status_code == 200
    assert "Too many failed sign-in attempts" in response.content.decode()
    assert "_auth_user_id" not in client.session
    assert AuditEvent.objects.filter(verb="user.login_locked").count() == 1


def test_pages_need_sign_in(client):
    response = client.get(reverse("workflows:list"))
    assert response.status_code == 302 and response.url.startswith(reverse("accounts:login"))


def test_home_shows_each_role_what_it_can_do(client, analyst, manager):
    client.force_login(analyst)
    page = client.get(reverse("home")).content.decode()
    assert "Analyst" in page and "Open workflows" in page and "Manager" not in page
    client.force_login(manager)
    page = client.get(reverse("home")).content.decode()
    assert "Review all runs" in page
