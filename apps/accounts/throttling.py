"""Sign-in throttling, for every door that checks a password (the sign-in page, the admin's login, POST
/api/auth/token/).

Two layers:

1. django-axes locks the (username, address) pair after AIOS_LOGIN_MAX_FAILURES failures for
   AIOS_LOGIN_LOCKOUT_SECONDS. Never the account itself: anyone can type anyone's name, so a lock on the name alone
   would let any stranger keep any person out. The address is the direct peer (REMOTE_ADDR) and an IPv6 address
   counts as its /64, the block one household or host usually holds, so walking through the addresses of one's
   own /64 buys no new guesses.
2. A per-username slowdown (`login_slowdown_remaining`) for guesses spread over many addresses: after
   AIOS_LOGIN_USER_FREE_FAILURES failures for one name (from anywhere) within AIOS_LOGIN_LOCKOUT_SECONDS, each
   further attempt at that name must wait a delay that doubles with every failure, up to
   AIOS_LOGIN_USER_MAX_DELAY_SECONDS. A growing delay rather than a lock: it caps a botnet at a handful of
   guesses per minute per name while the person, at worst, waits a minute. And addresses from which the person
   signed in successfully in the last AIOS_LOGIN_KNOWN_ADDRESS_DAYS are exempt, so an attack on a name does not
   slow its owner at their usual desk at all.

REMOTE_ADDR is the only source of the address. Behind a reverse proxy, uvicorn rewrites it from X-Forwarded-For
only when the proxy's address is listed in FORWARDED_ALLOW_IPS (workers/fleet.py starts uvicorn with
--no-proxy-headers otherwise), so a client can never choose the address it is counted under.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import time
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest
from django.utils import timezone


def client_address(request: HttpRequest | None) -> str:
    """The address a request counts under: REMOTE_ADDR, an IPv6 one reduced to its /64 network's first address
    (still a valid address, which django-axes stores in an address column). IPv4-mapped IPv6 counts as the IPv4
    address."""
    raw = str((request.META.get("REMOTE_ADDR") if request is not None else "") or "")
    try:
        address = ipaddress.ip_address(raw.split("%", 1)[0])
    except ValueError:
        return "0.0.0.0"  # noqa: S104 (not a bind address: the counter of requests without a usable peer address)
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{address}/64", strict=False).network_address)
    return str(address)


def normalised_username(request: HttpRequest | None, credentials: dict[str, Any] | None = None) -> str:
    """The name a sign-in attempt counts under (axes' AXES_USERNAME_CALLABLE): trimmed, lower-case and at most
    150 characters (a username's own limit), so "Ana " and "ana" share one counter."""
    name = ""
    if credentials:
        name = str(credentials.get("username") or "")
    elif request is not None:
        name = str(request.POST.get("username") or "") if request.method == "POST" else ""
    return name.strip().lower()[:150]


def username_fingerprint(username: str) -> dict[str, Any]:
    """What the audit trail keeps of a name someone typed: its length and a short hash, never the text (an
    unauthenticated client chooses it, and the audit chain is append-only)."""
    name = username.strip().lower()
    return {"username_length": len(username), "username_sha256": hashlib.sha256(name.encode()).hexdigest()[:16]}


# --- the per-username slowdown -----------------------------------------------------------------------------------


def _name_key(username: str) -> str:
    return hashlib.sha256(username.strip().lower().encode()).hexdigest()


def _known_key(username: str, address: str) -> str:
    return f"login-known:{_name_key(username)}:{address}"


def login_slowdown_remaining(*, username: str, request: HttpRequest | None) -> int:
    """Seconds this attempt at `username` must still wait (0: go ahead). Addresses the person signed in from
    recently never wait."""
    if not username or cache.get(_known_key(username, client_address(request))):
        return 0
    not_before = cache.get(f"login-slow-until:{_name_key(username)}") or 0.0
    return max(0, math.ceil(float(not_before) - time.time()))


def login_failure_count(*, username: str) -> None:
    """Count a failed attempt at `username` (from any address) and, past the free failures, push the next
    allowed attempt out by a delay that doubles with each failure. Counted with INCR, so parallel failures each
    count."""
    window = settings.AIOS_LOGIN_LOCKOUT_SECONDS
    counter = f"login-failures:{_name_key(username)}"
    cache.add(counter, 0, timeout=window)
    try:
        failures = int(cache.incr(counter))
    except ValueError:  # expired between add and incr
        cache.set(counter, 1, timeout=window)
        failures = 1
    cache.touch(counter, timeout=window)
    over = failures - settings.AIOS_LOGIN_USER_FREE_FAILURES
    if over > 0:
        delay = min(2 ** min(over - 1, 30), settings.AIOS_LOGIN_USER_MAX_DELAY_SECONDS)
        cache.set(f"login-slow-until:{_name_key(username)}", time.time() + delay, timeout=delay + 1)


def login_success_remember(*, username: str, request: HttpRequest | None) -> None:
    """A correct password: the name's failure count starts again, and this address is known for the name."""
    cache.delete_many([f"login-failures:{_name_key(username)}", f"login-slow-until:{_name_key(username)}"])
    days = settings.AIOS_LOGIN_KNOWN_ADDRESS_DAYS
    if days:
        cache.set(_known_key(username, client_address(request)), 1, timeout=int(timedelta(days=days).total_seconds()))


# --- what a locked-out client sees (the answer itself: apps.accounts.views.lockout_response) ----------------------


def lockout_minutes(request: HttpRequest, username: str) -> int:
    """Whole minutes (at least 1) until the (username, address) pair's lock ends."""
    from axes.models import AccessAttempt

    last = (
        AccessAttempt.objects.filter(username=username, ip_address=client_address(request))
        .order_by("-attempt_time")
        .values_list("attempt_time", flat=True)
        .first()
    )
    ends = (last or timezone.now()) + timedelta(seconds=settings.AIOS_LOGIN_LOCKOUT_SECONDS)
    return max(1, math.ceil((ends - timezone.now()).total_seconds() / 60))


def throttle_exempt(request: HttpRequest | None, credentials: dict[str, Any] | None = None) -> bool:
    """django-axes' AXES_WHITELIST_CALLABLE: attempts that check no password are not counted. A single sign-on
    callback carries no name to pair with the address, so counting it would lock every sign-on from a shared
    office address after a few refused ones (people without a role, say); the provider throttles its own login."""
    return bool(credentials is not None and not credentials.get("username") and not credentials.get("password"))
