"""Keeping WebSocket subscriptions honest after connect.

A socket's permission is checked at connect like the page's; without more, signing out, being deactivated or
losing access to the object would leave an open tab receiving every later change. So every consumer that
pushes data mixes in `RevocableSocketMixin`:

- before each push it re-checks, at most every AIOS_SOCKET_RECHECK_SECONDS (a token stream pushes many times
  a second, and each check is two or three queries): the session is still signed in as the same, active user
  (Django's own `get_user`, which also notices a changed password), and the consumer's `access_allowed`
  (its selector, as at connect) still holds for a freshly loaded user, so role changes count at once;
- it joins a per-user group, to which signing out (`user_logged_out`), deactivation and role changes send a
  message, so a socket with nothing to push is closed or re-checked too.

A refused re-check closes with 4403 (signed out or deactivated) or 4404 (the object is no longer visible, the
same answer as at connect), and audits the refusal.
"""

from __future__ import annotations

import functools
import logging
import time
from importlib import import_module
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth import get_user
from django.contrib.auth.signals import user_logged_out
from django.db import transaction
from django.db.models.signals import m2m_changed, post_save

from apps.accounts.models import User
from apps.audit.denials import audit_socket_denial

logger = logging.getLogger(__name__)

CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404


def user_group(user_pk: int) -> str:
    """The channel-layer group every socket of one user joins."""
    return f"user.{user_pk}"


class _SessionOnly:
    """The one attribute `django.contrib.auth.get_user` reads from a request."""

    def __init__(self, session: Any) -> None:
        self.session = session


class RevocableSocketMixin:
    """For WebsocketConsumer subclasses: call `revocable_join()` once access was granted at connect,
    `still_allowed()` before every push (it closes the socket and returns False when access is gone),
    `revocable_leave()` in disconnect, and implement `access_allowed(user)`."""

    scope: dict[str, Any]
    channel_name: str
    channel_layer: Any
    socket_route = ""
    _checked_at = 0.0
    _closed_for_access = False

    def access_allowed(self, user: User) -> bool:
        """Whether `user` (freshly loaded) may still see what this socket pushes: the connect-time check."""
        raise NotImplementedError

    def revocable_join(self) -> None:
        self._checked_at = time.monotonic()
        user = self.scope.get("user")
        if user is not None and user.is_authenticated:
            async_to_sync(self.channel_layer.group_add)(user_group(user.pk), self.channel_name)

    def revocable_leave(self) -> None:
        user = self.scope.get("user")
        if user is not None and user.is_authenticated:
            async_to_sync(self.channel_layer.group_discard)(user_group(user.pk), self.channel_name)

    def still_allowed(self, *, force: bool = False) -> bool:
        if self._closed_for_access:
            return False
        now = time.monotonic()
        if not force and now - self._checked_at < settings.AIOS_SOCKET_RECHECK_SECONDS:
            return True
        code = self._recheck()
        self._checked_at = time.monotonic()
        if code is None:
            return True
        self._closed_for_access = True
        audit_socket_denial(self.scope, route=self.socket_route or type(self).__name__, code=code)
        self.close(code=code)  # type: ignore[attr-defined]
        return False

    def _recheck(self) -> int | None:
        """None when access holds, else the close code."""
        connected = self.scope.get("user")
        session = self.scope.get("session")
        if connected is None or not connected.is_authenticated or session is None or not session.session_key:
            return CLOSE_FORBIDDEN
        # A fresh session object: the scope's caches what it read at connect.
        store = import_module(settings.SESSION_ENGINE).SessionStore(session_key=session.session_key)
        current = get_user(_SessionOnly(store))  # type: ignore[arg-type]
        if not current.is_authenticated or current.pk != connected.pk:
            return CLOSE_FORBIDDEN
        if not self.access_allowed(current):
            return CLOSE_NOT_FOUND
        return None

    # Channel-layer handlers for messages to the per-user group.

    def session_ended(self, event: dict[str, Any]) -> None:
        """A sign-out (of this session, or of every session when `session_key` is empty) or a deactivation."""
        session = self.scope.get("session")
        ended = event.get("session_key") or ""
        if ended and (session is None or session.session_key != ended):
            return
        self._closed_for_access = True
        audit_socket_denial(self.scope, route=self.socket_route or type(self).__name__, code=CLOSE_FORBIDDEN)
        self.close(code=CLOSE_FORBIDDEN)  # type: ignore[attr-defined]

    def access_changed(self, event: dict[str, Any]) -> None:
        """The user's roles or flags changed: re-check now rather than at the next push."""
        self.still_allowed(force=True)


def _send_to_user(user_pk: int, message: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(user_group(user_pk), message)
    except Exception:  # the sockets re-check on their next push anyway; signing out must not fail for this
        logger.warning("could not tell user %s's sockets about %s", user_pk, message.get("type"), exc_info=True)


def _on_logged_out(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    if user is None or not getattr(user, "pk", None):
        return
    session_key = getattr(getattr(request, "session", None), "session_key", None) or ""
    # Before the session is flushed the key is known; the message goes once the sign-out is committed.
    transaction.on_commit(lambda: _send_to_user(user.pk, {"type": "session.ended", "session_key": session_key}))


def _on_user_saved(sender: Any, instance: User, created: bool, raw: bool = False, **kwargs: Any) -> None:
    if raw or created:
        return
    update_fields = kwargs.get("update_fields")
    if update_fields is not None and not set(update_fields) & {"is_active", "is_staff", "is_superuser", "password"}:
        return
    pk = instance.pk
    if not instance.is_active:
        transaction.on_commit(lambda: _send_to_user(pk, {"type": "session.ended", "session_key": ""}))
    else:
        transaction.on_commit(lambda: _send_to_user(pk, {"type": "access.changed"}))


def _on_groups_changed(sender: Any, instance: Any, action: str, reverse: bool, pk_set: Any, **kwargs: Any) -> None:
    if action not in ("post_add", "post_remove", "post_clear"):
        return
    # A reverse clear (`group.user_set.clear()`) does not say whose: those sockets notice at their next push.
    user_pks = [instance.pk] if not reverse else list(pk_set or []) if action != "post_clear" else []
    for pk in user_pks:
        transaction.on_commit(functools.partial(_send_to_user, int(pk), {"type": "access.changed"}))


def connect() -> None:
    """Called once from AccountsConfig.ready()."""
    user_logged_out.connect(_on_logged_out, dispatch_uid="aios-sockets-logged-out")
    post_save.connect(_on_user_saved, sender=User, dispatch_uid="aios-sockets-user-saved")
    m2m_changed.connect(_on_groups_changed, sender=User.groups.through, dispatch_uid="aios-sockets-groups")
