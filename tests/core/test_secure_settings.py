"""Secure defaults of the settings module, evaluated fresh under a chosen environment: secrets from *_FILE,
DATABASE_URL parsing, the production cookie and proxy settings, and the generated key files."""

from __future__ import annotations

import os
import runpy
import secrets
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured

from apps.core import secrets as credentials
from apps.core.env import database_from_url
from apps.core.keyfiles import generate_credentials_key, key_file_ensure
from deploy.devstack.config import build_config, child_environment
from tests.support.processes import REPO
from tests.support.startup import production_env

SETTINGS = REPO / "aios_web" / "settings.py"


def load_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: dict[str, str | None]) -> dict[str, Any]:
    """The settings module's values under exactly `env` (plus AIOS_DATA_DIR=tmp_path), as a fresh process
    would compute them."""
    for name in list(os.environ):
        if name.startswith(("AIOS_", "DJANGO_")) or name in ("EMAIL_URL", "CELERY_BROKER_URL", "EMAIL_HOST_PASSWORD"):
            monkeypatch.delenv(name)
    for name in ("DATABASE_URL", "DATABASE_OWNER_URL", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AIOS_DATA_DIR", str(tmp_path))
    for name, value in env.items():
        if value is not None:
            monkeypatch.setenv(name, value)
    return runpy.run_path(str(SETTINGS))


def production(**overrides: str | None) -> dict[str, str | None]:
    services: dict[str, str | None] = {
        "DATABASE_URL": "postgres://aios_app:app-pw@db.example.com:5432/aios",
        "REDIS_URL": "redis://:redis-pw@redis.example.com:6379/0",
    }
    return production_env(**{**services, **overrides})


# --- *_FILE ----------------------------------------------------------------------------------------------------

SECRET_VALUES = {
    # variable: (a value for it, the setting it lands in, how to read that setting)
    "DJANGO_SECRET_KEY": (secrets.token_urlsafe(50), "SECRET_KEY"),
    "AIOS_CREDENTIALS_KEY": (Fernet.generate_key().decode(), "AIOS_CREDENTIALS_KEY"),
    "AIOS_AUDIT_SIGNING_KEY": (secrets.token_urlsafe(40), "AIOS_AUDIT_SIGNING_KEY"),
    "DATABASE_URL": ("postgres://aios_app:file-pw@db.internal:5432/aios", "DATABASE_URL"),
    "DATABASE_OWNER_URL": ("postgres://aios_owner:owner-pw@db.internal:5432/aios", "DATABASE_OWNER_URL"),
    "REDIS_URL": ("rediss://:file-pw@redis.internal:6380/0", "REDIS_URL"),
    "CELERY_BROKER_URL": ("redis://:broker-pw@broker.internal:6379/1", "CELERY_BROKER_URL"),
    "EMAIL_URL": ("smtp+starttls://mailer:mail-pw@relay.internal:587", "EMAIL_URL"),
    "EMAIL_HOST_PASSWORD": ("separate mail password", "EMAIL_HOST_PASSWORD"),
    "AIOS_METRICS_TOKEN": (secrets.token_urlsafe(32), "AIOS_METRICS_TOKEN"),
    "AIOS_INFERENCE_TOKEN": (secrets.token_urlsafe(32), "AIOS_INFERENCE_TOKEN"),
}


@pytest.mark.parametrize("variable", sorted(SECRET_VALUES))
def test_every_secret_may_come_from_a_file(variable: str, monkeypatch, tmp_path: Path) -> None:
    value, setting = SECRET_VALUES[variable]
    secret_file = tmp_path / "secret"
    secret_file.write_text(value + "\n")  # the newline `echo` and editors add is not part of the secret
    values = load_settings(monkeypatch, tmp_path, production(**{variable: None, f"{variable}_FILE": str(secret_file)}))
    assert values[setting] == value


def test_only_one_trailing_newline_is_stripped(monkeypatch, tmp_path: Path) -> None:
    secret_file = tmp_path / "token"
    secret_file.write_text("token-with-a-blank-line\n\n")
    values = load_settings(monkeypatch, tmp_path, production(AIOS_METRICS_TOKEN_FILE=str(secret_file)))
    assert values["AIOS_METRICS_TOKEN"] == "token-with-a-blank-line\n"


@pytest.mark.parametrize("variable", sorted(SECRET_VALUES))
def test_a_secret_and_its_file_both_set_is_refused(variable: str, monkeypatch, tmp_path: Path) -> None:
    value, _ = SECRET_VALUES[variable]
    secret_file = tmp_path / "secret"
    secret_file.write_text(value)
    with pytest.raises(ImproperlyConfigured, match=f"{variable} and {variable}_FILE are both set"):
        load_settings(monkeypatch, tmp_path, production(**{variable: value, f"{variable}_FILE": str(secret_file)}))


def test_a_missing_secret_file_is_named(monkeypatch, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ImproperlyConfigured, match="DJANGO_SECRET_KEY_FILE names a file that cannot be read"):
        load_settings(monkeypatch, tmp_path, production(DJANGO_SECRET_KEY=None, DJANGO_SECRET_KEY_FILE=str(missing)))


def test_a_list_of_credentials_keys_may_come_from_a_file_one_per_line(monkeypatch, tmp_path: Path) -> None:
    new, old = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"{new}\n{old}\n")
    values = load_settings(
        monkeypatch, tmp_path, production(AIOS_CREDENTIALS_KEY=None, AIOS_CREDENTIALS_KEYS_FILE=str(keys_file))
    )
    assert values["AIOS_CREDENTIALS_KEYS"] == [new, old]


# --- DATABASE_URL -------------------------------------------------------------------------------------------------


def test_database_url_keeps_sslmode_and_decodes_an_escaped_password(monkeypatch, tmp_path: Path) -> None:
    url = "postgres://aios%2Bapp:p%40ss%3Aw%2Fo%25rd@db.example.com:6432/aios?sslmode=verify-full&sslrootcert=/ca.pem"
    values = load_settings(monkeypatch, tmp_path, production(DATABASE_URL=url))
    database = values["DATABASES"]["default"]
    assert database["USER"] == "aios+app"
    assert database["PASSWORD"] == "p@ss:w/o%rd"
    assert (database["HOST"], database["PORT"], database["NAME"]) == ("db.example.com", "6432", "aios")
    assert database["OPTIONS"]["sslmode"] == "verify-full"
    assert database["OPTIONS"]["sslrootcert"] == "/ca.pem"
    assert database["OPTIONS"]["connect_timeout"] == 10  # a default, since the URL names none
    assert values["DATABASE_APPLICATION_ROLE"] == "aios+app"


def test_the_owner_url_is_parsed_the_same_way_for_migrations(monkeypatch, tmp_path: Path) -> None:
    owner = "postgresql://owner:o%40wner@db.example.com/aios?sslmode=require&connect_timeout=3"
    values = load_settings(monkeypatch, tmp_path, production(DATABASE_OWNER_URL=owner, AIOS_DATABASE_ROLE="owner"))
    database = values["DATABASES"]["default"]
    assert (database["USER"], database["PASSWORD"], database["PORT"]) == ("owner", "o@wner", "5432")
    assert database["OPTIONS"] == {"sslmode": "require", "connect_timeout": 3}


def test_database_from_url_refuses_a_url_without_a_database_and_hides_its_password() -> None:
    with pytest.raises(ImproperlyConfigured) as refused:
        database_from_url("DATABASE_URL", "postgres://aios:hunter2@db.example.com:5432/")
    assert "must name a database" in str(refused.value) and "hunter2" not in str(refused.value)


# --- Production security settings ---------------------------------------------------------------------------------


def test_production_cookies_sessions_and_transport(monkeypatch, tmp_path: Path) -> None:
    values = load_settings(monkeypatch, tmp_path, production())
    assert values["DEBUG"] is False
    assert values["SESSION_COOKIE_NAME"] == "__Host-sessionid"
    assert values["CSRF_COOKIE_NAME"] == "__Host-csrftoken"
    assert values["SESSION_COOKIE_SECURE"] and values["CSRF_COOKIE_SECURE"]
    assert values["SESSION_COOKIE_AGE"] == 8 * 3600
    assert values["SECURE_SSL_REDIRECT"] and values["SECURE_HSTS_SECONDS"] >= 31536000
    # Not trusted unless the operator says a proxy sets it (review L10).
    assert "SECURE_PROXY_SSL_HEADER" not in values


def test_the_proxy_ssl_header_is_trusted_only_when_opted_in(monkeypatch, tmp_path: Path) -> None:
    values = load_settings(monkeypatch, tmp_path, production(AIOS_TRUST_PROXY_SSL_HEADER="true"))
    assert values["SECURE_PROXY_SSL_HEADER"] == ("HTTP_X_FORWARDED_PROTO", "https")


def test_unset_aios_env_is_production(monkeypatch, tmp_path: Path) -> None:
    values = load_settings(monkeypatch, tmp_path, production(AIOS_ENV=None))
    assert values["AIOS_ENV"] == "production" and values["PRODUCTION"] and values["DEBUG"] is False


# --- Generated keys --------------------------------------------------------------------------------------------


def test_development_generates_its_own_keys_once_never_the_secret_key(monkeypatch, tmp_path: Path) -> None:
    first = load_settings(monkeypatch, tmp_path, {"AIOS_ENV": "development"})
    again = load_settings(monkeypatch, tmp_path, {"AIOS_ENV": "development"})
    assert first["SECRET_KEY"] == again["SECRET_KEY"]  # stable across restarts
    assert first["AIOS_CREDENTIALS_KEY"] == again["AIOS_CREDENTIALS_KEY"]
    assert first["SECRET_KEY"] != first["AIOS_CREDENTIALS_KEY"]
    assert first["SECRET_KEY"] not in first["KNOWN_DEVELOPMENT_SECRET_KEYS"]
    Fernet(first["AIOS_CREDENTIALS_KEY"].encode())  # a real Fernet key
    for name in ("secret.key", "credentials.key"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    other_machine = load_settings(monkeypatch, tmp_path / "other", {"AIOS_ENV": "development"})
    assert other_machine["SECRET_KEY"] != first["SECRET_KEY"]


def test_a_key_file_is_created_0600_whatever_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        key = key_file_ensure(tmp_path / "deep" / "credentials.key", generate_credentials_key)
    finally:
        os.umask(previous)
    path = tmp_path / "deep" / "credentials.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert key_file_ensure(path, generate_credentials_key) == key
    assert [p.name for p in path.parent.iterdir()] == ["credentials.key"]  # no temporary file left behind


def test_processes_starting_at_once_share_one_key(tmp_path: Path) -> None:
    path = tmp_path / "credentials.key"
    script = (
        "import sys; from pathlib import Path; from apps.core.keyfiles import key_file_ensure, "
        "generate_credentials_key; print(key_file_ensure(Path(sys.argv[1]), generate_credentials_key))"
    )
    starts = [
        subprocess.Popen([sys.executable, "-c", script, str(path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
        for _ in range(6)
    ]
    keys = {process.communicate(timeout=60)[0].strip() for process in starts}
    assert keys == {path.read_text().strip()}


@pytest.mark.parametrize(("mode", "aios_env"), [("run", "development"), ("services", "development"), ("test", "test")])
def test_the_embedded_stack_sets_its_mode_and_hands_its_key_files_to_children(
    mode: str, aios_env: str, monkeypatch, tmp_path: Path
) -> None:
    for name in list(os.environ):
        if name.startswith(("AIOS_ENV", "DJANGO_SECRET_KEY", "AIOS_CREDENTIALS_KEY")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AIOS_ENV", "production")  # the stack's own mode wins over a stray setting
    monkeypatch.setenv("AIOS_DATA_DIR", str(tmp_path))
    config = build_config(mode)
    env = child_environment(config)
    assert env["AIOS_ENV"] == aios_env
    secret_file, credentials_file = Path(env["DJANGO_SECRET_KEY_FILE"]), Path(env["AIOS_CREDENTIALS_KEY_FILE"])
    assert secret_file.parent == credentials_file.parent == config.data_dir
    for path in (secret_file, credentials_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    secret_key, credentials_key = secret_file.read_text().strip(), credentials_file.read_text().strip()
    assert secret_key != credentials_key and len(secret_key) >= 50
    Fernet(credentials_key.encode())
    # A restart keeps both (credentials stored under the old key stay readable).
    again = child_environment(build_config(mode))
    assert Path(again["AIOS_CREDENTIALS_KEY_FILE"]).read_text().strip() == credentials_key
    assert Path(again["DJANGO_SECRET_KEY_FILE"]).read_text().strip() == secret_key


# --- Credentials encryption ----------------------------------------------------------------------------------


def test_credentials_are_never_encrypted_with_the_secret_key(settings) -> None:
    settings.AIOS_CREDENTIALS_KEYS = []
    settings.AIOS_CREDENTIALS_KEY = ""
    with pytest.raises(ImproperlyConfigured, match="AIOS_CREDENTIALS_KEY must be set"):
        credentials.secret_encrypt("token")


def test_a_fernet_key_is_used_as_it_is_and_still_reads_what_its_stretched_form_wrote(settings) -> None:
    key = Fernet.generate_key().decode()
    settings.AIOS_CREDENTIALS_KEYS = []
    settings.AIOS_CREDENTIALS_KEY = key
    stored = credentials.secret_encrypt("token")
    assert Fernet(key.encode()).decrypt(stored.removeprefix("fernet:").encode()) == b"token"
    legacy = "fernet:" + credentials._stretch(key).encrypt(b"older token").decode()
    assert credentials.secret_decrypt(legacy) == "older token"
