"""Signing in: clear messages, throttling of (name, address) pairs and of names, sign-in audit at every door, idle
sessions, API tokens from a password, and changing one's password."""

from __future__ import annotations

import json
import time

import pytest
from django.core.cache import cache
from django.test import Client, override_settings
from django.urls import reverse

from apps.accounts.middleware import LAST_SEEN_KEY
from apps.accounts.models import ApiToken
from apps.accounts.throttling import client_address
from apps.audit.models import AuditEvent
from tests.conftest import PASSWORD

LOGIN = "/accounts/login/"


@pytest.fixture(autouse=True)
def _clean_throttle():
    cache.clear()
    yield
    cache.clear()


def attempt(client: Client, password: str, *, address: str = "198.51.100.7", username: str = "ana"):
    return client.post(LOGIN, {"username": username, "password": password}, REMOTE_ADDR=address)


def audit_data(verb: str) -> list[dict]:
    return [
        json.loads(data) for data in AuditEvent.objects.filter(verb=verb).order_by("id").values_list("data", flat=True)
    ]


def test_correct_password_signs_in_and_is_audited_with_door_and_address(client, analyst):
    response = attempt(client, PASSWORD)
    assert response.status_code == 302 and response.url == reverse("home")
    event = AuditEvent.objects.get(verb="user.logged_in", actor_id=analyst.pk)
    assert json.loads(event.data) == {"door": "form", "client_ip": "198.51.100.7"}


def test_wrong_password_gets_a_clear_message_and_is_audited_without_the_typed_name(client, analyst):
    response = attempt(client, "wrong", username="ana-typed-by-someone")
    assert response.status_code == 200
    assert "That username and password do not match" in response.content.decode()
    (failure,) = audit_data("user.login_failed")
    assert failure["username_length"] == len("ana-typed-by-someone") and "ana-typed-by-someone" not in str(failure)
    assert failure["door"] == "form" and failure["client_ip"] == "198.51.100.7"


@override_settings(AXES_FAILURE_LIMIT=3)
def test_failures_lock_the_name_and_address_pair_only(client, analyst):
    for _ in range(3):
        attempt(client, "wrong")
    locked = attempt(client, PASSWORD)
    assert locked.status_code == 429 and int(locked["Retry-After"]) > 0
    assert "Too many failed sign-in attempts for this account from your network" in locked.content.decode()
    assert "_auth_user_id" not in client.session
    attempt(client, PASSWORD)  # refused again: the lock is audited once, not per refused attempt
    assert len(audit_data("user.login_locked")) == 1
    # The same person from another address is not locked out...
    elsewhere = Client()
    assert attempt(elsewhere, PASSWORD, address="203.0.113.20").status_code == 302
    # ...nor is another name from the locked address.
    assert attempt(Client(), "wrong", username="rita").status_code == 200


def test_ipv6_addresses_count_by_their_64_block():
    class Request:
        def __init__(self, address: str) -> None:
            self.META = {"REMOTE_ADDR": address}

    assert client_address(Request("2001:db8:1:2:aaaa::1")) == client_address(Request("2001:db8:1:2:bbbb::9"))
    assert client_address(Request("2001:db8:1:2::1")) != client_address(Request("2001:db8:1:3::1"))
    assert client_address(Request("::ffff:192.0.2.5")) == "192.0.2.5"
    assert client_address(Request("192.0.2.5")) == "192.0.2.5"


@override_settings(AXES_FAILURE_LIMIT=3)
def test_ipv6_neighbours_in_one_64_share_a_lock(client, analyst):
    for index in range(3):
        attempt(Client(), "wrong", address=f"2001:db8:5:6::{index + 1}")
    assert attempt(Client(), PASSWORD, address="2001:db8:5:6::99").status_code == 429
    assert attempt(Client(), PASSWORD, address="2001:db8:5:7::1").status_code == 302


@override_settings(AIOS_LOGIN_USER_FREE_FAILURES=2)
def test_guesses_from_many_addresses_slow_the_name_but_not_its_owner_at_a_known_address(analyst):
    assert attempt(Client(), PASSWORD, address="192.0.2.10").status_code == 302  # ana's usual desk
    for index in range(3):  # a botnet: one guess per address, so no pair is ever locked
        attempt(Client(), "wrong", address=f"203.0.113.{index + 1}")
    slowed = attempt(Client(), PASSWORD, address="203.0.113.50")
    assert slowed.status_code == 200 and "each attempt must wait a little" in slowed.content.decode()
    # The owner at the address she signed in from before is not slowed.
    assert attempt(Client(), PASSWORD, address="192.0.2.10").status_code == 302


def test_admin_login_is_throttled_and_audited(client, admin_user_role):
    response = client.post(
        "/admin/login/?next=/admin/",
        {"username": admin_user_role.username, "password": PASSWORD},
        REMOTE_ADDR="192.0.2.1",
    )
    assert response.status_code == 302
    assert audit_data("user.logged_in")[-1] == {"door": "admin", "client_ip": "192.0.2.1"}
    client.post("/admin/login/", {"username": admin_user_role.username, "password": "nope"}, REMOTE_ADDR="192.0.2.1")
    assert audit_data("user.login_failed")[-1]["door"] == "admin"


def test_an_api_token_from_a_password_is_audited_and_works(analyst):
    api = Client()
    response = api.post(
        "/api/auth/token/",
        {"username": "ana", "password": PASSWORD, "name": "CI", "lifetime_days": 7},
        REMOTE_ADDR="192.0.2.3",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["name"] == "CI" and ApiToken.objects.get(user=analyst).prefix == body["prefix"]
    assert audit_data("user.logged_in")[-1] == {"door": "api", "client_ip": "192.0.2.3"}
    assert audit_data("api_token.created")[-1]["via"] == "api"
    listed = Client().get("/api/workflows/", HTTP_AUTHORIZATION=f"Bearer {body['token']}")
    assert listed.status_code == 200
    wrong = api.post("/api/auth/token/", {"username": "ana", "password": "nope"}, REMOTE_ADDR="192.0.2.3")
    assert wrong.status_code == 400 and audit_data("user.login_failed")[-1]["door"] == "api"


@override_settings(AXES_FAILURE_LIMIT=2)
def test_api_token_sign_in_shares_the_pair_lock(analyst):
    for _ in range(2):
        Client().post("/api/auth/token/", {"username": "ana", "password": "nope"}, REMOTE_ADDR="192.0.2.4")
    locked = Client().post("/api/auth/token/", {"username": "ana", "password": PASSWORD}, REMOTE_ADDR="192.0.2.4")
    assert locked.status_code == 429 and "Too many failed sign-in attempts" in locked.json()["detail"]
    assert not ApiToken.objects.exists()


def test_an_idle_session_is_signed_out_with_a_message(client, analyst):
    client.force_login(analyst)
    assert client.get(reverse("home")).status_code == 200
    session = client.session
    session[LAST_SEEN_KEY] = int(time.time()) - 31 * 60
    session.save()
    response = client.get(reverse("workflows:list"), follow=True)
    assert response.redirect_chain[-1][0].startswith(reverse("accounts:login"))
    assert "You were signed out after 30 minutes without activity" in response.content.decode()
    assert client.get(reverse("home")).status_code == 302


def test_timer_refreshes_do_not_keep_a_session_alive_and_an_idle_fragment_sends_the_page_to_sign_in(client, analyst):
    client.force_login(analyst)
    session = client.session
    stale = int(time.time()) - 20 * 60
    session[LAST_SEEN_KEY] = stale
    session.save()
    background = {"HX-Request": "true", "X-AIOS-Background": "1"}
    assert client.get(reverse("home"), headers=background).status_code == 200
    assert client.session[LAST_SEEN_KEY] == stale  # a poll is not activity
    session = client.session
    session[LAST_SEEN_KEY] = int(time.time()) - 31 * 60
    session.save()
    response = client.get(reverse("home"), headers=background)
    assert response.status_code == 204 and response["HX-Redirect"] == reverse("accounts:login")
    assert "_auth_user_id" not in client.session


def test_an_active_session_stays_signed_in(client, analyst):
    client.force_login(analyst)
    session = client.session
    session[LAST_SEEN_KEY] = int(time.time()) - 29 * 60
    session.save()
    assert client.get(reverse("home")).status_code == 200
    assert client.session[LAST_SEEN_KEY] >= int(time.time()) - 5  # a person's request is activity


def test_changing_ones_password_signs_out_other_devices_and_is_audited(analyst):
    here, elsewhere = Client(), Client()
    assert attempt(here, PASSWORD).status_code == 302
    assert attempt(elsewhere, PASSWORD, address="192.0.2.77").status_code == 302
    assert "Your password" in here.get("/accounts/password/").content.decode()
    bad = here.post("/accounts/password/", {"old_password": "nope", "new_password1": "x", "new_password2": "y"})
    assert bad.status_code == 200 and "Your old password was entered incorrectly" in bad.content.decode()
    new = "a-much-longer-new-secret-42"
    done = here.post("/accounts/password/", {"old_password": PASSWORD, "new_password1": new, "new_password2": new})
    assert done.status_code == 302
    assert here.get(reverse("home")).status_code == 200  # this device stays signed in
    assert elsewhere.get(reverse("home")).status_code == 302  # the other is signed out
    assert AuditEvent.objects.filter(verb="user.password_changed", actor_id=analyst.pk).count() == 1
    analyst.refresh_from_db()
    assert analyst.check_password(new)


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
