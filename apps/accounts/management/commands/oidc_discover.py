"""`manage.py oidc_discover <issuer>`: read an OpenID Connect provider's discovery document and print the settings
single sign-on needs, as environment lines to paste into the deployment's environment."""

from __future__ import annotations

from typing import Any

import requests
from django.core.management.base import BaseCommand, CommandError

# Discovery field → our variable.
FIELDS = {
    "issuer": "AIOS_OIDC_ISSUER",
    "authorization_endpoint": "AIOS_OIDC_AUTHORIZATION_ENDPOINT",
    "token_endpoint": "AIOS_OIDC_TOKEN_ENDPOINT",
    "userinfo_endpoint": "AIOS_OIDC_USERINFO_ENDPOINT",
    "jwks_uri": "AIOS_OIDC_JWKS_URI",
}


class Command(BaseCommand):
    help = "Print the AIOS_OIDC_* endpoint settings from a provider's /.well-known/openid-configuration."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("issuer", help="The provider's issuer URL, e.g. https://login.example.com/realms/staff")

    def handle(self, *args: Any, issuer: str, **options: Any) -> None:
        url = issuer.rstrip("/") + "/.well-known/openid-configuration"
        try:
            response = requests.get(url, timeout=10)
            response.raise_for_status()
            document = response.json()
        except (requests.RequestException, ValueError) as error:
            raise CommandError(f"Could not read {url}: {error}") from None
        missing = [name for name in FIELDS if not isinstance(document.get(name), str)]
        if missing:
            raise CommandError(f"The discovery document lacks {', '.join(missing)}.")
        if document["issuer"].rstrip("/") != issuer.rstrip("/"):
            # OpenID Connect Discovery 4.3: the issuer in the document must be the one asked about.
            raise CommandError(f"The document names another issuer ({document['issuer']}).")
        for name, variable in FIELDS.items():
            self.stdout.write(f"{variable}={document[name]}")
        algorithms = document.get("id_token_signing_alg_values_supported") or []
        if "RS256" not in algorithms and algorithms:
            self.stdout.write(f"AIOS_OIDC_SIGN_ALGO={algorithms[0]}")
