"""API authentication shared by every app (a module of its own: DRF imports it while its views are loading)."""

from __future__ import annotations

from rest_framework.authentication import TokenAuthentication


class BearerTokenAuthentication(TokenAuthentication):
    """The API token as `Authorization: Bearer <key>` too, the form most HTTP clients and integration tools send
    (DRF's own class takes only `Token <key>`). Same tokens, same checks."""

    keyword = "Bearer"
