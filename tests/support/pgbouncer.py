"""PgBouncer in transaction mode in front of the test database, as a production deployment puts it between the
workers and PostgreSQL (Debian's `pgbouncer` package; `make test` installs it as root).

The pooler gets its own port and a configuration in a temporary directory. It authenticates each client against
the credentials of the roles it is given (the DATABASES entries the test stack's URLs yield), so it works whether
the test PostgreSQL trusts local connections or asks for passwords: with every role's password known it speaks
SCRAM to clients and to the server, otherwise it trusts its clients and the server decides. Any database name
is passed through to the same name upstream (the `*` entry), so the test database needs no entry of its own.

    with PgBouncer(roles=[app_role, owner_role], listen=["127.0.0.1"], pool_size=1) as bouncer:
        url = bouncer.url_for(app_role, database="test_aios")
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from deploy.devstack.processes import ManagedProcess
from tests.support.processes import LOG_DIR, free_port

PGBOUNCER_BINARY = "/usr/sbin/pgbouncer"
MISSING = (
    "PgBouncer is not installed: the scale-out and pooling tests need Debian's `pgbouncer` package "
    "(`make test` installs it when run as root; otherwise `apt-get install pgbouncer`)."
)


def pgbouncer_binary() -> str:
    """The pgbouncer executable; fails the test (never skips it) naming the package when it is missing."""
    found = shutil.which("pgbouncer") or (PGBOUNCER_BINARY if os.access(PGBOUNCER_BINARY, os.X_OK) else None)
    if found is None:
        raise AssertionError(MISSING)
    return found


def _quoted(value: str) -> str:
    """A userlist.txt field: double quotes, a double quote inside doubled."""
    return '"' + value.replace('"', '""') + '"'


def _unprivileged_user() -> pwd.struct_passwd | None:
    """PgBouncer refuses to run as root: as root it runs as Debian's `postgres` user (the package makes it),
    else `nobody`."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise AssertionError("running as root, and neither a postgres nor a nobody user exists to run PgBouncer as")


class PgBouncer:
    """One pgbouncer process in transaction mode; `start()` waits until it accepts connections."""

    def __init__(
        self,
        *,
        roles: Iterable[Mapping[str, Any]],
        listen: Sequence[str] = ("127.0.0.1",),
        port: int | None = None,
        pool_size: int = 20,
        name: str = "pgbouncer",
    ) -> None:
        self.roles = [dict(role) for role in roles]
        if not self.roles:
            raise ValueError("PgBouncer needs at least one role to let through")
        upstream = self.roles[0]
        self.upstream_host = str(upstream["HOST"] or "127.0.0.1")
        self.upstream_port = int(upstream["PORT"] or 5432)
        self.listen = list(listen)
        self.port = port or free_port()
        self.pool_size = pool_size
        self.name = name
        self.directory = Path(tempfile.mkdtemp(prefix="aios-pgbouncer-"))
        self.process: ManagedProcess | None = None

    @property
    def auth_type(self) -> str:
        return "scram-sha-256" if all(role.get("PASSWORD") for role in self.roles) else "trust"

    def config_text(self) -> str:
        return "\n".join(
            [
                "[databases]",
                f"* = host={self.upstream_host} port={self.upstream_port}",
                "",
                "[pgbouncer]",
                f"listen_addr = {','.join(self.listen)}",
                f"listen_port = {self.port}",
                "unix_socket_dir =",
                f"auth_type = {self.auth_type}",
                f"auth_file = {self.directory / 'userlist.txt'}",
                "pool_mode = transaction",
                f"default_pool_size = {self.pool_size}",
                "min_pool_size = 0",
                "reserve_pool_size = 0",
                "max_client_conn = 1000",
                # Transaction mode resets nothing between clients (that is the point of the tests that use it).
                "server_reset_query =",
                "ignore_startup_parameters = extra_float_digits,options",
                "log_connections = 0",
                "log_disconnections = 0",
                "",
            ]
        )

    def userlist_text(self) -> str:
        return "".join(
            f"{_quoted(str(role['USER']))} {_quoted(str(role.get('PASSWORD') or ''))}\n" for role in self.roles
        )

    def url_for(self, role: Mapping[str, Any], *, database: str, host: str | None = None) -> str:
        """A postgres:// URL that reaches `database` as `role` through this PgBouncer (on `host`, by default the
        first address it listens on)."""
        credentials = quote(str(role["USER"]), safe="")
        if role.get("PASSWORD"):
            credentials += ":" + quote(str(role["PASSWORD"]), safe="")
        return f"postgres://{credentials}@{host or self.listen[0]}:{self.port}/{database}"

    def start(self, timeout: float = 20) -> PgBouncer:
        binary = pgbouncer_binary()
        user = _unprivileged_user()
        config = self.directory / "pgbouncer.ini"
        config.write_text(self.config_text())
        userlist = self.directory / "userlist.txt"
        userlist.write_text(self.userlist_text())
        userlist.chmod(0o600)
        if user is not None:
            for path in (self.directory, config, userlist):
                os.chown(path, user.pw_uid, user.pw_gid)
        self.process = ManagedProcess(
            self.name,
            [binary, str(config)],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            cwd=self.directory,
            log_path=LOG_DIR / f"{self.name}.log",
            run_as=user,
            stop_signal=15,
        )
        self.process.start()
        deadline = time.monotonic() + timeout
        while not self._accepts():
            if not self.process.alive() or time.monotonic() > deadline:
                log = (
                    self.process.log_path.read_text(errors="replace")[-2000:] if self.process.log_path.exists() else ""
                )
                self.stop()
                raise AssertionError(f"PgBouncer did not start on {self.listen}:{self.port}:\n{log}")
            time.sleep(0.05)
        return self

    def _accepts(self) -> bool:
        try:
            with socket.create_connection((self.listen[0], self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=5)
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> PgBouncer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
