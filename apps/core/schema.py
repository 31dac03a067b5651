"""How the API's own authentication classes appear in the OpenAPI document (imported by CoreConfig.ready, which
registers the extension)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class BearerTokenScheme(OpenApiAuthenticationExtension):
    """`Authorization: Bearer <key>`, beside DRF's `Token <key>` scheme."""

    target_class = "apps.core.authentication.BearerTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "The API token of POST /api/auth/token/, sent as `Authorization: Bearer <key>`.",
        }
