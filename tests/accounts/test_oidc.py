"""Single sign-on through OpenID Connect, end to end: the real web server (uvicorn) and a provider over real sockets
(tests/support/oidc.py), the whole redirect dance followed by an HTTP client as a browser would."""

from __future__ import annotations

import html
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from django.core.management import call_command

from apps.accounts.models import ExternalIdentity, User
from apps.audit.models import AuditEvent
from tests.support.oidc import Provider, oidc_provider
from tests.support.processes import asgi_server_argv, free_port, http_ok, running, service_env

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

CLIENT_ID, CLIENT_SECRET = "aios-test", "a-client-secret-from-a-file"


@pytest.fixture(scope="module")
def sso(django_db_setup: Any, django_db_blocker: Any, tmp_path_factory: Any) -> Iterator[tuple[str, Provider]]:
    """The web server configured for the provider (endpoints from `manage.py oidc_discover`, the client secret from
    a file); yields its base URL and the provider."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with oidc_provider(
        client_id=CLIENT_ID, client_secret=CLIENT_SECRET, redirect_uris=[f"{base}/accounts/oidc/callback/"]
    ) as provider:
        out = io.StringIO()
        call_command("oidc_discover", provider.issuer, stdout=out)
        discovered = dict(line.split("=", 1) for line in out.getvalue().split())
        secret_file: Path = tmp_path_factory.mktemp("oidc") / "client-secret"
        secret_file.write_text(CLIENT_SECRET + "\n")
        with django_db_blocker.unblock():
            env = service_env(
                DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
                AIOS_PUBLIC_URLS=base,
                AIOS_OIDC_CLIENT_ID=CLIENT_ID,
                AIOS_OIDC_CLIENT_SECRET_FILE=str(secret_file),
                AIOS_OIDC_PROVIDER_NAME="Test IdP",
                **discovered,
            )
        with running("oidc-asgi", asgi_server_argv(port), ready=lambda log: http_ok(f"{base}/healthz"), env=env):
            yield base, provider


def sign_in(base: str, provider: Provider, person: dict[str, Any]) -> tuple[requests.Session, requests.Response]:
    """A fresh browser clicks "Sign in with Test IdP"; the provider approves `person`; redirects are followed."""
    provider.person = person
    browser = requests.Session()
    return browser, browser.get(f"{base}/accounts/oidc/start/?next=/runs/", timeout=30)


def events(verb: str) -> list[dict[str, Any]]:
    return [
        json.loads(data) for data in AuditEvent.objects.filter(verb=verb).order_by("id").values_list("data", flat=True)
    ]


def olga(*groups: str) -> dict[str, Any]:
    return {
        "sub": "00u-olga-4711",
        "preferred_username": "olga",
        "email": "olga@example.com",
        "given_name": "Olga",
        "family_name": "Berg",
        "groups": list(groups),
    }


def test_the_sign_in_page_offers_the_provider_beside_the_password_form(sso):
    base, _provider = sso
    page = requests.get(f"{base}/accounts/login/", timeout=10).text
    assert "Sign in with Test IdP" in page and 'name="password"' in page


def test_sign_in_maps_groups_to_roles_and_teams_and_syncs_them_at_every_sign_in(sso, team):
    base, provider = sso
    browser, response = sign_in(base, provider, olga("aios-analyst", "aios-team-claims", "aios-team-nope", "sales"))
    assert response.status_code == 200 and response.url == f"{base}/runs/", response.url
    home = browser.get(f"{base}/", timeout=10).text
    assert "Welcome, Olga Berg" in home and "Analyst" in home and "Claims" in home
    assert provider.exchanges[-1] == {"pkce_verified": True, "nonce_sent": True}

    user = User.objects.get(external_identity__subject="00u-olga-4711")
    assert user.username == "olga" and not user.has_usable_password()
    assert sorted(user.groups.values_list("name", flat=True)) == ["analyst", "team:claims"]
    assert ExternalIdentity.objects.get(user=user).issuer == provider.issuer
    (created,) = events("user.created_via_oidc")
    assert created["roles"] == ["analyst"] and created["teams"] == ["claims"]
    (changed,) = events("user.roles_changed")
    assert changed["after"] == {"roles": ["analyst"], "teams": ["claims"]} and changed["unknown_teams"] == ["nope"]
    assert events("user.logged_in")[-1]["door"] == "oidc"

    # The provider moves her from analyst to reviewer and out of the team: the next sign-in follows.
    _browser, response = sign_in(base, provider, olga("aios-reviewer"))
    assert response.status_code == 200 and response.url == f"{base}/runs/"
    assert sorted(user.groups.values_list("name", flat=True)) == ["reviewer"]
    changed = events("user.roles_changed")[-1]
    assert changed["before"] == {"roles": ["analyst"], "teams": ["claims"]}
    assert changed["after"] == {"roles": ["reviewer"], "teams": []}
    assert User.objects.filter(external_identity__isnull=False).count() == 1  # the same account, not a new one

    # An OIDC user's password is the provider's business.
    page = browser.get(f"{base}/accounts/password/", timeout=10).text
    assert "your password is managed there" in page and 'name="new_password1"' not in page


def test_claims_with_no_role_get_a_clear_page_and_no_account_with_rights(sso, team):
    base, provider = sso
    browser, response = sign_in(base, provider, {"sub": "00u-nora", "preferred_username": "nora", "groups": ["sales"]})
    assert response.status_code == 403 and "Your account has no AIOS role" in html.unescape(response.text)
    assert not User.objects.filter(username="nora").exists()
    assert browser.get(f"{base}/", timeout=10).url.startswith(f"{base}/accounts/login/")  # not signed in
    assert events("user.oidc_refused")[-1]["reason"] == "no role"

    # Refused single sign-ons are no password guesses: however many, they lock no one out at this address.
    for _ in range(6):
        assert sign_in(base, provider, {"sub": "00u-nora", "groups": []})[1].status_code == 403

    # Someone who had a role and lost every group: refused, and left with no role or team.
    assert sign_in(base, provider, olga("aios-manager", "aios-team-claims"))[1].status_code == 200
    _browser, response = sign_in(base, provider, olga())
    assert response.status_code == 403
    assert not User.objects.get(username="olga").groups.exists()
    assert events("user.roles_changed")[-1]["after"] == {"roles": [], "teams": []}


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("bad_signature", "The ID token's signature does not verify"),
        ("wrong_audience", "The ID token is meant for another client (audience)"),
        ("wrong_issuer", "The ID token comes from another issuer"),
        ("expired", "The ID token has expired"),
    ],
)
def test_a_forged_or_stale_id_token_is_refused(sso, team, fault, reason):
    base, provider = sso
    provider.fault = fault
    try:
        browser, response = sign_in(base, provider, olga("aios-admin"))
    finally:
        provider.fault = None
    assert response.url.startswith(f"{base}/accounts/login/")
    assert f"Sign-in with Test IdP failed: {reason}" in html.unescape(response.text)
    assert browser.get(f"{base}/", timeout=10).url.startswith(f"{base}/accounts/login/")
    assert not User.objects.filter(username="olga").exists()
    assert events("user.oidc_failed")[-1]["reason"].startswith(reason)
