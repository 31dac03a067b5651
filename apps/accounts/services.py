"""Writes for users, teams and sign-in."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.cache import cache
from django.db import transaction
from django.utils.text import slugify
from rest_framework.authtoken.models import Token

from apps.accounts.audit_receivers import privilege_audit_suppressed
from apps.accounts.models import Team, User
from apps.accounts.roles import ADMIN, ROLES
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


# Filled by apps above accounts that give every team something of its own (the approvals app: its queue).
on_team_created: list[Callable[[Team, User | None], object]] = []


def _keys(username: str, client_ip: str) -> list[tuple[str, str]]:
    """(attempt counter key, lock key) for the username and for the address."""
    name = username.strip().lower()
    return [
        (f"login-attempts:user:{name}", f"login-locked:user:{name}"),
        (f"login-attempts:ip:{client_ip}", f"login-locked:ip:{client_ip}"),
    ]


def login_lockout_remaining(*, username: str, client_ip: str) -> int:
    """Seconds until sign-in is allowed again for this username or address; 0 when not locked out.

    Both count, so many usernames from one address and one username from many addresses are both slowed.
    """
    locked_until = [cache.get(lock_key) or 0 for _, lock_key in _keys(username, client_ip)]
    return max(0, math.ceil(max(locked_until) - time.time()))


def login_attempt_reserve(*, username: str, client_ip: str) -> bool:
    """Count an attempt before the password is checked; False (refuse) when the name or address is locked
    out or this attempt goes over the limit.

    Counting first, atomically (INCR), is what stops a burst of parallel guesses from all getting in
    before the first failure is recorded.
    """
    if login_lockout_remaining(username=username, client_ip=client_ip):
        return False
    lockout, limit = settings.AIOS_LOGIN_LOCKOUT_SECONDS, settings.AIOS_LOGIN_MAX_FAILURES
    allowed = True
    for counter_key, lock_key in _keys(username, client_ip):
        cache.add(counter_key, 0, timeout=lockout)
        try:
            count = cache.incr(counter_key)
        except ValueError:  # expired between add and incr
            cache.set(counter_key, 1, timeout=lockout)
            count = 1
        if count > limit:
            cache.set(lock_key, time.time() + lockout, timeout=lockout)
            cache.delete(counter_key)
            allowed = False
    if not allowed:
        audit_record(
            actor=None,
            verb="user.login_locked",
            target=User.objects.filter(username__iexact=username).first(),
            data={"username": username[:150], "client_ip": client_ip},
        )
    return allowed


def login_attempt_succeeded(*, user: User, client_ip: str) -> None:
    """A correct password: forget this name's attempts and take this one back from the address's count
    (so a shared office address is not locked out by its own successful sign-ins)."""
    user_key, ip_key = (counter for counter, _ in _keys(user.get_username(), client_ip))
    cache.delete(user_key)
    try:
        if cache.decr(ip_key) <= 0:
            cache.delete(ip_key)
    except ValueError:
        pass


def login_success_record(*, user: User, client_ip: str) -> None:
    """Audit a sign-in through the web form."""
    audit_record(actor=user, verb="user.logged_in", target=user, data={"client_ip": client_ip})


# --- API tokens (the REST API's and the MCP endpoint's `Authorization: Bearer <token>`) ---------------------------


@transaction.atomic
def api_token_issue(*, user: User) -> str:
    """A new API token for `user`, replacing the one they had (which stops working at once); returns the key, for
    showing this once. Audited as created or rotated; the key itself is never recorded."""
    replaced = Token.objects.filter(user=user).delete()[0] > 0
    token = Token.objects.create(user=user)
    audit_record(actor=user, verb="api_token.rotated" if replaced else "api_token.created", target=user)
    return str(token.key)


@transaction.atomic
def api_token_revoke(*, user: User) -> bool:
    """Delete `user`'s API token, so whatever holds it is refused from now on; False when they had none."""
    revoked = Token.objects.filter(user=user).delete()[0] > 0
    if revoked:
        audit_record(actor=user, verb="api_token.revoked", target=user)
    return revoked
