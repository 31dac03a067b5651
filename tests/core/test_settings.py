"""A broken environment value stops start-up with a message naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.processes import REPO


def django_check(**env: str) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("AIOS_", "DJANGO_"))}
    environment.update(env)
    return subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=REPO, env=environment, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("AIOS_PG_PORT", "abc", 'AIOS_PG_PORT must be an integer (got "abc")'),
        ("AIOS_INFERENCE_URL", "localhost:8080", "AIOS_INFERENCE_URL must be a URL starting with http:// or https://"),
        ("DATABASE_URL", "mysql://db/aios", "DATABASE_URL must be a URL starting with postgres://"),
        ("DJANGO_DEBUG", "maybe", 'DJANGO_DEBUG must be true or false (got "maybe")'),
        ("AIOS_ENV", "staging", "AIOS_ENV must be one of development, production, test"),
        ("AIOS_INFERENCE_TIMEOUT", "0", "AIOS_INFERENCE_TIMEOUT must be at least 1.0"),
    ],
)
def test_broken_value_names_its_variable(variable, value, message):
    result = django_check(**{variable: value})
    assert result.returncode != 0
    assert message in result.stderr


def test_production_refuses_to_start_without_a_secret_key():
    result = django_check(AIOS_ENV="production")
    assert result.returncode != 0 and "DJANGO_SECRET_KEY must be set." in result.stderr


def test_production_refuses_to_start_without_a_credentials_key():
    result = django_check(AIOS_ENV="production", DJANGO_SECRET_KEY="k" * 60)
    assert result.returncode != 0 and "AIOS_CREDENTIALS_KEY must be set." in result.stderr


def test_production_refuses_to_start_without_an_audit_signing_key():
    result = django_check(AIOS_ENV="production", DJANGO_SECRET_KEY="k" * 60, AIOS_CREDENTIALS_KEY="c" * 40)
    assert result.returncode != 0 and "AIOS_AUDIT_SIGNING_KEY must be set." in result.stderr
    short = django_check(
        AIOS_ENV="production", DJANGO_SECRET_KEY="k" * 60, AIOS_CREDENTIALS_KEY="c" * 40, AIOS_AUDIT_SIGNING_KEY="x"
    )
    assert short.returncode != 0 and "AIOS_AUDIT_SIGNING_KEY must be at least 32 characters" in short.stderr
