"""The REST API's token authentication: personal API tokens (`ApiToken`), hashed, expiring and revocable."""

from __future__ import annotations

from typing import Any

from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request

from apps.accounts.models import ApiToken, User
from apps.accounts.services import api_token_authenticate

# `Bearer` is what most HTTP clients and integration tools send; `Token` is the scheme earlier versions documented.
KEYWORDS = ("bearer", "token")


class ApiTokenAuthentication(BaseAuthentication):
    """`Authorization: Bearer <token>` (or `Token <token>`). A header with another scheme is left to the next
    class; a token that is unknown, revoked or expired is refused with 401, never a fall-through to anonymous."""

    def authenticate(self, request: Request) -> tuple[User, ApiToken] | None:
        parts = get_authorization_header(request).split()
        if not parts or parts[0].decode("latin-1").lower() not in KEYWORDS:
            return None
        if len(parts) != 2:
            raise AuthenticationFailed("Send the token as `Authorization: Bearer <token>`, with no spaces in it.")
        try:
            key = parts[1].decode("ascii")
        except UnicodeDecodeError:
            raise AuthenticationFailed("Invalid, expired or revoked API token.") from None
        token = api_token_authenticate(key=key)
        if token is None:
            raise AuthenticationFailed("Invalid, expired or revoked API token.")
        return token.user, token

    def authenticate_header(self, request: Any) -> str:
        return 'Bearer realm="api"'
