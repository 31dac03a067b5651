"""How the API's own authentication classes appear in the OpenAPI document (imported by CoreConfig.ready, which
registers the extension)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class BearerTokenScheme(OpenApiAuthenticationExtension):
    """`Authorization: Bearer <key>`, (`Token <key>` is accepted too)."""

    target_class = "apps.accounts.authentication.ApiTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": (
                "A personal API token (the API token page, or POST /api/auth/token/), sent as "
                "`Authorization: Bearer <token>`."
            ),
        }
