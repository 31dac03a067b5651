"""OpenID Connect single sign-on, on mozilla-django-oidc (authorization code flow with state, nonce and PKCE).

What this module adds to the library:
- the ID token is checked fully: signature (the provider's JWKS, the configured algorithm only), issuer, audience
  (this client), expiry and issue time (the library checks neither issuer nor audience);
- people are matched on (issuer, subject), never on email (`ExternalIdentity`);
- the provider's groups become roles and team memberships at every sign-in (`oidc_user_sync`), and a person
  whose groups give no role is refused and gets no account with rights.

Claims mapping (settings, from the environment): the groups are the AIOS_OIDC_GROUPS_CLAIM claim of the ID token or
of the userinfo answer (a list of names, or one name); AIOS_OIDC_ROLE_<ROLE> lists the groups that give each role
(default aios-<role>); a group AIOS_OIDC_TEAM_PREFIX + <slug> makes the person a member of the existing team <slug>.
"""

from __future__ import annotations

from typing import Any

import jwt
from django.conf import settings
from django.core.exceptions import SuspiciousOperation
from mozilla_django_oidc.auth import OIDCAuthenticationBackend

from apps.accounts.models import User
from apps.accounts.services import oidc_user_sync

# The request attribute that tells the callback view why a sign-in that verified came to nothing.
NO_ROLE_MARK = "aios_oidc_no_role"
# Clock skew allowed between the provider and us when checking exp, iat and nbf.
LEEWAY_SECONDS = 60


def oidc_provider_name() -> str:
    """The provider's display name when single sign-on is configured, else ""."""
    return str(settings.AIOS_OIDC_PROVIDER_NAME) if settings.AIOS_OIDC_ENABLED else ""


def oidc_roles_and_teams(claims: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The role names and team slugs the claims' groups map to (see the module docstring), sorted."""
    raw = claims.get(settings.AIOS_OIDC_GROUPS_CLAIM) or []
    groups = {raw} if isinstance(raw, str) else {str(group) for group in raw if isinstance(group, (str, int))}
    roles = sorted(role for role, names in settings.AIOS_OIDC_ROLE_GROUPS.items() if groups & set(names))
    prefix = settings.AIOS_OIDC_TEAM_PREFIX
    teams = sorted(group[len(prefix) :] for group in groups if prefix and group.startswith(prefix))
    return roles, [team for team in teams if team]


class AiosOidcBackend(OIDCAuthenticationBackend):
    """mozilla-django-oidc's backend with the checks and the mapping above."""

    def get_payload_data(self, token: bytes | str, key: Any) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise SuspiciousOperation("The ID token is not a signed JWT.") from None
        if header.get("alg") != self.OIDC_RP_SIGN_ALGO:  # "none" and HS256-with-the-public-key included
            raise SuspiciousOperation("The ID token is signed with another algorithm than the one configured.")
        try:
            return dict(
                jwt.decode(
                    token,
                    key,
                    algorithms=[self.OIDC_RP_SIGN_ALGO],
                    audience=self.OIDC_RP_CLIENT_ID,
                    issuer=settings.AIOS_OIDC_ISSUER,
                    leeway=LEEWAY_SECONDS,
                    options={"require": ["iss", "aud", "exp", "iat", "sub"]},
                )
            )
        except jwt.InvalidSignatureError:
            raise SuspiciousOperation("The ID token's signature does not verify.") from None
        except jwt.InvalidAudienceError:
            raise SuspiciousOperation("The ID token is meant for another client (audience).") from None
        except jwt.InvalidIssuerError:
            raise SuspiciousOperation("The ID token comes from another issuer.") from None
        except jwt.ExpiredSignatureError:
            raise SuspiciousOperation("The ID token has expired.") from None
        except jwt.InvalidTokenError as error:
            raise SuspiciousOperation(f"The ID token is invalid ({type(error).__name__}).") from None

    def verify_claims(self, claims: dict[str, Any]) -> bool:
        return bool(claims.get("sub"))

    def get_or_create_user(self, access_token: str, id_token: str, payload: dict[str, Any]) -> User | None:
        userinfo = self.get_userinfo(access_token, id_token, payload)
        if not isinstance(userinfo, dict) or userinfo.get("sub") != payload.get("sub"):
            # OpenID Connect Core 5.3.2: the userinfo answer must be about the ID token's subject.
            raise SuspiciousOperation("The userinfo answer is about someone else than the ID token.")
        claims = {**userinfo, **payload}  # the signed ID token wins where both say something
        roles, team_slugs = oidc_roles_and_teams(claims)
        user = oidc_user_sync(issuer=str(payload["iss"]), claims=claims, roles=roles, team_slugs=team_slugs)
        if user is None:
            setattr(self.request, NO_ROLE_MARK, True)
        return user
