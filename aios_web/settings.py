"""AIOS settings: one module, driven by the environment (see deploy/.env.example for every variable).

With no variables set, the defaults point at the embedded stack that `make run` starts.
"""

from __future__ import annotations

import os
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
    env_list,
    env_str,
    env_url,
    smtp_server_from_url,
)
from apps.core.telemetry.logs import LOG_FORMATS, logging_config

BASE_DIR = Path(__file__).resolve().parent.parent

AIOS_ENV = env_choice("AIOS_ENV", "development", ("development", "production", "test"))
PRODUCTION = AIOS_ENV == "production"

DEBUG = env_bool("DJANGO_DEBUG", default=AIOS_ENV == "development")
if PRODUCTION:
    # No default: a production deployment that forgot its key must not start with a public one.
    SECRET_KEY = env_str("DJANGO_SECRET_KEY")
else:
    SECRET_KEY = env_str("DJANGO_SECRET_KEY", "development-only-insecure-key-change-me-in-production-0123456789")
if PRODUCTION and len(SECRET_KEY) < 50:
    raise ImproperlyConfigured("DJANGO_SECRET_KEY must be at least 50 characters in production.")

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])
AIOS_WEB_PORT = env_int("AIOS_WEB_PORT", 8000, minimum=1, maximum=65535)
# The exact origins (scheme, host and port) whose pages may open the product's WebSockets.
AIOS_PUBLIC_URLS = env_list(
    "AIOS_PUBLIC_URLS", [f"http://127.0.0.1:{AIOS_WEB_PORT}", f"http://localhost:{AIOS_WEB_PORT}"]
)

AIOS_DATA_DIR = Path(env_str("AIOS_DATA_DIR", str(BASE_DIR / ".data")))
AIOS_PG_PORT = env_int("AIOS_PG_PORT", 55432, minimum=1, maximum=65535)
AIOS_REDIS_PORT = env_int("AIOS_REDIS_PORT", 56379, minimum=1, maximum=65535)
AIOS_INFERENCE_PORT = env_int("AIOS_INFERENCE_PORT", 58080, minimum=1, maximum=65535)

# Two database roles (deploy/README.md, "Database roles"). DATABASE_URL is the application's: web, workers and
# beat connect with it; it reads and writes ordinary tables, may only read and insert audit and history rows,
# and owns nothing, so it cannot switch the append-only triggers off (apps/core/db.py). DATABASE_OWNER_URL owns
# every table and runs migrations. Unset, it is DATABASE_URL when that is set (one role: it works, without that
# protection, and `check --deploy` says so), else the embedded stack's owner.
DATABASE_URL = env_url(
    "DATABASE_URL", f"postgres://aios_app@127.0.0.1:{AIOS_PG_PORT}/aios", schemes=("postgres", "postgresql")
)
DATABASE_OWNER_URL = env_url(
    "DATABASE_OWNER_URL",
    DATABASE_URL if os.environ.get("DATABASE_URL") else f"postgres://postgres@127.0.0.1:{AIOS_PG_PORT}/aios",
    schemes=("postgres", "postgresql"),
)
# Which of the two this process connects as. manage.py picks "owner" for `migrate`, and the test settings for
# pytest (it creates, migrates and empties the test database); everything else is the application.
AIOS_DATABASE_ROLE = env_choice("AIOS_DATABASE_ROLE", "application", ("application", "owner"))
DATABASE_APPLICATION_ROLE = str(database_from_url("DATABASE_URL", DATABASE_URL)["USER"])
REDIS_URL = env_url("REDIS_URL", f"redis://127.0.0.1:{AIOS_REDIS_PORT}/0", schemes=("redis", "rediss", "unix"))

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
    "rest_framework.authtoken",
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
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "apps.core.middleware.RequestIdMiddleware",
    "apps.core.middleware.ContentSecurityPolicyMiddleware",
    "apps.core.middleware.DatabaseUnavailableMiddleware",
    "apps.core.middleware.NulCharacterMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "simple_history.middleware.HistoryRequestMiddleware",
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

AIOS_LOGIN_MAX_FAILURES = env_int("AIOS_LOGIN_MAX_FAILURES", 5, minimum=1)
AIOS_LOGIN_LOCKOUT_SECONDS = env_int("AIOS_LOGIN_LOCKOUT_SECONDS", 900, minimum=1)

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
    "form-action 'self'; frame-ancestors 'none'"
)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False  # htmx reads the token from <body hx-headers>, not the cookie
if PRODUCTION:
    SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 31536000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Probes and scrapers reach a web process on its plain-HTTP port from inside the cluster (kubelet, Docker's health
# check, Prometheus): a redirect to HTTPS would fail them. These paths carry no session and set no cookie.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.TokenAuthentication",
        "apps.core.authentication.BearerTokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 20,
    "EXCEPTION_HANDLER": "apps.core.api.exception_handler",
}
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
}

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL]},
    }
}

# Celery: Postgres is the source of truth and the broker only rings the bell.
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL)
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
AIOS_INFERENCE_TOKEN = env_str("AIOS_INFERENCE_TOKEN", "")
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
# Encrypts credentials at rest (model endpoint tokens, connection secrets). AIOS_CREDENTIALS_KEYS lists keys
# newest first (the first encrypts, all decrypt: rotation, see apps/core/secrets.py); AIOS_CREDENTIALS_KEY is
# the one-key form. One of them is required in production, so that rotating SECRET_KEY never makes every stored
# token unreadable; SECRET_KEY stands in elsewhere.
AIOS_CREDENTIALS_KEYS = env_list("AIOS_CREDENTIALS_KEYS", [])
AIOS_CREDENTIALS_KEY = env_str("AIOS_CREDENTIALS_KEY", "")
if PRODUCTION and not (AIOS_CREDENTIALS_KEYS or AIOS_CREDENTIALS_KEY):
    raise ImproperlyConfigured("AIOS_CREDENTIALS_KEYS or AIOS_CREDENTIALS_KEY must be set.")
# Seals audit events and anchors (HMAC) and signs audit checkpoints (Ed25519); both keys are derived from this
# one secret, which the database must never hold. Required in production; elsewhere an empty value means a
# random secret kept in AIOS_DATA_DIR/audit-signing.key (see apps/audit/crypto.py).
AIOS_AUDIT_SIGNING_KEY = env_str("AIOS_AUDIT_SIGNING_KEY") if PRODUCTION else env_str("AIOS_AUDIT_SIGNING_KEY", "")
if PRODUCTION and len(AIOS_AUDIT_SIGNING_KEY) < 32:
    raise ImproperlyConfigured("AIOS_AUDIT_SIGNING_KEY must be at least 32 characters in production.")
# Signed audit checkpoints are files outside the database, one directory per database under this one. Put it
# on another volume (or host) than PostgreSQL's data: its point is to survive someone who controls the database.
AIOS_AUDIT_CHECKPOINT_DIR = Path(env_str("AIOS_AUDIT_CHECKPOINT_DIR", str(AIOS_DATA_DIR / "audit-checkpoints")))
# How often the anchor writer chains the stream heads, and how often the newest anchor is signed outside.
AIOS_AUDIT_ANCHOR_SECONDS = env_float("AIOS_AUDIT_ANCHOR_SECONDS", 5.0, minimum=0.5)
AIOS_AUDIT_CHECKPOINT_SECONDS = env_float("AIOS_AUDIT_CHECKPOINT_SECONDS", 300.0, minimum=1.0)
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
    EMAIL_URL = env_url("EMAIL_URL", env_str("EMAIL_URL"), schemes=SMTP_SCHEMES)
    DEFAULT_FROM_EMAIL = env_str("DJANGO_DEFAULT_FROM_EMAIL")
else:
    EMAIL_URL = env_url("EMAIL_URL", f"smtp://127.0.0.1:{AIOS_SMTP_PORT}", schemes=SMTP_SCHEMES)
    DEFAULT_FROM_EMAIL = env_str("DJANGO_DEFAULT_FROM_EMAIL", "AIOS <aios@localhost>")
_smtp_server = smtp_server_from_url("EMAIL_URL", EMAIL_URL)
EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
EMAIL_HOST = _smtp_server.host
EMAIL_PORT = _smtp_server.port
EMAIL_HOST_USER = _smtp_server.user
EMAIL_HOST_PASSWORD = _smtp_server.password
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
AIOS_METRICS_TOKEN = env_str("AIOS_METRICS_TOKEN", "")
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
# another sweep this long after its last renewal. The default is the step lease, so steps of a worker that died
# with the sweeper in it are taken back as soon as they would be without that.
AIOS_SWEEP_LEASE_SECONDS = env_int("AIOS_SWEEP_LEASE_SECONDS", AIOS_STEP_LEASE_SECONDS, minimum=2)

# Addresses (CIDRs) that steps may call although they are loopback or private: an administrator's decision.
AIOS_HTTP_ALLOWLIST = env_list("AIOS_HTTP_ALLOWLIST", [])

# --- Knowledge (apps.knowledge) ---------------------------------------------------------------------------------
# The embeddings server of collections that name no endpoint: TEI's /embed (the development server has one).
AIOS_KNOWLEDGE_EMBEDDINGS_URL = env_url("AIOS_KNOWLEDGE_EMBEDDINGS_URL", AIOS_INFERENCE_URL, schemes=("http", "https"))
# Passages per /embed request (TEI's default client batch limit is 32), and the seconds an ingest worker owns a
# document between batches before the periodic pickup may hand it to another.
AIOS_KNOWLEDGE_EMBED_BATCH = env_int("AIOS_KNOWLEDGE_EMBED_BATCH", 32, minimum=1, maximum=512)
AIOS_KNOWLEDGE_LEASE_SECONDS = env_int("AIOS_KNOWLEDGE_LEASE_SECONDS", 120, minimum=5)
# How often the periodic pickup looks for documents whose ingest stopped (a lost message, a dead worker).
AIOS_KNOWLEDGE_SWEEP_SECONDS = env_float("AIOS_KNOWLEDGE_SWEEP_SECONDS", 30.0, minimum=1.0)
