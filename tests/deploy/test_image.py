"""The production image's build steps, run without Docker, make a product that starts in production mode.

deploy/image/build.sh is what deploy/Dockerfile RUNs: `wheels` (the builder stage) and `install` (the final
stage: a venv from those wheels only, the application, collectstatic). Here it builds into a temporary prefix,
once for the module (about a minute with the local package index: pip wheel ~20 s, install + collectstatic
~45 s). Then the entrypoint's own commands (`python -m deploy.image ROLE`, as the image's ENTRYPOINT runs them)
start from that prefix with production settings, every secret given as a *_FILE, against the test stack's
PostgreSQL and Redis as if they were managed services: `migrate` as the owner role, `check` (check --deploy at
WARNING), a web server answering /healthz and /readyz, a worker that runs a task, and both probes.

The processes run in a clean environment (no variable of the test run leaks in) and from the prefix's own app
directory, so nothing is imported from this checkout.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection

from apps.core.env import database_from_url
from deploy.devstack.processes import ManagedProcess
from tests.support.processes import LOG_DIR, database_url_as, free_port, redis_url_with_db

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "deploy" / "image" / "build.sh"
HOST = "aios.test"
# A broker database of its own, so the session's test worker never takes this module's tasks.
REDIS_DB = 12

# The module fixture builds the prefix (about a minute) inside the first test's set-up, which pytest-django runs
# first (it needs the database): more than the suite's per-test limit allows.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def prefix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image's /opt/aios, built by the Dockerfile's two steps."""
    root = tmp_path_factory.mktemp("image")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "AIOS_", "VIRTUAL_ENV"))}
    # The base image's interpreter stands for the python:3.11-slim base; the build must not lean on this venv.
    env["PYTHON"] = sys._base_executable  # type: ignore[attr-defined]
    for step in (["wheels", str(root / "wheels")], ["install", str(root / "opt"), str(root / "wheels")]):
        result = subprocess.run([str(BUILD), *step], env=env, capture_output=True, text=True, timeout=900, check=False)
        assert result.returncode == 0, f"build.sh {step[0]} failed:\n{result.stderr[-3000:]}\n{result.stdout[-1000:]}"
    return root / "opt"


def test_build_made_a_self_contained_venv_and_collected_static(prefix: Path) -> None:
    app = prefix / "app"
    manifest = json.loads((app / "staticfiles" / "staticfiles.json").read_text())
    # The product's own stylesheet and htmx, hashed by the manifest storage.
    assert any(name.endswith(".css") for name in manifest["paths"])
    assert any("htmx" in name for name in manifest["paths"])
    assert (prefix / "venv" / "bin" / "uvicorn").exists() and (prefix / "venv" / "bin" / "celery").exists()
    # Tests, benchmarks and the embedded stack's launcher stay out of the image.
    assert not (app / "tests").exists() and not (app / "bench").exists() and not (app / "deploy" / "devstack").exists()
    probe = subprocess.run(
        [str(prefix / "venv" / "bin" / "python"), "-c", "import django, celery, uvicorn, psycopg; print('ok')"],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert probe.stdout.strip() == "ok", probe.stderr


def _write(directory: Path, name: str, value: str) -> str:
    path = directory / name
    path.write_text(value + "\n")
    path.chmod(0o600)
    return str(path)


@pytest.fixture(scope="module")
def production_env(
    prefix: Path, tmp_path_factory: pytest.TempPathFactory, django_db_setup: Any, django_db_blocker: Any
) -> dict[str, str]:
    """What an operator sets: production, the public host, and every secret as a file named by NAME_FILE; the
    databases are the test database (set up first, so its name is the test one) as its owner and application roles."""
    from apps.audit.crypto import _root_secret

    root = tmp_path_factory.mktemp("production")
    secret_dir = root / "secrets"
    secret_dir.mkdir(mode=0o700)
    with django_db_blocker.unblock():
        owner_url = database_url_as(connection.settings_dict)
    app_url = database_url_as(database_from_url("DATABASE_URL", settings.DATABASE_URL))
    files = {
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(64),
        "AIOS_CREDENTIALS_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
        # The test process seals its audit events with this installation's secret; the worker must chain onto them.
        "AIOS_AUDIT_SIGNING_KEY": _root_secret().decode(),
        "DATABASE_URL": app_url,
        "DATABASE_OWNER_URL": owner_url,
        "REDIS_URL": redis_url_with_db(settings.REDIS_URL, REDIS_DB),
        "EMAIL_URL": f"smtp://{settings.EMAIL_HOST}:{settings.EMAIL_PORT}",
        "AIOS_METRICS_TOKEN": secrets.token_urlsafe(32),
    }
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(root),
        "LANG": "C.UTF-8",
        "AIOS_ENV": "production",
        "DJANGO_ALLOWED_HOSTS": HOST,
        "DJANGO_CSRF_TRUSTED_ORIGINS": f"https://{HOST}",
        "AIOS_PUBLIC_URLS": f"https://{HOST}",
        "DJANGO_DEFAULT_FROM_EMAIL": f"AIOS <aios@{HOST}>",
        "AIOS_DATA_DIR": str(root / "data"),
        "AIOS_WEB_PORT": str(free_port()),
        "FORWARDED_ALLOW_IPS": "127.0.0.1",
        "AIOS_INFERENCE_URL": settings.AIOS_INFERENCE_URL,
        "PYTHONUNBUFFERED": "1",
    }
    env |= {f"{name}_FILE": _write(secret_dir, name.lower(), value) for name, value in files.items()}
    return env


def entrypoint(prefix: Path, *role: str) -> list[str]:
    """The image's ENTRYPOINT with `role` as its command."""
    return [str(prefix / "venv" / "bin" / "python"), "-m", "deploy.image", *role]


def run_role(prefix: Path, env: dict[str, str], *role: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        entrypoint(prefix, *role), cwd=prefix / "app", env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture
def started(prefix: Path, production_env: dict[str, str]) -> Iterator[Any]:
    """Start a role from the prefix (stopped after the test); returns its log path once `ready(log)` holds."""
    processes: list[ManagedProcess] = []

    def start(name: str, role: list[str], ready: Any, timeout: float = 90) -> Path:
        process = ManagedProcess(
            f"image-{name}",
            entrypoint(prefix, *role),
            env=production_env,
            cwd=prefix / "app",
            log_path=LOG_DIR / f"image-{name}.log",
        )
        processes.append(process)
        process.start()
        process.wait_until(ready, timeout)
        return process.log_path

    yield start
    for process in reversed(processes):
        process.stop(timeout=15)


def get(port: str, path: str, host: str = HOST) -> tuple[int, dict[str, str], bytes]:
    """GET http://127.0.0.1:port/path with `host` as the Host header; redirects are not followed."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect, urllib.request.ProxyHandler({}))
    request = urllib.request.Request(f"http://127.0.0.1:{port}/{path}", headers={"Host": host})
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def answers(port: str) -> bool:
    try:
        return get(port, "healthz")[0] == 200
    except OSError:
        return False


def test_check_deploy_passes_under_the_production_settings(prefix: Path, production_env: dict[str, str]) -> None:
    result = run_role(prefix, production_env, "check")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert not re.search(r"\bWARNINGS?\b|\?: \(", output), output


def test_migrate_and_purge_run_as_the_owner_and_refuse_without_its_url(
    prefix: Path, production_env: dict[str, str]
) -> None:
    result = run_role(prefix, production_env, "migrate")
    assert result.returncode == 0, result.stdout + result.stderr
    without_owner = {k: v for k, v in production_env.items() if not k.startswith("DATABASE_OWNER_URL")}
    refused = run_role(prefix, without_owner, "migrate")
    assert refused.returncode == 2
    assert refused.stderr.strip().count("\n") == 0 and "DATABASE_OWNER_URL" in refused.stderr
    # The retention job runs as the owner too, and says so when it cannot.
    purge = run_role(prefix, production_env, "purge-runs", "--older-than", "3650", "--dry-run")
    assert purge.returncode == 0 and "Nothing was changed." in purge.stdout, purge.stdout + purge.stderr
    refused = run_role(prefix, without_owner, "purge-runs", "--older-than", "365")
    assert refused.returncode == 2
    assert refused.stderr.strip().count("\n") == 0 and "DATABASE_OWNER_URL" in refused.stderr


@pytest.mark.django_db(transaction=True)
def test_web_and_worker_start_from_the_entrypoint_and_serve(
    prefix: Path, production_env: dict[str, str], started: Any
) -> None:
    from apps.accounts.services import user_create
    from apps.audit.models import AuditAnchor

    port = production_env["AIOS_WEB_PORT"]
    started("web", ["web"], lambda log: answers(port))
    status, _, body = get(port, "healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, _, body = get(port, "readyz")
    assert status == 200, body
    assert all(check["ok"] for check in json.loads(body)["checks"].values()), body
    # Production settings are the ones in force: plain HTTP elsewhere is sent to HTTPS, and a Host header that is
    # not allowed is refused.
    status, headers, _ = get(port, "accounts/login/")
    assert status == 301 and headers["location"].startswith(f"https://{HOST}/")
    assert get(port, "healthz", host="evil.example")[0] == 400
    # The web container's health check.
    probe = run_role(prefix, production_env, "probe", "readyz")
    assert probe.returncode == 0, probe.stdout + probe.stderr

    started("worker", ["worker", "default"], lambda log: re.search(r"\bdefault@\S+ ready\.", log) is not None)
    # A task on the worker: an audit event written here, anchored by the worker's audit.anchor_write.
    user_create(username="image-test", password="correct-horse-battery-staple", roles=[])
    anchors_before = AuditAnchor.objects.count()
    from workers.celery import app

    # The test process's own app, with a connection of its own: a second Celery app would make itself the current
    # app, and every later test's task would go out through it (and fail once it is gone).
    with app.connection_for_write(redis_url_with_db(settings.REDIS_URL, REDIS_DB)) as broker:
        app.send_task("audit.anchor_write", queue="default", connection=broker)
    deadline = time.monotonic() + 60
    while AuditAnchor.objects.count() == anchors_before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert AuditAnchor.objects.count() > anchors_before, "the worker did not run audit.anchor_write"
    # The worker container's health check: its heartbeat is fresh and the services answer.
    health = run_role(prefix, production_env, "worker-health")
    assert health.returncode == 0, health.stdout + health.stderr
