"""A broken environment value stops start-up with a message naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.startup import manage, production_env


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
def test_broken_value_names_its_variable(variable, value, message, tmp_path: Path):
    result = manage("check", env={"AIOS_ENV": "development", variable: value}, data_dir=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr


def test_production_refuses_to_start_without_a_secret_key(tmp_path: Path):
    result = manage("check", env=production_env(DJANGO_SECRET_KEY=None), data_dir=tmp_path)
    assert result.returncode != 0 and "DJANGO_SECRET_KEY must be set" in result.stderr


def test_production_refuses_to_start_without_a_credentials_key(tmp_path: Path):
    result = manage("check", env=production_env(AIOS_CREDENTIALS_KEY=None), data_dir=tmp_path)
    assert result.returncode != 0 and "AIOS_CREDENTIALS_KEY must be set" in result.stderr


def test_production_refuses_to_start_without_an_audit_signing_key(tmp_path: Path):
    result = manage("check", env=production_env(AIOS_AUDIT_SIGNING_KEY=None), data_dir=tmp_path)
    assert result.returncode != 0 and "AIOS_AUDIT_SIGNING_KEY must be set" in result.stderr
    short = manage("check", env=production_env(AIOS_AUDIT_SIGNING_KEY="x"), data_dir=tmp_path)
    assert short.returncode != 0 and "AIOS_AUDIT_SIGNING_KEY must be at least 32 characters" in short.stderr
