"""Writes for users, teams and sign-in."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.cache import cache
from django.db import models, transaction
from django.http import HttpRequest
from django.utils import timezone
from django.utils.text import slugify

from apps.accounts.audit_receivers import privilege_audit_suppressed
from apps.accounts.models import ApiToken, ExternalIdentity, Team, User
from apps.accounts.roles import ADMIN, ROLES
from apps.accounts.throttling import client_address, username_fingerprint
from apps.audit.services import audit_record
from apps.core.exceptions import ApplicationError


@transaction.atomic
def user_create(
    *,
    username: str,
    password: str,
    roles: list[str],
    first_name: str = "",
    last_name: str = "",
    email: str = "",
    actor: User | None = None,
) -> User:
    """Create an active user holding `roles` (names from `apps.accounts.roles.ROLES`)."""
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ApplicationError(f"Unknown roles: {', '.join(sorted(unknown))}.")
    if User.objects.filter(username__iexact=username).exists():
        raise ApplicationError(f'A user named "{username}" already exists.')
    # One event says it all (`user.created` with the roles); the receivers for changes made elsewhere stay quiet.
    with privilege_audit_suppressed():
        user = User.objects.create_user(
            username=username,
            password=password,
            first_name=first_name,
            last_name=last_name,
            email=email,
            is_staff=ADMIN in roles,  # the admin site is the administrators' console
        )
        user.groups.add(*Group.objects.filter(name__in=roles))
    audit_record(actor=actor, verb="user.created", target=user, data={"roles": sorted(roles)})
    return user


@transaction.atomic
def user_set_password(*, user: User, password: str, actor: User | None = None) -> User:
    """Replace a user's password (never recorded anywhere but as its hash)."""
    user.set_password(password)
    user.save(update_fields=["password"])
    audit_record(actor=actor, verb="user.password_set", target=user)
    return user


@transaction.atomic
def team_create(*, name: str, members: list[User], actor: User | None = None) -> Team:
    """Create a team with its own permission group, and add `members` to it."""
    slug = slugify(name)
    if not slug:
        raise ApplicationError("A team needs a name with letters or digits.")
    if Team.objects.filter(slug=slug).exists():
        raise ApplicationError(f'A team named "{name}" already exists.')
    group = Group.objects.create(name=f"team:{slug}")
    team = Team.objects.create(name=name, slug=slug, group=group)
    with privilege_audit_suppressed():  # `team.created` names the members
        for member in members:
            member.groups.add(group)
    audit_record(actor=actor, verb="team.created", target=team, data={"members": sorted(m.username for m in members)})
    for hook in on_team_created:
        hook(team, actor)
    return team


# --- single sign-on ----------------------------------------------------------------------------------------------


def _roles_and_teams_of(user: User) -> dict[str, list[str]]:
    names = list(user.groups.values_list("name", flat=True))
    return {
        "roles": sorted(name for name in names if name in ROLES),
        "teams": sorted(Team.objects.filter(group__user=user).values_list("slug", flat=True)),
    }


def _oidc_username(claims: dict[str, Any]) -> str:
    """A free username for a new single sign-on user: the provider's preferred_username (or the email's local part),
    cleaned to Django's username characters, with a suffix from the subject when taken (never someone else's)."""
    wanted = str(claims.get("preferred_username") or str(claims.get("email") or "").split("@")[0] or "user")
    base = re.sub(r"[^\w.@+-]", "", wanted)[:120] or "user"
    if not User.objects.filter(username__iexact=base).exists():
        return base
    return f"{base}-{hashlib.sha256(str(claims['sub']).encode()).hexdigest()[:8]}"


@transaction.atomic
def oidc_user_sync(*, issuer: str, claims: dict[str, Any], roles: list[str], team_slugs: list[str]) -> User | None:
    """The user for a verified single sign-on (`claims`: the ID token's and userinfo's), with roles and teams set to
    exactly `roles` and `team_slugs` (what the claims' groups map to: `apps.accounts.oidc.oidc_roles_and_teams`);
    None when there is no role: then no account is made, and an existing one keeps no role or team.

    Creation is audited as `user.created_via_oidc`, any change of roles or teams as `user.roles_changed` (before and
    after), a refusal as `user.oidc_refused`. Teams are joined, never created: a group naming no team is ignored
    (and listed in the audit data).
    """
    subject = str(claims["sub"])
    teams = list(Team.objects.filter(slug__in=team_slugs).select_related("group"))
    unknown_teams = sorted(set(team_slugs) - {team.slug for team in teams})
    identity = ExternalIdentity.objects.select_related("user").filter(issuer=issuer, subject=subject).first()
    if identity is None and not roles:
        audit_record(
            actor=None,
            verb="user.oidc_refused",
            data={"reason": "no role", "subject_sha256": hashlib.sha256(subject.encode()).hexdigest()[:16]},
        )
        return None
    if identity is None:
        user = User(username=_oidc_username(claims))
        user.set_unusable_password()  # the provider is the only way in
        user.save()
        identity = ExternalIdentity.objects.create(user=user, issuer=issuer, subject=subject)
        audit_record(
            actor=None,
            verb="user.created_via_oidc",
            target=user,
            data={"issuer": issuer, "roles": roles, "teams": [team.slug for team in teams]},
        )
    user = identity.user
    user.first_name = str(claims.get("given_name") or user.first_name)[:150]
    user.last_name = str(claims.get("family_name") or user.last_name)[:150]
    user.email = str(claims.get("email") or user.email)[:254]
    user.is_staff = ADMIN in roles
    user.save(update_fields=["first_name", "last_name", "email", "is_staff"])
    before = _roles_and_teams_of(user)
    keep = user.groups.exclude(name__in=ROLES).exclude(team__isnull=False)  # groups that are neither (none today)
    with privilege_audit_suppressed():  # recorded below as one event with the sign-in's before and after
        user.groups.set([*keep, *Group.objects.filter(name__in=roles), *(team.group for team in teams)])
    after = _roles_and_teams_of(user)
    if before != after:
        audit_record(
            actor=None,
            verb="user.roles_changed",
            target=user,
            data={"via": "oidc", "before": before, "after": after, "unknown_teams": unknown_teams},
        )
    if not roles:
        audit_record(actor=None, verb="user.oidc_refused", target=user, data={"reason": "no role"})
        return None
    ExternalIdentity.objects.filter(pk=identity.pk).update(last_login_at=timezone.now())
    return user


# Filled by apps above accounts that give every team something of its own (the approvals app: its queue).
on_team_created: list[Callable[[Team, User | None], object]] = []


def _door(request: HttpRequest | None) -> str:
    """Which sign-in door a request came through, for the audit trail."""
    path = request.path if request is not None else ""
    if path.startswith("/admin/"):
        return "admin"
    if path.startswith("/api/"):
        return "api"
    return "form"


def login_success_record(*, user: User, request: HttpRequest | None, door: str) -> None:
    """Audit a sign-in (`door`: form, admin, api, oidc) with the address it came from."""
    audit_record(
        actor=user, verb="user.logged_in", target=user, data={"door": door, "client_ip": client_address(request)}
    )


def login_failure_record(*, username: str, request: HttpRequest | None) -> None:
    """Audit a failed password check. The typed name is kept only as its length and a short hash (an
    unauthenticated client chooses it); the account, when the name is one, is the event's target."""
    audit_record(
        actor=None,
        verb="user.login_failed",
        target=User.objects.filter(username__iexact=username).first() if username else None,
        data={"door": _door(request), "client_ip": client_address(request), **username_fingerprint(username)},
    )


def login_lockout_record(*, username: str, request: HttpRequest | None) -> None:
    """Audit that the (username, address) pair is locked out: once per lock, however many attempts it then
    refuses (each refused attempt would otherwise let a client write to the append-only chain at will)."""
    address = client_address(request)
    once = "login-lock-audited:" + hashlib.sha256(f"{username}|{address}".encode()).hexdigest()
    if not cache.add(once, 1, timeout=settings.AIOS_LOGIN_LOCKOUT_SECONDS):
        return
    audit_record(
        actor=None,
        verb="user.login_locked",
        target=User.objects.filter(username__iexact=username).first() if username else None,
        data={"door": _door(request), "client_ip": address, **username_fingerprint(username)},
    )


def oidc_failure_record(*, reason: str, request: HttpRequest | None) -> None:
    """Audit a single sign-on that did not verify (`reason`: one of our own fixed sentences, never the provider's
    or the client's text)."""
    audit_record(
        actor=None, verb="user.oidc_failed", data={"reason": reason[:200], "client_ip": client_address(request)}
    )


@transaction.atomic
def password_change_record(*, user: User) -> None:
    """Audit that `user` changed their own password (Django's form has set and saved it)."""
    audit_record(actor=user, verb="user.password_changed", target=user)


# --- API tokens (the REST API's and the MCP endpoint's `Authorization: Bearer <token>`) ---------------------------

# How long a token may live, in days: the choices the token page offers (the longest is also the service's cap).
API_TOKEN_LIFETIMES = (7, 30, 90, 365)
API_TOKEN_PREFIX = "aios_"  # noqa: S105 (marks a string as an AIOS token)


@transaction.atomic
def api_token_issue(
    *, user: User, name: str, lifetime_days: int, actor: User | None = None, via: str = "page"
) -> tuple[ApiToken, str]:
    """A new API token for `user`, valid for `lifetime_days`; returns its row and the token itself (for showing
    once: only its digest is kept).

    Only its SHA-256 is stored (`ApiToken`). Audited as `api_token.created` with its name, prefix, expiry and how it
    was asked for (`via`: "page", "api" for POST /api/auth/token/, "demo"); never the token.
    """
    name = " ".join(name.split())[:100]
    if not name:
        raise ApplicationError("Give the token a name, so you can tell it apart later.")
    if not 1 <= lifetime_days <= max(API_TOKEN_LIFETIMES):
        raise ApplicationError(f"A token lives between 1 and {max(API_TOKEN_LIFETIMES)} days.")
    key = API_TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        user=user,
        name=name,
        prefix=key[: len(API_TOKEN_PREFIX) + 6],
        digest=api_token_digest(key),
        expires_at=timezone.now() + timedelta(days=lifetime_days),
    )
    audit_record(
        actor=actor or user,
        verb="api_token.created",
        target=user,
        data={
            "token_id": token.pk,
            "name": token.name,
            "prefix": token.prefix,
            "expires_at": token.expires_at.isoformat(),
            "via": via,
        },
    )
    return token, key


@transaction.atomic
def api_token_revoke(*, token: ApiToken, actor: User) -> bool:
    """Revoke `token`, so whatever holds it is refused from now on; False (nothing recorded) when it was revoked
    already. The caller checks that `actor` may (its owner, or an administrator in the admin site)."""
    revoked = ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now()) > 0
    if revoked:
        audit_record(
            actor=actor,
            verb="api_token.revoked",
            target=token.user,
            data={"token_id": token.pk, "name": token.name, "prefix": token.prefix},
        )
    return revoked


def api_token_digest(key: str) -> str:
    """The stored form of a token: SHA-256, hex."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


# A token's last use is written at most this often: a busy script must not turn every API call into a write.
API_TOKEN_TOUCH_SECONDS = 60


def api_token_authenticate(*, key: str) -> ApiToken | None:
    """The live token whose digest matches `key` (not revoked, not expired, its user active), with its user; else
    None. Records the use in `last_used_at` (at most once a minute, by a conditional UPDATE, unaudited: a use is not
    a change)."""
    if not key or len(key) > 200:
        return None
    now = timezone.now()
    token = (
        ApiToken.objects.select_related("user")
        .filter(digest=api_token_digest(key), revoked_at__isnull=True, expires_at__gt=now, user__is_active=True)
        .first()
    )
    if token is None:
        return None
    stale = now - timedelta(seconds=API_TOKEN_TOUCH_SECONDS)
    if token.last_used_at is None or token.last_used_at < stale:
        ApiToken.objects.filter(pk=token.pk).filter(
            models.Q(last_used_at__isnull=True) | models.Q(last_used_at__lt=stale)
        ).update(last_used_at=now)
        token.last_used_at = now
    return token
