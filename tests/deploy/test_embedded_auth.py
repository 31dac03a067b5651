"""The embedded stack's PostgreSQL and Redis ask every client for a password (security review H2), migrations run
as an owner that is no superuser (H1), and a data directory made by an older launcher with `trust` is secured in
place on its next start.

Each test starts `python -m deploy.devstack services` on a data directory and ports of its own, and talks to
its servers over their real sockets as an attacker on the same machine would: without a password, with a wrong
one, and with the ones the launcher printed.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
import redis
from django.db import connection

from deploy.devstack.config import OWNER_MARK
from tests.faults.private_pg import PrivatePostgres
from tests.support.processes import REPO, free_port

pytestmark = pytest.mark.integration

EXPORT = re.compile(r"^\s+export (\w+)=(\S+)$", re.MULTILINE)
ROLES = ("postgres", "aios_owner", "aios_app")


@contextmanager
def services(data_dir: Path, console_path: Path) -> Iterator[dict[str, str]]:
    """`python -m deploy.devstack services` on `data_dir` and free ports; yields the URLs it printed."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "DATABASE_OWNER_URL", "REDIS_URL", "AIOS_INFERENCE_URL", "EMAIL_URL")
        and not key.startswith(("AIOS_TEST_", "PG"))
    }
    env.update(
        AIOS_DATA_DIR=str(data_dir),
        AIOS_PG_PORT=str(free_port()),
        AIOS_REDIS_PORT=str(free_port()),
        AIOS_INFERENCE_PORT=str(free_port()),
        AIOS_SMTP_PORT=str(free_port()),
    )
    with console_path.open("ab") as console:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "deploy.devstack", "services"],
            cwd=REPO,
            env=env,
            stdout=console,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while "Ctrl-C stops everything" not in console_path.read_text(errors="replace"):
            assert launcher.poll() is None, console_path.read_text(errors="replace")
            assert time.monotonic() < deadline, "the services did not come up:\n" + console_path.read_text()
            time.sleep(0.2)
        yield dict(EXPORT.findall(console_path.read_text(errors="replace").rsplit("AIOS services are running", 1)[1]))
    finally:
        if launcher.poll() is None:
            launcher.send_signal(signal.SIGINT)
        try:
            launcher.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(launcher.pid, signal.SIGKILL)
            raise
        left = []
        for proc in psutil.process_iter():
            try:
                if proc.environ().get(OWNER_MARK) == str(data_dir):
                    left.append(proc)
            except (psutil.Error, OSError):
                continue
        assert not left, f"still running after the stop: {left}"


def connect(url_or_port: str | int, *, user: str = "", password: str | None = None, dbname: str = "aios") -> Any:
    if isinstance(url_or_port, str):
        return psycopg.connect(url_or_port, connect_timeout=5, autocommit=True)
    return psycopg.connect(
        host="127.0.0.1", port=url_or_port, user=user, password=password, dbname=dbname, connect_timeout=5
    )


def refusals_without_the_password(port: int) -> list[str]:
    """How each role fares with no password and with a wrong one: the roles that got in (should be none)."""
    let_in = []
    for role in ROLES:
        for password in (None, "wrong-password"):
            try:
                connect(port, user=role, password=password).close()
            except psycopg.OperationalError as error:
                assert "password" in str(error), error  # refused for its password, not for another reason
            else:
                let_in.append(f"{role} with {'no' if password is None else 'a wrong'} password")
    return let_in


def role_attributes(url: str) -> dict[str, tuple[bool, bool]]:
    with connect(url) as conn:
        rows = conn.execute(
            "SELECT rolname, rolsuper, rolcreatedb FROM pg_roles WHERE rolname = ANY(%s)", [list(ROLES)]
        ).fetchall()
    return {name: (superuser, createdb) for name, superuser, createdb in rows}


@pytest.mark.timeout(240)
def test_the_embedded_postgres_and_redis_ask_for_the_generated_passwords(tmp_path: Path) -> None:
    data_dir = tmp_path / "stack"
    with services(data_dir, tmp_path / "console.txt") as urls:
        assert set(urls) >= {"DATABASE_URL", "DATABASE_OWNER_URL", "REDIS_URL"}, urls
        port = int(urls["DATABASE_URL"].rsplit(":", 1)[1].split("/")[0])
        assert refusals_without_the_password(port) == []
        with connect(urls["DATABASE_OWNER_URL"]) as owner:
            assert owner.execute("SELECT current_user").fetchone() == ("aios_owner",)
            database_owner = owner.execute(
                "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'aios'"
            ).fetchone()
            extensions = {row[0] for row in owner.execute("SELECT extname FROM pg_extension").fetchall()}
        with connect(urls["DATABASE_URL"]) as application:
            assert application.execute("SELECT current_user").fetchone() == ("aios_app",)
        attributes = role_attributes(urls["DATABASE_OWNER_URL"])
        assert database_owner == ("aios_owner",)
        assert "vector" in extensions
        # Only the launcher's own role is a superuser; the owner may create databases (pytest's), the app nothing.
        assert attributes == {"postgres": (True, True), "aios_owner": (False, True), "aios_app": (False, False)}

        redis_port = int(urls["REDIS_URL"].rsplit(":", 1)[1].split("/")[0])
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=redis_port, socket_timeout=5).ping()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=redis_port, password="wrong-password", socket_timeout=5).ping()
        assert redis.Redis.from_url(urls["REDIS_URL"], socket_timeout=5).ping()

        # No password is on a command line, where `ps` shows it to every account on the machine.
        secrets_dir = data_dir / "secrets"
        passwords = {path.name: path.read_text().strip() for path in secrets_dir.glob("*.password")}
        assert set(passwords) == {f"postgres-{role}.password" for role in ROLES} | {"redis.password"}
        shown = []
        for proc in psutil.process_iter():
            try:
                if proc.environ().get(OWNER_MARK) != str(data_dir):
                    continue
                command = " ".join(proc.cmdline())
            except (psutil.Error, OSError):
                continue
            shown += [name for name, password in passwords.items() if password in command]
        assert shown == []
    assert stat.S_IMODE(secrets_dir.stat().st_mode) == 0o700
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in secrets_dir.iterdir()}
    modes["redis.conf"] = stat.S_IMODE((data_dir / "redis" / "redis.conf").stat().st_mode)
    assert set(modes.values()) == {0o600}, modes
    assert "trust" not in (data_dir / "postgres" / "pg_hba.conf").read_text()


@pytest.mark.timeout(300)
def test_a_trust_cluster_of_an_older_launcher_is_secured_in_place(tmp_path: Path) -> None:
    # What the launcher made before passwords: trust, `aios` and its tables owned by the superuser, migrations'
    # default privileges given by the superuser, and an application role without a password.
    old = PrivatePostgres().start()
    try:
        with psycopg.connect(old.url("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE aios")
            conn.execute("CREATE ROLE aios_app LOGIN")
        with psycopg.connect(old.url("aios"), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION vector")
            conn.execute("CREATE TABLE kept (id bigserial PRIMARY KEY, note text)")
            conn.execute("CREATE SEQUENCE loose_counter")
            conn.execute("CREATE FUNCTION kept_count() RETURNS bigint LANGUAGE sql AS 'SELECT count(*) FROM kept'")
            conn.execute("INSERT INTO kept (note) VALUES ('made before passwords')")
            conn.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON kept TO aios_app")
        old.stop()
        data_dir = tmp_path / "stack"
        data_dir.mkdir()
        shutil.move(str(old.data), str(data_dir / "postgres"))
    finally:
        old.close()

    console_path = tmp_path / "console.txt"
    with services(data_dir, console_path) as urls:
        port = int(urls["DATABASE_URL"].rsplit(":", 1)[1].split("/")[0])
        assert refusals_without_the_password(port) == []
        with connect(urls["DATABASE_OWNER_URL"]) as owner:
            owners = dict(
                owner.execute(
                    "SELECT c.relname, pg_get_userbyid(c.relowner) FROM pg_class c "
                    "WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'S')"
                ).fetchall()
            )
            function_owner = owner.execute("SELECT pg_get_userbyid(proowner) FROM pg_proc WHERE proname = 'kept_count'")
            [(function_owner_name,)] = function_owner.fetchall()
            [(database_owner,)] = owner.execute(
                "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'aios'"
            ).fetchall()
            # A later migration's table, made by the owner, reaches the application through default privileges.
            owner.execute("CREATE TABLE made_after (id int)")
        with connect(urls["DATABASE_URL"]) as application:
            notes = application.execute("SELECT note FROM kept").fetchall()
            application.execute("SELECT count(*) FROM made_after")
        attributes = role_attributes(urls["DATABASE_OWNER_URL"])
    console = console_path.read_text()
    assert "made with trust authentication" in console, console
    assert owners == {"kept": "aios_owner", "kept_id_seq": "aios_owner", "loose_counter": "aios_owner"}
    assert function_owner_name == "aios_owner" and database_owner == "aios_owner"
    assert notes == [("made before passwords",)]
    assert attributes["aios_owner"] == (False, True) and attributes["aios_app"] == (False, False)
    assert "trust" not in (data_dir / "postgres" / "pg_hba.conf").read_text()


@pytest.mark.django_db
def test_migrations_stop_with_the_statement_to_run_when_vector_is_missing() -> None:
    """The owner may not create `vector` (only a superuser may): where it is missing, the first migration says
    which statement to run instead of failing with PostgreSQL's terse "permission denied"."""
    settings_dict = connection.settings_dict
    with connection.cursor() as cursor:
        cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        [(superuser,)] = cursor.fetchall()
    assert not superuser, "the test stack's owner role is a superuser: it should be aios_owner, which is not"
    name = "aios_without_vector"
    admin = {
        "host": settings_dict["HOST"],
        "port": settings_dict["PORT"],
        "user": settings_dict["USER"],
        "password": settings_dict["PASSWORD"],
    }
    with psycopg.connect(**admin, dbname="postgres", autocommit=True) as server:
        server.execute(f"DROP DATABASE IF EXISTS {name}")
        server.execute(f"CREATE DATABASE {name} TEMPLATE template0")  # template1 has vector; template0 never
    try:
        url = f"postgres://{admin['user']}:{admin['password']}@{admin['host']}:{admin['port']}/{name}"
        env = {**os.environ, "DATABASE_OWNER_URL": url, "DATABASE_URL": url}
        result = subprocess.run(
            [sys.executable, "manage.py", "migrate", "core", "0001", "--noinput"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        with psycopg.connect(**admin, dbname="postgres", autocommit=True) as server:
            server.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    assert result.returncode != 0
    assert "CREATE EXTENSION IF NOT EXISTS vector;" in result.stderr, result.stderr[-3000:]
    assert f'"{name}"' in result.stderr and "only a superuser" in result.stderr
