"""AIOS settings: one module, driven by the environment (see deploy/.env.example for every variable).

With no variables set this is production, which refuses to start until it is given its keys, database and mail
server. The embedded stack (`make run`, `make services`, `make test`: deploy/devstack) sets AIOS_ENV=development
or test itself, with keys it generates per machine. Every refusal is one line naming the variable to set
(apps/core/env.py; the entry points print it without a traceback: apps/core/startup.py).
"""

from __future__ import annotations

import math
import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from apps.core.env import (
    SMTP_SCHEMES,
    database_from_url,
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_is_set,
    env_list,
    env_secret,
    env_secret_url,
    env_str,
    env_url,
    smtp_server_from_url,
)
from apps.core.keyfiles import (
    CREDENTIALS_KEY_FILE_NAME,
    SECRET_KEY_FILE_NAME,
    fernet_key_valid,
    generate_credentials_key,
    generate_secret_key,
    key_file_ensure,
)
from apps.core.telemetry.logs import LOG_FORMATS, logging_config

BASE_DIR = Path(__file__).resolve().parent.parent

# Production unless told otherwise: a deployment that forgot AIOS_ENV gets the strict checks, never a debug
# server with a public key. Only the embedded stack and the test settings say development or test.
AIOS_ENV = env_choice("AIOS_ENV", "production", ("development", "production", "test"))
PRODUCTION = AIOS_ENV == "production"

AIOS_DATA_DIR = Path(env_str("AIOS_DATA_DIR", str(BASE_DIR / ".data")))

DEBUG = env_bool("DJANGO_DEBUG", default=AIOS_ENV == "development")

# --- Keys (deploy/README.md, "Keys") ----------------------------------------------------------------------------
# The key the repository once shipped for development: refused outside development and test, wherever it comes
# from (an old .env, a copied compose file).
KNOWN_DEVELOPMENT_SECRET_KEYS = frozenset({"development-only-insecure-key-change-me-in-production-0123456789"})
if PRODUCTION:
    if not env_is_set("DJANGO_SECRET_KEY"):
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY must be set (or DJANGO_SECRET_KEY_FILE): production needs its own random key, e.g. "
            "the output of: python3 -c 'import secrets; print(secrets.token_urlsafe(50))'"
        )
    SECRET_KEY = env_secret("DJANGO_SECRET_KEY")
else:
    # Development and test without a key of their own: one generated for this machine (the embedded stack has
    # already made it and passes DJANGO_SECRET_KEY_FILE), so no installation signs with a published key.
    SECRET_KEY = env_secret("DJANGO_SECRET_KEY", "") or key_file_ensure(
        AIOS_DATA_DIR / SECRET_KEY_FILE_NAME, generate_secret_key
    )
if AIOS_ENV not in ("development", "test") and (
    SECRET_KEY in KNOWN_DEVELOPMENT_SECRET_KEYS
    or SECRET_KEY.startswith("django-insecure-")
    or len(SECRET_KEY) < 50
    or len(set(SECRET_KEY)) < 5
):
    # The same bar as Django's security.W009, plus the development key, which passes W009's test.
    raise ImproperlyConfigured(
        "DJANGO_SECRET_KEY is a development or weak key (production needs at least 50 random characters): set a "
        "new one, e.g. the output of: python3 -c 'import secrets; print(secrets.token_urlsafe(50))'"
    )

# Encrypts credentials at rest (model endpoint tokens, connection secrets) with Fernet keys that are not
# SECRET_KEY, so that a leaked or rotated SECRET_KEY says nothing about stored credentials and the reverse.
# AIOS_CREDENTIALS_KEYS lists keys newest first (the first encrypts, all decrypt: rotation, see
# apps/core/secrets.py), separated by commas (or lines, in AIOS_CREDENTIALS_KEYS_FILE); AIOS_CREDENTIALS_KEY is the
# one-key form. The encrypting key must be a Fernet key (32 random bytes, URL-safe base64); older keys after it
# may still be the free-form strings earlier versions accepted, to decrypt until `credentials_rotate` has run.
AIOS_CREDENTIALS_KEYS = [
    key.strip() for key in re.split(r"[,\n]", env_secret("AIOS_CREDENTIALS_KEYS", "")) if key.strip()
]
AIOS_CREDENTIALS_KEY = env_secret("AIOS_CREDENTIALS_KEY", "").strip()
if not (AIOS_CREDENTIALS_KEYS or AIOS_CREDENTIALS_KEY):
    if PRODUCTION:
        raise ImproperlyConfigured(
            "AIOS_CREDENTIALS_KEY must be set (or AIOS_CREDENTIALS_KEY_FILE, or AIOS_CREDENTIALS_KEYS for rotation) "
            "to a Fernet key, e.g. the output of: "
            "python3 -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
        )
    # Development and test: generated once per machine (the embedded stack passes AIOS_CREDENTIALS_KEY_FILE).
    AIOS_CREDENTIALS_KEY = key_file_ensure(AIOS_DATA_DIR / CREDENTIALS_KEY_FILE_NAME, generate_credentials_key)
_CREDENTIALS_VARIABLE = "AIOS_CREDENTIALS_KEYS" if AIOS_CREDENTIALS_KEYS else "AIOS_CREDENTIALS_KEY"
_credentials_keys = AIOS_CREDENTIALS_KEYS or [AIOS_CREDENTIALS_KEY]
if not fernet_key_valid(_credentials_keys[0]):
    raise ImproperlyConfigured(
        f"{_CREDENTIALS_VARIABLE} must start with a Fernet key (32 random bytes, URL-safe base64), e.g. the output "
        "of: python3 -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
    )
if SECRET_KEY in _credentials_keys:
    raise ImproperlyConfigured(
        f"{_CREDENTIALS_VARIABLE} must not be DJANGO_SECRET_KEY: generate a separate Fernet key for credentials."
    )

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["127.0.0.1", "localhost"])
# Debug pages show settings, SQL and source to whoever reaches them: only ever on this machine's own addresses.
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]", "testserver"})
if DEBUG:
    _public_hosts = [host for host in ALLOWED_HOSTS if host.lower() not in LOOPBACK_HOSTS]
    if _public_hosts:
        raise ImproperlyConfigured(
            f"DJANGO_DEBUG is on while DJANGO_ALLOWED_HOSTS names {', '.join(_public_hosts)}: set DJANGO_DEBUG=false "
            "(debug pages show settings and source code to anyone who can reach them)."
        )
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])
AIOS_WEB_PORT = env_int("AIOS_WEB_PORT", 8000, minimum=1, maximum=65535)
# The exact origins (scheme, host and port) whose pages may open the product's WebSockets.
AIOS_PUBLIC_URLS = env_list(
    "AIOS_PUBLIC_URLS", [f"http://127.0.0.1:{AIOS_WEB_PORT}", f"http://localhost:{AIOS_WEB_PORT}"]
)

AIOS_PG_PORT = env_int("AIOS_PG_PORT", 55432, minimum=1, maximum=65535)
AIOS_REDIS_PORT = env_int("AIOS_REDIS_PORT", 56379, minimum=1, maximum=65535)
AIOS_INFERENCE_PORT = env_int("AIOS_INFERENCE_PORT", 58080, minimum=1, maximum=65535)

# Two database roles (deploy/README.md, "Database roles"). DATABASE_URL is the application's: web, workers and
# beat connect with it; it reads and writes ordinary tables, may only read and insert audit and history rows,
# and owns nothing, so it cannot switch the append-only triggers off (apps/core/db.py). DATABASE_OWNER_URL owns
# every table and runs migrations. Unset, it is DATABASE_URL when that is set (one role: it works, without that
# protection, and `check --deploy` says so), else the embedded stack's owner.
# Both are secrets (they may hold passwords) and may come from *_FILE; production has no default for DATABASE_URL.
DATABASE_URL = env_secret_url(
    "DATABASE_URL",
    None if PRODUCTION else f"postgres://aios_app@127.0.0.1:{AIOS_PG_PORT}/aios",
    schemes=("postgres", "postgresql"),
)
DATABASE_OWNER_URL = env_secret_url(
    "DATABASE_OWNER_URL",
    DATABASE_URL if env_is_set("DATABASE_URL") else f"postgres://aios_owner@127.0.0.1:{AIOS_PG_PORT}/aios",
    schemes=("postgres", "postgresql"),
)
# Which of the two this process connects as. manage.py picks "owner" for `migrate`, and the test settings for
# pytest (it creates, migrates and empties the test database); everything else is the application.
AIOS_DATABASE_ROLE = env_choice("AIOS_DATABASE_ROLE", "application", ("application", "owner"))
DATABASE_APPLICATION_ROLE = str(database_from_url("DATABASE_URL", DATABASE_URL)["USER"])
REDIS_URL = env_secret_url(
    "REDIS_URL",
    None if PRODUCTION else f"redis://127.0.0.1:{AIOS_REDIS_PORT}/0",
    schemes=("redis", "rediss", "unix"),
)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "django_htmx",
    "template_partials",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "guardian",
    "simple_history",
    "channels",
    # Ours, bottom layer first (imports point down; see CONTRIBUTING.md).
    "apps.core",
    "apps.audit",
    "apps.accounts",
    "apps.inference",
    "apps.connectors",
    "apps.knowledge",
    "apps.workflows",
    "apps.runs",
    "apps.approvals",
    "apps.evaluations",
    "apps.dashboards",
    "apps.assistants",
    # Sign-in throttling (apps/accounts/throttling.py): its attempt records, checks and lockout signal.
    "axes",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "apps.core.middleware.RequestIdMiddleware",
    "apps.core.middleware.ContentSecurityPolicyMiddleware",
    "apps.core.middleware.DatabaseUnavailableMiddleware",
    "apps.core.middleware.NulCharacterMiddleware",
    "apps.core.middleware.JsonDepthMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "simple_history.middleware.HistoryRequestMiddleware",
    "apps.accounts.middleware.SessionIdleTimeoutMiddleware",
    "apps.audit.denials.DeniedRequestAuditMiddleware",
    # Last, as django-axes requires: it turns a locked (username, address) pair's refusal into a 429 page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "aios_web.urls"
ASGI_APPLICATION = "aios_web.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "apps.core.context_processors.product",
                "apps.inference.context_processors.inference",
            ],
        },
    },
]

DATABASES = {
    "default": (
        database_from_url("DATABASE_OWNER_URL", DATABASE_OWNER_URL)
        if AIOS_DATABASE_ROLE == "owner"
        else database_from_url("DATABASE_URL", DATABASE_URL)
    )
}
DATABASES["default"]["CONN_MAX_AGE"] = env_int("DJANGO_CONN_MAX_AGE", 60, minimum=0)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
# libpq waits for the operating system's TCP timeout (minutes) by default: a database that does not answer is
# reported after this many seconds instead (a `connect_timeout` in the URL's query wins).
DATABASES["default"]["OPTIONS"].setdefault("connect_timeout", env_int("AIOS_DATABASE_CONNECT_TIMEOUT", 10, minimum=1))
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "aios",
    }
}

AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = [
    # First: refuses a locked (username, address) pair before any password is checked.
    "axes.backends.AxesStandaloneBackend",
    "apps.accounts.backends.ThrottledModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "accounts:login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "accounts:login"
ANONYMOUS_USER_NAME = None  # guardian: anonymous users get no object permissions
GUARDIAN_RAISE_403 = False

# --- Sign-in throttling (apps/accounts/throttling.py has the whole scheme) ------------------------------------------
# django-axes locks a (username, address) pair after AIOS_LOGIN_MAX_FAILURES failures for AIOS_LOGIN_LOCKOUT_SECONDS;
# never an account as such. The address is REMOTE_ADDR (IPv6 by /64): behind a reverse proxy, set uvicorn's
# FORWARDED_ALLOW_IPS to the proxy's address so that it, and only it, may say who the client is.
AIOS_LOGIN_MAX_FAILURES = env_int("AIOS_LOGIN_MAX_FAILURES", 5, minimum=1)
AIOS_LOGIN_LOCKOUT_SECONDS = env_int("AIOS_LOGIN_LOCKOUT_SECONDS", 900, minimum=1)
# Past this many failures for one name from anywhere (within the lockout window), each attempt at the name waits a
# doubling delay up to the maximum; addresses the person signed in from in the last AIOS_LOGIN_KNOWN_ADDRESS_DAYS
# (0: none) never wait.
AIOS_LOGIN_USER_FREE_FAILURES = env_int("AIOS_LOGIN_USER_FREE_FAILURES", 10, minimum=1)
AIOS_LOGIN_USER_MAX_DELAY_SECONDS = env_int("AIOS_LOGIN_USER_MAX_DELAY_SECONDS", 60, minimum=1)
AIOS_LOGIN_KNOWN_ADDRESS_DAYS = env_int("AIOS_LOGIN_KNOWN_ADDRESS_DAYS", 30, minimum=0)
AXES_FAILURE_LIMIT = AIOS_LOGIN_MAX_FAILURES
AXES_COOLOFF_TIME = timedelta(seconds=AIOS_LOGIN_LOCKOUT_SECONDS)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_CLIENT_IP_CALLABLE = "apps.accounts.throttling.client_address"
AXES_USERNAME_CALLABLE = "apps.accounts.throttling.normalised_username"
AXES_LOCKOUT_CALLABLE = "apps.accounts.views.lockout_response"
AXES_WHITELIST_CALLABLE = "apps.accounts.throttling.throttle_exempt"
AXES_RESET_ON_SUCCESS = True
# A refused attempt during a lock neither extends it nor is recorded again (the lock's end stays predictable).
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
# Sign-ins are in the audit trail; axes' own access log would keep a second, mutable copy.
AXES_DISABLE_ACCESS_LOG = True
AXES_VERBOSE = False  # no start-up banner in every process's log
AXES_SENSITIVE_PARAMETERS = ["username", "password", "ip_address", "csrfmiddlewaretoken"]

# --- Single sign-on: OpenID Connect (apps/accounts/oidc.py; deploy/README.md, "Single sign-on") ------------------
# Off unless AIOS_OIDC_ISSUER and AIOS_OIDC_CLIENT_ID are set; then the provider's endpoints are required too
# (`manage.py oidc_discover <issuer>` prints them from the provider's discovery document). The client secret may come
# from a file (AIOS_OIDC_CLIENT_SECRET_FILE, e.g. a mounted secret), as every secret may.
AIOS_OIDC_ISSUER = env_str("AIOS_OIDC_ISSUER", "").rstrip("/")
AIOS_OIDC_CLIENT_ID = env_str("AIOS_OIDC_CLIENT_ID", "")
AIOS_OIDC_ENABLED = bool(AIOS_OIDC_ISSUER and AIOS_OIDC_CLIENT_ID)
AIOS_OIDC_CLIENT_SECRET = env_secret("AIOS_OIDC_CLIENT_SECRET", "")
# The name on the sign-in page's button: "Sign in with <name>".
AIOS_OIDC_PROVIDER_NAME = env_str("AIOS_OIDC_PROVIDER_NAME", "single sign-on")
# Claims to roles and teams: the claim holding the person's groups; per role, the provider groups that give it
# (comma-separated; default aios-<role>); and the prefix of groups that make one a member of an existing team
# (aios-team-claims: the team whose slug is "claims"). Every sign-in sets roles and teams to exactly these.
AIOS_OIDC_GROUPS_CLAIM = env_str("AIOS_OIDC_GROUPS_CLAIM", "groups")
AIOS_OIDC_ROLE_GROUPS = {
    role: env_list(f"AIOS_OIDC_ROLE_{role.upper()}", [f"aios-{role}"])
    for role in ("analyst", "reviewer", "manager", "admin", "auditor")
}
AIOS_OIDC_TEAM_PREFIX = env_str("AIOS_OIDC_TEAM_PREFIX", "aios-team-")
# The password form beside single sign-on. Off, only the provider signs people in (the admin site's login stays, for
# administrators to get in when the provider is down).
AIOS_PASSWORD_LOGIN = env_bool("AIOS_PASSWORD_LOGIN", True)
if AIOS_OIDC_ENABLED:
    OIDC_RP_CLIENT_ID = AIOS_OIDC_CLIENT_ID
    OIDC_RP_CLIENT_SECRET = AIOS_OIDC_CLIENT_SECRET
    OIDC_OP_AUTHORIZATION_ENDPOINT = env_url("AIOS_OIDC_AUTHORIZATION_ENDPOINT", "", schemes=("https", "http"))
    OIDC_OP_TOKEN_ENDPOINT = env_url("AIOS_OIDC_TOKEN_ENDPOINT", "", schemes=("https", "http"))
    OIDC_OP_USER_ENDPOINT = env_url("AIOS_OIDC_USERINFO_ENDPOINT", "", schemes=("https", "http"))
    OIDC_OP_JWKS_ENDPOINT = env_url("AIOS_OIDC_JWKS_URI", "", schemes=("https", "http"))
    OIDC_RP_SIGN_ALGO = env_choice(
        "AIOS_OIDC_SIGN_ALGO", "RS256", ("RS256", "RS384", "RS512", "ES256", "ES384", "PS256")
    )
    OIDC_RP_SCOPES = env_str("AIOS_OIDC_SCOPES", "openid email profile")
    OIDC_USE_NONCE = True
    OIDC_USE_PKCE = True
    OIDC_TIMEOUT = env_float("AIOS_OIDC_TIMEOUT", 10.0, minimum=1.0)
    OIDC_CALLBACK_CLASS = "apps.accounts.views.OidcCallbackView"
    OIDC_AUTHENTICATE_CLASS = "apps.accounts.views.OidcStartView"
    OIDC_AUTHENTICATION_CALLBACK_URL = "accounts:oidc-callback"
    if PRODUCTION and not OIDC_OP_TOKEN_ENDPOINT.startswith("https://"):
        raise ImproperlyConfigured("AIOS_OIDC_TOKEN_ENDPOINT must be https in production.")
    AUTHENTICATION_BACKENDS.insert(-1, "apps.accounts.oidc.AiosOidcBackend")

# Sessions: signed out after AIOS_SESSION_IDLE_MINUTES without a request (apps/accounts/middleware.py).
AIOS_SESSION_IDLE_MINUTES = env_int("AIOS_SESSION_IDLE_MINUTES", 30, minimum=1)

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS: list[Any] = [BASE_DIR / "static"]
# Front-end packages come from npm at set-up time (package.json + package-lock.json; `make run` and `make test`
# run `npm ci`), never from the repository: only the package the builder uses is exposed, as static/vendor/.
# Without npm the builder still works: drag and drop is an enhancement over its move buttons.
SORTABLE_DIR = BASE_DIR / "node_modules" / "sortablejs"
if (SORTABLE_DIR / "Sortable.min.js").is_file():
    STATICFILES_DIRS.append(("vendor", SORTABLE_DIR))
# Only production collects static files; development serves them from the finders.
STATIC_ROOT = BASE_DIR / "staticfiles" if PRODUCTION else None
# Development serves straight from the finders, so a fresh checkout needs no collectstatic step.
WHITENOISE_USE_FINDERS = not PRODUCTION
WHITENOISE_AUTOREFRESH = DEBUG
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if PRODUCTION
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}

# Security headers. The CSP forbids inline script; htmx is configured through a <meta> tag.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'self'; "
    "form-action 'self'; frame-ancestors 'none'; report-uri /csp-report; report-to csp"
)
# Where browsers that speak the Reporting API send what the policy blocked (`report-to csp`); older ones use
# `report-uri`. Both reach apps.core.views.csp_report, which logs them.
REPORTING_ENDPOINTS = 'csp="/csp-report"'
# No page uses a device or payment API: every response denies them to itself and to any frame.
PERMISSIONS_POLICY = (
    "accelerometer=(), autoplay=(), camera=(), display-capture=(), encrypted-media=(), "
    "fullscreen=(), geolocation=(), gyroscope=(), hid=(), idle-detection=(), "
    "magnetometer=(), microphone=(), midi=(), payment=(), publickey-credentials-get=(), "
    "screen-wake-lock=(), serial=(), usb=(), xr-spatial-tracking=()"
)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False  # htmx reads the token from <body hx-headers>, not the cookie
# --- Sessions (h2: lifetime and cookie names; the idle timeout is the accounts middleware's) ---------------------
# A working day, not Django's two weeks: a stolen or forgotten session ends with it (security-review L5).
SESSION_COOKIE_AGE = env_int("AIOS_SESSION_COOKIE_AGE_SECONDS", 8 * 3600, minimum=300)
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
# --- Production transport security --------------------------------------------------------------------------------
if PRODUCTION:
    SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    # __Host- cookies are refused by browsers unless Secure, Path=/ and without Domain: no subdomain and no plain
    # HTTP page can set or overwrite them (cookie tossing).
    SESSION_COOKIE_NAME = "__Host-sessionid"
    CSRF_COOKIE_NAME = "__Host-csrftoken"
    SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 31536000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("DJANGO_HSTS_PRELOAD", True)
# Trust X-Forwarded-Proto only when the operator says a proxy that sets it (and strips a client's) is the only way
# in: otherwise any client reaching the app directly could claim https and skip SECURE_SSL_REDIRECT (review L10).
AIOS_TRUST_PROXY_SSL_HEADER = env_bool("AIOS_TRUST_PROXY_SSL_HEADER", False)
if AIOS_TRUST_PROXY_SSL_HEADER:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Probes and scrapers reach a web process on its plain-HTTP port from inside the cluster (kubelet, Docker's health
# check, Prometheus): a redirect to HTTPS would fail them. These paths carry no session and set no cookie.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]

REST_FRAMEWORK = {
    # The token class comes first because DRF takes the WWW-Authenticate challenge from the first class: a request
    # without valid credentials is then answered 401 with `Bearer realm="api"`, as HTTP clients and integration
    # tools expect, instead of a 403 that reads like a missing right. A request without an Authorization header
    # falls through to the session (and its CSRF check) as before.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "apps.accounts.authentication.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "apps.core.pagination.BoundedLimitOffsetPagination",
    "PAGE_SIZE": 20,
    # Per user (or, signed out, per address) and minute, counted in the Redis cache: apps/core/throttling.py.
    "DEFAULT_THROTTLE_CLASSES": ["apps.core.throttling.PerUserThrottle", "apps.core.throttling.PerAddressAnonThrottle"],
    "EXCEPTION_HANDLER": "apps.core.api.exception_handler",
}
# Consumption limits (OWASP LLM10). API calls per signed-in user and per anonymous address each minute; runs a
# person may start by hand (page or API) each minute (0: no limit); drafts from a description one person may ask
# for each minute (each holds a web thread for as long as the model takes; 0: no limit); refused requests one
# webhook records in its history and the audit trail each minute, the rest being answered 429 and counted in one
# summary (0: record every one); the largest `?limit=` of any API list.
AIOS_API_REQUESTS_PER_MINUTE = env_int("AIOS_API_REQUESTS_PER_MINUTE", 600, minimum=1)
AIOS_API_ANON_REQUESTS_PER_MINUTE = env_int("AIOS_API_ANON_REQUESTS_PER_MINUTE", 60, minimum=1)
AIOS_RUN_STARTS_PER_MINUTE = env_int("AIOS_RUN_STARTS_PER_MINUTE", 30, minimum=0)
AIOS_DRAFTS_PER_MINUTE = env_int("AIOS_DRAFTS_PER_MINUTE", 5, minimum=0)
AIOS_WEBHOOK_REFUSALS_PER_MINUTE = env_int("AIOS_WEBHOOK_REFUSALS_PER_MINUTE", 20, minimum=0)
AIOS_API_MAX_PAGE_SIZE = env_int("AIOS_API_MAX_PAGE_SIZE", 100, minimum=1, maximum=1000)
SPECTACULAR_SETTINGS = {
    "TITLE": "AIOS API",
    "DESCRIPTION": "Workflows, runs and their audit trail. Every endpoint applies the caller's permissions.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    # No badge from the public validator: it would leak the schema URL and break the CSP.
    "SWAGGER_UI_SETTINGS": {"validatorUrl": None},
    "COMPONENT_SPLIT_REQUEST": True,
    # Choice sets whose field names ("mode", "status") other components also use: named here, so the schema's
    # names are stable and `check --deploy` has no drf_spectacular warning (S9).
    "ENUM_NAME_OVERRIDES": {"RunModeEnum": "apps.runs.models.Run.Mode", "RunStatusEnum": "apps.runs.models.Run.Status"},
}

# An open WebSocket re-checks its user's session and access before a push at most this often (seconds); sign-out,
# deactivation and role changes are sent to the user's sockets at once (apps/accounts/sockets.py).
AIOS_SOCKET_RECHECK_SECONDS = env_float("AIOS_SOCKET_RECHECK_SECONDS", 2.0, minimum=0.0)
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL]},
    }
}

# Celery: Postgres is the source of truth and the broker only rings the bell.
CELERY_BROKER_URL = env_secret("CELERY_BROKER_URL", REDIS_URL)
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

AIOS_INFERENCE_URL = env_url("AIOS_INFERENCE_URL", f"http://127.0.0.1:{AIOS_INFERENCE_PORT}", schemes=("http", "https"))
AIOS_INFERENCE_TOKEN = env_secret("AIOS_INFERENCE_TOKEN", "")
AIOS_INFERENCE_KIND = env_choice("AIOS_INFERENCE_KIND", "tgi", ("tgi", "openai-compatible"))
# The model name OpenAI-compatible servers (vLLM, SGLang, llama.cpp) require in every chat request.
AIOS_INFERENCE_MODEL = env_str("AIOS_INFERENCE_MODEL", "")
AIOS_INFERENCE_TIMEOUT = env_float("AIOS_INFERENCE_TIMEOUT", 60.0, minimum=1.0)
# Retries of one model call on overload, 5xx and connection failures (before any token arrived).
AIOS_INFERENCE_RETRIES = env_int("AIOS_INFERENCE_RETRIES", 2, minimum=0, maximum=10)
# The asynchronous step executor (apps.runs.async_engine): steps from the inference queue run as coroutines on
# one event loop per worker process, at most AIOS_INFERENCE_CONCURRENCY at once, their database work on
# AIOS_INFERENCE_DB_THREADS threads. Off, each runs in a Celery thread of its own.
AIOS_ASYNC_STEPS = env_bool("AIOS_ASYNC_STEPS", True)
AIOS_INFERENCE_CONCURRENCY = env_int("AIOS_INFERENCE_CONCURRENCY", 64, minimum=1, maximum=1024)
AIOS_INFERENCE_DB_THREADS = env_int("AIOS_INFERENCE_DB_THREADS", 8, minimum=1, maximum=64)
# Seals audit events and anchors (HMAC) and signs audit checkpoints (Ed25519); both keys are derived from this
# one secret, which the database must never hold. Required in production; elsewhere an empty value means a
# random secret kept in AIOS_DATA_DIR/audit-signing.key (see apps/audit/crypto.py).
AIOS_AUDIT_SIGNING_KEY = env_secret("AIOS_AUDIT_SIGNING_KEY", None if PRODUCTION else "")
if PRODUCTION and len(AIOS_AUDIT_SIGNING_KEY) < 32:
    raise ImproperlyConfigured("AIOS_AUDIT_SIGNING_KEY must be at least 32 characters in production.")
# Signed audit checkpoints are files outside the database, one directory per database under this one. Put it
# on another volume (or host) than PostgreSQL's data: its point is to survive someone who controls the database.
AIOS_AUDIT_CHECKPOINT_DIR = Path(env_str("AIOS_AUDIT_CHECKPOINT_DIR", str(AIOS_DATA_DIR / "audit-checkpoints")))
# How often the anchor writer chains the stream heads, and how often the newest anchor is signed outside.
AIOS_AUDIT_ANCHOR_SECONDS = env_float("AIOS_AUDIT_ANCHOR_SECONDS", 5.0, minimum=0.5)
AIOS_AUDIT_CHECKPOINT_SECONDS = env_float("AIOS_AUDIT_CHECKPOINT_SECONDS", 300.0, minimum=1.0)
# Strings in audit data longer than this many characters are recorded as their size and SHA-256 only.
AIOS_AUDIT_TEXT_LIMIT = env_int("AIOS_AUDIT_TEXT_LIMIT", 1000, minimum=64, maximum=100000)
# 404s of a signed-in user on an existing route are audited up to this many per user and hour (0: none);
# every 403 is audited (apps/audit/denials.py says why).
AIOS_AUDIT_NOT_FOUND_PER_HOUR = env_int("AIOS_AUDIT_NOT_FOUND_PER_HOUR", 20, minimum=0)
# Approval inbox: how often due escalation steps are fired, and how often each person's email digest goes out.
AIOS_ESCALATION_INTERVAL_SECONDS = env_float("AIOS_ESCALATION_INTERVAL_SECONDS", 30.0, minimum=0.5)
AIOS_DIGEST_INTERVAL_SECONDS = env_float("AIOS_DIGEST_INTERVAL_SECONDS", 3600.0, minimum=1.0)
# KPI dashboards: how often the rollup job rebuilds the days whose runs, approvals or model calls changed.
AIOS_ROLLUP_INTERVAL_SECONDS = env_float("AIOS_ROLLUP_INTERVAL_SECONDS", 300.0, minimum=5.0)
# Streamed tokens are coalesced before they reach the browser: a few messages per second per step.
AIOS_TOKEN_FLUSH_SECONDS = env_float("AIOS_TOKEN_FLUSH_SECONDS", 0.25, minimum=0.0)
# ...and written to the step's row (for a page loaded mid-stream) at most this often; the rest is written
# with the step's result.
AIOS_TOKEN_PERSIST_SECONDS = env_float("AIOS_TOKEN_PERSIST_SECONDS", 1.0, minimum=0.0)

# Mail (the reviewers' digests) leaves through SMTP, to the server EMAIL_URL names. Outside production it defaults
# to the embedded stack's catch-all, which keeps every message as a file under AIOS_DATA_DIR/mail and delivers
# none; production has no default, so a deployment never sends from a made-up address or into a closed port.
# pytest-django switches the test process itself to the locmem backend (tests/support/smtp.py).
AIOS_SMTP_PORT = env_int("AIOS_SMTP_PORT", 8025, minimum=1, maximum=65535)
if PRODUCTION:
    EMAIL_URL = env_secret_url("EMAIL_URL", None, schemes=SMTP_SCHEMES)
    DEFAULT_FROM_EMAIL = env_str("DJANGO_DEFAULT_FROM_EMAIL")
else:
    EMAIL_URL = env_secret_url("EMAIL_URL", f"smtp://127.0.0.1:{AIOS_SMTP_PORT}", schemes=SMTP_SCHEMES)
    DEFAULT_FROM_EMAIL = env_str("DJANGO_DEFAULT_FROM_EMAIL", "AIOS <aios@localhost>")
_smtp_server = smtp_server_from_url("EMAIL_URL", EMAIL_URL)
EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
EMAIL_HOST = _smtp_server.host
EMAIL_PORT = _smtp_server.port
EMAIL_HOST_USER = _smtp_server.user
# The password may also come apart from the URL (EMAIL_HOST_PASSWORD or EMAIL_HOST_PASSWORD_FILE), so the URL
# itself need not be a secret.
EMAIL_HOST_PASSWORD = env_secret("EMAIL_HOST_PASSWORD", _smtp_server.password)
EMAIL_USE_TLS = _smtp_server.use_tls
EMAIL_USE_SSL = _smtp_server.use_ssl
# Django's own default is no timeout at all: one relay that stops answering would hang a worker for good.
EMAIL_TIMEOUT = env_float("DJANGO_EMAIL_TIMEOUT", 10.0, minimum=1.0)
SERVER_EMAIL = DEFAULT_FROM_EMAIL

# Email triggers: `manage.py mail_inbound` accepts mail for `<trigger address>@AIOS_INBOUND_MAIL_DOMAIN` on this
# port (point an MX record or a mail server's forwarding at it in production).
AIOS_INBOUND_MAIL_DOMAIN = env_str("AIOS_INBOUND_MAIL_DOMAIN", "aios.localhost")
AIOS_INBOUND_SMTP_PORT = env_int("AIOS_INBOUND_SMTP_PORT", 2525, minimum=1, maximum=65535)
# Email triggers that read a mailbox over IMAP: seconds between polls of each (failed polls wait longer).
AIOS_MAILBOX_POLL_SECONDS = env_float("AIOS_MAILBOX_POLL_SECONDS", 60.0, minimum=5.0)
# MCP endpoint (/mcp, apps/assistants/mcp_server.py): how long a tool call waits for its run before answering that
# the run is still running (with its address); the run goes on either way.
AIOS_MCP_CALL_TIMEOUT_SECONDS = env_float("AIOS_MCP_CALL_TIMEOUT_SECONDS", 120.0, minimum=1.0)
# The largest answer an MCP server may send to an agent's call (read into memory by the client): 8 MB.
AIOS_MCP_MAX_RESPONSE_BYTES = env_int("AIOS_MCP_MAX_RESPONSE_BYTES", 8 * 1024 * 1024, minimum=1024)
# The demo's outside systems, set by `make run` for the demo seed only (empty: the demo seeds no connections to
# them): the stand-in ERP and CMS, and the demo ERP's database.
AIOS_DEMO_OUTSIDE_URL = env_str("AIOS_DEMO_OUTSIDE_URL", "")
AIOS_DEMO_ERP_URL = env_str("AIOS_DEMO_ERP_URL", "")

# --- Operations telemetry (docs/operations.md) -----------------------------------------------------------------
# Logs: one JSON object per line with the request id and run id (the production default), or text lines for a
# developer's console (the default elsewhere; the embedded launcher's console filters read them).
AIOS_LOG_FORMAT = env_choice("AIOS_LOG_FORMAT", "json" if PRODUCTION else "text", LOG_FORMATS)
LOGGING = logging_config(log_format=AIOS_LOG_FORMAT, level=env_str("AIOS_LOG_LEVEL", "INFO"))
# /metrics: scrapers send `Authorization: Bearer <AIOS_METRICS_TOKEN>`; signed-in admins may read it too. Empty:
# admins only. The collectors ask the database and Redis at scrape time.
AIOS_METRICS_TOKEN = env_secret("AIOS_METRICS_TOKEN", "")
AIOS_METRICS_COLLECTORS = ["apps.runs.metrics.EngineCollector", "apps.inference.metrics.InferenceCollector"]
# The history gauges of /metrics (runs and model calls) cover this recent window, reading at most this many of the
# newest runs and of the newest call records, so a scrape costs the same however long the history.
AIOS_METRICS_WINDOW_SECONDS = env_int("AIOS_METRICS_WINDOW_SECONDS", 3600, minimum=60)
AIOS_METRICS_SCAN_ROWS = env_int("AIOS_METRICS_SCAN_ROWS", 100000, minimum=100)
# Traces: off unless an OTLP endpoint is configured (the standard OTEL_EXPORTER_OTLP_ENDPOINT, read by the
# exporter) or AIOS_OTEL_ENABLED=1 (then the exporter's default, http://localhost:4318). Each process reports as
# <AIOS_OTEL_SERVICE_NAME>-<role>: aios-web, aios-worker, aios-beat.
AIOS_OTEL_ENABLED = env_bool(
    "AIOS_OTEL_ENABLED",
    default=bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")),
)
AIOS_OTEL_SERVICE_NAME = env_str("AIOS_OTEL_SERVICE_NAME", "aios")
# Workers write a heartbeat to Redis this often; `manage.py worker_health` fails after three missed beats.
AIOS_WORKER_HEARTBEAT_SECONDS = env_float("AIOS_WORKER_HEARTBEAT_SECONDS", 10.0, minimum=1.0)

# How long a worker owns a claimed step before another may take it over. Each worker process renews the
# leases of the steps it runs every third of the shortest lease, so this bounds how long a step of a worker
# that died waits for the sweeper (lease + sweep interval), not how long a step may run.
AIOS_STEP_LEASE_SECONDS = env_int("AIOS_STEP_LEASE_SECONDS", 20, minimum=3)
# Eager dispatch: the worker that commits a step's result claims the next step in the same transaction and
# runs it itself when it is on the same queue (one successor per decision), until the chain has run
# AIOS_EAGER_MAX_STEPS steps or AIOS_EAGER_MAX_SECONDS; then the next step goes through the broker, so one
# run never keeps a worker from the others. An eager claim's first lease is the short AIOS_EAGER_LEASE_SECONDS:
# if the worker dies right after the commit, the sweeper takes the step back that soon.
AIOS_EAGER_DISPATCH = env_bool("AIOS_EAGER_DISPATCH", True)
AIOS_EAGER_MAX_STEPS = env_int("AIOS_EAGER_MAX_STEPS", 64, minimum=1)
AIOS_EAGER_MAX_SECONDS = env_float("AIOS_EAGER_MAX_SECONDS", 1.0, minimum=0.0)
AIOS_EAGER_LEASE_SECONDS = env_int("AIOS_EAGER_LEASE_SECONDS", 10, minimum=1)
# The longest one Celery task may run (a step, or an eager chain of steps) before Celery kills it; a step's
# own time limit (its timeout option) is enforced by a timer long before.
AIOS_TASK_TIME_LIMIT_SECONDS = env_int("AIOS_TASK_TIME_LIMIT_SECONDS", 3600, minimum=30)
# The sweeper: how often it runs, when it relays outbox rows and re-sends queued steps, and how many times
# it takes a step back from a dead worker before opening an incident.
AIOS_SWEEP_INTERVAL_SECONDS = env_float("AIOS_SWEEP_INTERVAL_SECONDS", 2.0, minimum=0.2)
# Beat's single-instance rule (workers/beat.py): a beat sends the schedule only while it holds a lease in Redis of
# this length, renewed every third of it; when its holder dies, a standing-by beat takes over within about
# 1.3 times this.
AIOS_BEAT_LEASE_SECONDS = env_float("AIOS_BEAT_LEASE_SECONDS", 10.0, minimum=1.0)
AIOS_OUTBOX_RELAY_AFTER_SECONDS = env_float("AIOS_OUTBOX_RELAY_AFTER_SECONDS", 2.0, minimum=0.0)
AIOS_REQUEUE_AFTER_SECONDS = env_float("AIOS_REQUEUE_AFTER_SECONDS", 60.0, minimum=1.0)
AIOS_STEP_RESTART_CAP = env_int("AIOS_STEP_RESTART_CAP", 3, minimum=0)
# Crash points for the fault tests: off unless set; "name:probability,...".
AIOS_FAULTS = env_str("AIOS_FAULTS", "")
AIOS_FAULTS_SEED = env_int("AIOS_FAULTS_SEED", 0)

# Celery's own limits are a last resort above any step's; the broker's visibility timeout sits above them, so
# a message is redelivered only when its worker is gone (and a redelivered step finds itself claimed).
CELERY_TASK_SOFT_TIME_LIMIT = AIOS_TASK_TIME_LIMIT_SECONDS - 20
CELERY_TASK_TIME_LIMIT = AIOS_TASK_TIME_LIMIT_SECONDS
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": AIOS_TASK_TIME_LIMIT_SECONDS + 300,
    "unacked_restore_interval": 2,
    "unacked_restore_throttle": 1,
}
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
# A warm stop (SIGTERM from the supervisor) lets running steps finish for this long before it cancels them;
# their leases then expire and the sweeper hands them to another worker.
CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT = env_float("CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT", 25.0, minimum=0.0)
CELERY_WORKER_ENABLE_SOFT_SHUTDOWN_ON_IDLE = True
CELERY_WORKER_MAX_TASKS_PER_CHILD = env_int("CELERY_WORKER_MAX_TASKS_PER_CHILD", 10000, minimum=1)

# --- Connection pooling and the sweeper's lease (deploy/README.md, "PgBouncer") -----------------------------------
# AIOS_DATABASE_POOLER=transaction when DATABASE_URL points at PgBouncer in transaction mode: each transaction may
# then run on another server connection, so nothing may live on a connection between transactions. Server-side
# cursors (QuerySet.iterator() opens a WITH HOLD cursor outside a transaction) are turned off; prepared
# statements are already off (Django 5.2 binds parameters on the client and sets psycopg's prepare_threshold to
# None unless OPTIONS asks otherwise); the sweeper's one-at-a-time rule is a lease row, not an advisory lock, and
# every advisory lock the code takes is transaction-scoped.
AIOS_DATABASE_POOLER = env_choice("AIOS_DATABASE_POOLER", "none", ("none", "session", "transaction"))
if AIOS_DATABASE_POOLER == "transaction":
    DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = True
# How long a sweeper holds its duty without renewing it (it renews between phases): a sweeper that dies lets
# another sweep this long after its last renewal, and until then nothing is relayed or taken back. The duty only
# saves duplicate work (every phase is safe to run twice at once), so the default is short: two sweep intervals.
# A sweeper dies where any worker does, e.g. in the dispatch right after a commit when it re-sends a step it took
# back; with the step lease as its length (20 s) every such death stalled all repairs that long (fault test D5).
AIOS_SWEEP_LEASE_SECONDS = env_int(
    "AIOS_SWEEP_LEASE_SECONDS", max(2, math.ceil(2 * AIOS_SWEEP_INTERVAL_SECONDS)), minimum=2
)

# Addresses (CIDRs) that steps may call although they are loopback or private: an administrator's decision.
AIOS_HTTP_ALLOWLIST = env_list("AIOS_HTTP_ALLOWLIST", [])
# Ports HTTP steps and connectors may call besides 80 and 443, for every destination (a connection's administrator
# can allow more for that connection alone). A port that is not a number stops the start-up.
AIOS_HTTP_ALLOWED_PORTS = [int(port) for port in env_list("AIOS_HTTP_ALLOWED_PORTS", [])]

# --- Knowledge (apps.knowledge) ---------------------------------------------------------------------------------
# The embeddings server of collections that name no endpoint: TEI's /embed (the development server has one).
AIOS_KNOWLEDGE_EMBEDDINGS_URL = env_url("AIOS_KNOWLEDGE_EMBEDDINGS_URL", AIOS_INFERENCE_URL, schemes=("http", "https"))
# Passages per /embed request (TEI's default client batch limit is 32), and the seconds an ingest worker owns a
# document between batches before the periodic pickup may hand it to another.
AIOS_KNOWLEDGE_EMBED_BATCH = env_int("AIOS_KNOWLEDGE_EMBED_BATCH", 32, minimum=1, maximum=512)
AIOS_KNOWLEDGE_LEASE_SECONDS = env_int("AIOS_KNOWLEDGE_LEASE_SECONDS", 120, minimum=5)
# How often the periodic pickup looks for documents whose ingest stopped (a lost message, a dead worker).
AIOS_KNOWLEDGE_SWEEP_SECONDS = env_float("AIOS_KNOWLEDGE_SWEEP_SECONDS", 30.0, minimum=1.0)
