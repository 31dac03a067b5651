from __future__ import annotations

from django.urls import path

from apps.accounts import views

app_name = "accounts"

urlpatterns = [
    path("login/", views.LoginView.as_view(), name="login"),
    path("logout/", views.LogoutView.as_view(), name="logout"),
    path("api-token/", views.api_token, name="api-token"),
    path("api-token/<int:token_id>/revoke/", views.api_token_revoke_view, name="api-token-revoke"),
    path("password/", views.PasswordChangeView.as_view(), name="password-change"),
    path("oidc/start/", views.oidc_start, name="oidc-start"),
    path("oidc/callback/", views.oidc_callback, name="oidc-callback"),
]
