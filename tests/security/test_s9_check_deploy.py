"""S9: the production settings pass `manage.py check --deploy --fail-level WARNING` with no warning, and a
misconfigured production start stops with one line naming the variable to set (issue 14, "Bad input").

Every start here is a real `manage.py` (or the ASGI application's import) in a subprocess with exactly the
environment an operator would set (tests/support/startup.py); the test process's own settings play no part.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from django.conf import settings
from django.db import connection

from apps.core.env import database_from_url
from tests.support.figures import record_figure
from tests.support.processes import REPO, database_url_as
from tests.support.startup import manage, production_env

# A system check's identifier as Django prints it: "(security.W004)", "(core.W001)", "(drf_spectacular.W001)".
CHECK_ID = re.compile(r"\(([\w.]+\.[WE]\d{3})\)")
THE_OLD_DEVELOPMENT_KEY = "development-only-insecure-key-change-me-in-production-0123456789"


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def refusal_line(result: subprocess.CompletedProcess[str]) -> str:
    """The process's whole error output, which must be exactly one line: the refusal."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith("AIOS cannot start: "), lines[0]
    return lines[0]


@pytest.fixture
def database_urls(db: Any) -> dict[str, str]:
    """The test database as production would name it: the application role, and the owner for migrations."""
    application = database_url_as(database_from_url("DATABASE_URL", settings.DATABASE_URL))
    return {"DATABASE_URL": application, "DATABASE_OWNER_URL": database_url_as(connection.settings_dict)}


def test_s9_production_settings_pass_check_deploy_without_warnings(database_urls, tmp_path: Path) -> None:
    result = manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        env=production_env(**database_urls, REDIS_URL=settings.REDIS_URL),
        data_dir=tmp_path,
    )
    output = result.stdout + result.stderr
    found = sorted(set(CHECK_ID.findall(output)))
    ok = result.returncode == 0 and not found and "no issues" in output
    record_figure(f"S9 check_deploy warnings {len(found)} {'ok' if ok else 'FAILED'}")
    assert ok, output[-4000:]


def test_s9_the_development_settings_would_not_pass(tmp_path: Path) -> None:
    """The check itself can fail: development settings (debug on, no HTTPS) draw Django's deploy warnings."""
    result = manage("check", "--deploy", "--fail-level", "WARNING", env={"AIOS_ENV": "development"}, data_dir=tmp_path)
    found = set(CHECK_ID.findall(result.stdout + result.stderr))
    assert result.returncode != 0
    assert {"security.W004", "security.W008", "security.W018"} <= found


# --- Refusals: one line naming the variable ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param(
            production_env(AIOS_ENV=None, DJANGO_SECRET_KEY=None),
            "DJANGO_SECRET_KEY must be set",
            id="no AIOS_ENV is production: missing secret key",
        ),
        pytest.param(production_env(DJANGO_SECRET_KEY=None), "DJANGO_SECRET_KEY must be set", id="missing secret key"),
        pytest.param(
            production_env(DJANGO_SECRET_KEY=THE_OLD_DEVELOPMENT_KEY),
            "DJANGO_SECRET_KEY is a development or weak key",
            id="the old development key",
        ),
        pytest.param(
            production_env(DJANGO_SECRET_KEY=secrets.token_urlsafe(30)),
            "DJANGO_SECRET_KEY is a development or weak key",
            id="a key under 50 characters",
        ),
        pytest.param(
            production_env(DJANGO_SECRET_KEY="abcd" * 20),
            "DJANGO_SECRET_KEY is a development or weak key",
            id="a key of 4 distinct characters",
        ),
        pytest.param(
            production_env(DJANGO_SECRET_KEY="django-insecure-" + secrets.token_urlsafe(50)),
            "DJANGO_SECRET_KEY is a development or weak key",
            id="startproject's insecure key",
        ),
        pytest.param(
            production_env(DJANGO_DEBUG="true"),
            "DJANGO_DEBUG is on while DJANGO_ALLOWED_HOSTS names aios.example.com",
            id="debug on a public host (production)",
        ),
        pytest.param(
            {"AIOS_ENV": "development", "DJANGO_ALLOWED_HOSTS": "localhost,aios.corp"},
            "DJANGO_DEBUG is on while DJANGO_ALLOWED_HOSTS names aios.corp",
            id="debug on a public host (development)",
        ),
        pytest.param(
            {"AIOS_ENV": "development", "DJANGO_ALLOWED_HOSTS": "*"},
            "DJANGO_DEBUG is on while DJANGO_ALLOWED_HOSTS names *",
            id="debug on any host",
        ),
        pytest.param(
            production_env(AIOS_CREDENTIALS_KEY=None),
            "AIOS_CREDENTIALS_KEY must be set",
            id="missing credentials key",
        ),
        pytest.param(
            production_env(AIOS_CREDENTIALS_KEY="c" * 40),
            "AIOS_CREDENTIALS_KEY must start with a Fernet key",
            id="a credentials key that is not a Fernet key",
        ),
        pytest.param(
            {"AIOS_ENV": "development", "DJANGO_SECRET_KEY": (same := Fernet.generate_key().decode())}
            | {"AIOS_CREDENTIALS_KEY": same},
            "AIOS_CREDENTIALS_KEY must not be DJANGO_SECRET_KEY",
            id="credentials key = secret key (development too)",
        ),
        pytest.param(
            production_env(DJANGO_SECRET_KEY=None, DATABASE_URL="mysql://db/aios"),
            "DJANGO_SECRET_KEY must be set",
            id="the first refusal only",
        ),
        pytest.param(
            production_env(REDIS_URL=None),
            "REDIS_URL must be set",
            id="missing Redis in production",
        ),
        pytest.param(
            production_env(DATABASE_URL="postgres://aios:s3cr3t-pw@db.example.com/"),
            "DATABASE_URL must name a database",
            id="a database URL without a database",
        ),
    ],
)
def test_a_misconfigured_start_stops_with_one_line_naming_the_variable(env, expected, tmp_path: Path) -> None:
    line = refusal_line(manage("check", env=env, data_dir=tmp_path))
    assert expected in line
    assert "s3cr3t-pw" not in line  # a refusal never prints a password it quotes


def test_production_keys_list_with_the_secret_key_in_it_is_refused(tmp_path: Path) -> None:
    env = production_env()
    env["AIOS_CREDENTIALS_KEYS"] = f"{Fernet.generate_key().decode()},{env['DJANGO_SECRET_KEY']}"
    line = refusal_line(manage("check", env=env, data_dir=tmp_path))
    assert "AIOS_CREDENTIALS_KEYS must not be DJANGO_SECRET_KEY" in line


def test_debug_on_loopback_hosts_is_allowed_in_development(tmp_path: Path) -> None:
    """The control of the debug refusal: the same start with only loopback names goes through."""
    result = manage(
        "check", env={"AIOS_ENV": "development", "DJANGO_ALLOWED_HOSTS": "localhost,127.0.0.1,[::1]"}, data_dir=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_an_unreachable_database_stops_migrate_and_the_web_process(tmp_path: Path) -> None:
    unreachable = f"postgres://aios:s3cr3t-pw@127.0.0.1:{closed_port()}/aios"
    env = production_env(DATABASE_URL=unreachable, DATABASE_OWNER_URL=unreachable)
    line = refusal_line(manage("migrate", "--noinput", env=env, data_dir=tmp_path))
    assert "the database in DATABASE_OWNER_URL" in line and "cannot be reached" in line
    assert "s3cr3t-pw" not in line

    # The web process: uvicorn imports aios_web.asgi, whose start-up check runs at import.
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("AIOS_", "DJANGO_"))}
    environment.update({k: v for k, v in env.items() if v is not None}, AIOS_DATA_DIR=str(tmp_path))
    web = subprocess.run(
        [sys.executable, "-c", "import aios_web.asgi"],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    line = refusal_line(web)
    assert "the database in DATABASE_URL" in line and "s3cr3t-pw" not in line


def test_a_reachable_database_lets_migrate_through_the_start_up_check(database_urls, tmp_path: Path) -> None:
    """The control: the same production start against the real test database passes the check (`migrate
    --check` then reports on migrations, which are applied)."""
    env = production_env(**database_urls, REDIS_URL=settings.REDIS_URL)
    result = manage("migrate", "--check", env=env, data_dir=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
