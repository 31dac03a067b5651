"""POST /api/auth/token/: a script signs in with a username and password and gets an expiring API token."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import authenticate
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.decorators import api_view, authentication_classes, permission_classes
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response

from apps.accounts.forms import SLOWED_MESSAGE
from apps.accounts.services import API_TOKEN_LIFETIMES, api_token_issue, login_success_record
from apps.accounts.throttling import login_slowdown_remaining


class TokenSignInSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    password = serializers.CharField(max_length=4096, trim_whitespace=False, style={"input_type": "password"})
    name = serializers.CharField(max_length=100, required=False, default="API sign-in")
    lifetime_days = serializers.ChoiceField(choices=API_TOKEN_LIFETIMES, required=False, default=30)


class TokenIssuedSerializer(serializers.Serializer):
    token = serializers.CharField(help_text="Send as `Authorization: Bearer <token>`. Shown only in this answer.")
    name = serializers.CharField()
    prefix = serializers.CharField()
    expires_at = serializers.DateTimeField()


@extend_schema(request=TokenSignInSerializer, responses={201: TokenIssuedSerializer}, auth=[])
@api_view(["POST"])
@authentication_classes([])
@permission_classes([AllowAny])
def api_token_sign_in_view(request: Request) -> Response:
    """Check a username and password (throttled and audited like the sign-in page) and issue a new API token."""
    if settings.AIOS_OIDC_ENABLED and not settings.AIOS_PASSWORD_LOGIN:
        return Response(
            {"detail": "Passwords are not accepted: create a token on the API token page."},
            status=status.HTTP_403_FORBIDDEN,
        )
    serializer = TokenSignInSerializer(data=request.data)
    serializer.is_valid(raise_exception=True)
    data = serializer.validated_data
    django_request = request._request
    wait = login_slowdown_remaining(username=data["username"], request=django_request)
    if wait:
        return Response(
            {"detail": SLOWED_MESSAGE % {"seconds": wait}},
            status=status.HTTP_429_TOO_MANY_REQUESTS,
            headers={"Retry-After": str(wait)},
        )
    user = authenticate(django_request, username=data["username"], password=data["password"])
    if user is None or not user.is_active:
        # A locked pair's answer (429 with Retry-After) replaces this one in django-axes' middleware.
        return Response({"detail": "That username and password do not match."}, status=status.HTTP_400_BAD_REQUEST)
    login_success_record(user=user, request=django_request, door="api")
    token, key = api_token_issue(user=user, name=data["name"], lifetime_days=int(data["lifetime_days"]), via="api")
    return Response(
        {"token": key, "name": token.name, "prefix": token.prefix, "expires_at": token.expires_at},
        status=status.HTTP_201_CREATED,
    )
