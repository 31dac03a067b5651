"""Configuration of the stack: ports, data directories and external services, resolved once from the environment."""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from apps.core.keyfiles import (
    CREDENTIALS_KEY_FILE_NAME,
    SECRET_KEY_FILE_NAME,
    generate_credentials_key,
    generate_secret_key,
    key_file_ensure,
)

from .erp import ERP_DATABASE, ERP_READER_PASSWORD, ERP_READER_ROLE

REPO_ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"
DATABASE_NAME = "aios"
# The roles of the embedded PostgreSQL (deploy/README.md, "Database roles"). The cluster's superuser is the
# launcher's alone (it creates the roles, the databases and the `vector` extension, which needs it); migrations run
# as the owner, which owns the database and every table but is no superuser; every product process connects as the
# application role, which owns nothing and so cannot switch the audit tables' append-only triggers off. Each has a
# generated password (deploy/devstack/passwords.py); the server asks for it on every connection (scram-sha-256).
DATABASE_SUPERUSER = "postgres"
DATABASE_OWNER = "aios_owner"
DATABASE_APPLICATION_ROLE = "aios_app"
# Every child carries this variable (value: the stack's data directory). A launcher that was SIGKILLed may leave
# children behind if the kernel's parent-death signal did not stop them (a stopped or slow-to-exit process); the
# next launcher on the same data directory finds them by this mark (and by `devstack.children`) and stops them
# before it binds any port.
OWNER_MARK = "AIOS_DEVSTACK_DATA_DIR"
# Written into the base data directory so `make clean-data` never deletes a directory we did not create.
DATA_DIR_MARK = ".aios-devstack"

STOP_TIMEOUT_SECONDS = 10.0
POSTGRES_READY_SECONDS = 60.0
REDIS_READY_SECONDS = 30.0
INFERENCE_READY_SECONDS = 60.0
MAIL_READY_SECONDS = 30.0
# The first start imports Django, DRF and Channels cold on a 2-core machine: allow for it.
WEB_READY_SECONDS = 120.0
WORKER_READY_SECONDS = 60.0
POLL_SECONDS = 0.25


def mark_data_dir(base: Path) -> None:
    """Leave the file by which `make clean-data` knows that `base` is a stack's to delete."""
    mark = base / DATA_DIR_MARK
    if not mark.exists():
        mark.write_text("Local data of the AIOS development stack. `make clean-data` deletes this directory.\n")


class DevstackError(Exception):
    """A problem the operator has to fix; printed as one message, without a traceback."""


class StopRequested(Exception):
    """Ctrl-C, SIGTERM or SIGHUP arrived; raised only at the launcher's own wait points, never asynchronously."""


_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def read_dotenv(path: Path) -> dict[str, str]:
    """Parse a `.env` file of KEY=VALUE lines into a dict; a missing file yields {}.

    Supports blank lines, `#` comments, an optional `export ` prefix, single or double quotes around a value,
    and ` #` trailing comments after an unquoted value. Raises DevstackError naming the line on anything else,
    because a silently ignored typo in a port or URL is worse than a refusal to start.
    """
    if not path.is_file():
        return {}
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if text.startswith("export "):
            text = text[len("export ") :].lstrip()
        key, equals, value = text.partition("=")
        key = key.strip()
        if not equals or not _ENV_KEY.fullmatch(key):
            raise DevstackError(f"{path}:{number}: expected KEY=VALUE, got {line.strip()!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        values[key] = value
    return values


def load_dotenv_into_environ(path: Path) -> None:
    """Copy `.env` values into os.environ where the variable is not already set (real environment wins)."""
    for key, value in read_dotenv(path).items():
        os.environ.setdefault(key, value)


def external_url(name: str) -> str | None:
    """The value of a service-switch variable such as DATABASE_URL, or None when unset or empty; a `NAME_FILE`
    variable (the secret-file form the settings read) counts as set, and its value is the file's path.

    An empty value counts as unset so that `DATABASE_URL=` copied from an example file keeps the embedded service.
    """
    value = os.environ.get(name, "").strip() or os.environ.get(f"{name}_FILE", "").strip()
    return value or None


def read_port(name: str, default: int) -> int:
    """Read a TCP port from the environment variable `name`, or return `default` when it is unset or empty."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        port = int(raw)
    except ValueError:
        raise DevstackError(f'{name} must be an integer port number (got "{raw}")') from None
    if not 1 <= port <= 65535:
        raise DevstackError(f"{name} must be a port number between 1 and 65535 (got {port})")
    return port


@dataclass(frozen=True)
class PortClaim:
    """A port the stack will bind, with the variable that sets it and the service that uses it (for messages)."""

    port: int
    variable: str
    service: str


@dataclass(frozen=True)
class StackConfig:
    """Everything a mode needs to know, resolved from the environment once, before anything starts.

    A `*_port` of None means that service is external (its URL variable is set) and is not started.
    """

    mode: str
    base_data_dir: Path
    data_dir: Path
    postgres_port: int | None
    redis_port: int | None
    inference_port: int | None
    web_port: int | None
    smtp_port: int | None = None
    # `run` only: the stand-ins for the templates' outside systems (an ERP's and a CMS's HTTP APIs) and the
    # inbound SMTP server of email triggers.
    outside_port: int | None = None
    inbound_smtp_port: int | None = None

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def mail_dir(self) -> Path:
        """Where the catch-all SMTP server keeps the messages it receives."""
        return self.data_dir / "mail"

    @property
    def outside_dir(self) -> Path:
        """Where the outside-system stand-ins keep what they received."""
        return self.data_dir / "outside"

    @property
    def is_test(self) -> bool:
        return self.mode == "test"

    @property
    def aios_env(self) -> str:
        """The product's AIOS_ENV for this mode's children: the settings default to production, so the stack
        says what it is explicitly."""
        return "test" if self.is_test else "development"

    @property
    def secret_key_file(self) -> Path:
        """This stack's generated DJANGO_SECRET_KEY (one per machine and data directory, mode 0600)."""
        return self.data_dir / SECRET_KEY_FILE_NAME

    @property
    def credentials_key_file(self) -> Path:
        """This stack's generated AIOS_CREDENTIALS_KEY (a Fernet key, mode 0600): never derived from the secret
        key, so a leaked SECRET_KEY does not decrypt stored credentials."""
        return self.data_dir / CREDENTIALS_KEY_FILE_NAME

    def port_claims(self) -> list[PortClaim]:
        """The ports this mode binds on 127.0.0.1, in start order."""
        prefix = "AIOS_TEST_" if self.is_test else "AIOS_"
        candidates = [
            (self.postgres_port, f"{prefix}PG_PORT", "PostgreSQL"),
            (self.redis_port, f"{prefix}REDIS_PORT", "Redis"),
            (self.inference_port, f"{prefix}INFERENCE_PORT", "the development inference server"),
            (self.smtp_port, f"{prefix}SMTP_PORT", "the catch-all SMTP server"),
            (self.outside_port, "AIOS_OUTSIDE_PORT", "the stand-in ERP and CMS"),
            (self.inbound_smtp_port, "AIOS_INBOUND_SMTP_PORT", "the inbound SMTP server of email triggers"),
            (self.web_port, "AIOS_WEB_PORT", "the web server"),
        ]
        return [PortClaim(port, variable, service) for port, variable, service in candidates if port is not None]


def build_config(mode: str) -> StackConfig:
    """Resolve ports, data directories and external-service switches for `mode` from os.environ.

    Raises DevstackError for a malformed value or two services configured onto the same port.
    """
    test = mode == "test"
    base = Path(os.environ.get("AIOS_DATA_DIR", "").strip() or ".data")
    if not base.is_absolute():
        base = REPO_ROOT / base
    # The test stack has its own data and ports so `make test` never disturbs a running `make run`. Its ports
    # sit below Linux's ephemeral range (32768-60999): a test port in that range was now and then taken by
    # some client's outgoing connection, and the next run refused to start.
    data_dir = base / "test" if test else base
    prefix = "AIOS_TEST_" if test else "AIOS_"
    config = StackConfig(
        mode=mode,
        base_data_dir=base,
        data_dir=data_dir,
        postgres_port=None if external_url("DATABASE_URL") else read_port(f"{prefix}PG_PORT", 25442 if test else 55432),
        redis_port=None if external_url("REDIS_URL") else read_port(f"{prefix}REDIS_PORT", 26389 if test else 56379),
        inference_port=None
        if external_url("AIOS_INFERENCE_URL")
        else read_port(f"{prefix}INFERENCE_PORT", 28090 if test else 58080),
        web_port=read_port("AIOS_WEB_PORT", 8000) if mode == "run" else None,
        smtp_port=None if external_url("EMAIL_URL") else read_port(f"{prefix}SMTP_PORT", 28025 if test else 8025),
        outside_port=read_port("AIOS_OUTSIDE_PORT", 8030) if mode == "run" else None,
        inbound_smtp_port=read_port("AIOS_INBOUND_SMTP_PORT", 2525) if mode == "run" else None,
    )
    seen: dict[int, PortClaim] = {}
    for claim in config.port_claims():
        if claim.port in seen:
            other = seen[claim.port]
            raise DevstackError(
                f"{other.variable} and {claim.variable} are both {claim.port}: give each service its own port."
            )
        seen[claim.port] = claim
    return config


def service_urls(config: StackConfig) -> dict[str, str]:
    """DATABASE_URL, DATABASE_OWNER_URL and REDIS_URL of the embedded services this mode starts, passwords included
    (generated on first use), so every child and every printed `export` line reaches them as they are secured."""
    # Imported here: passwords.py raises this module's DevstackError, so it imports this module.
    from .passwords import ensure_password

    urls = {}
    if config.postgres_port is not None:
        server = f"{LOOPBACK}:{config.postgres_port}/{DATABASE_NAME}"
        for variable, role in (("DATABASE_URL", DATABASE_APPLICATION_ROLE), ("DATABASE_OWNER_URL", DATABASE_OWNER)):
            password = ensure_password(config.data_dir, f"postgres-{role}")
            urls[variable] = f"postgres://{role}:{password}@{server}"
    if config.redis_port is not None:
        password = ensure_password(config.data_dir, "redis")
        urls["REDIS_URL"] = f"redis://:{password}@{LOOPBACK}:{config.redis_port}/0"
    return urls


def ensure_key_files(config: StackConfig) -> None:
    """Generate the stack's secret key and credentials key on first start (kept afterwards: the credentials
    stored in this stack's database stay readable across restarts). Files are created mode 0600 atomically."""
    key_file_ensure(config.secret_key_file, generate_secret_key)
    key_file_ensure(config.credentials_key_file, generate_credentials_key)


def child_environment(config: StackConfig) -> dict[str, str]:
    """The environment every child starts from: ours (with `.env` applied) plus the service URLs of this stack,
    AIOS_ENV for the mode, and the stack's key files (generated here on first use) unless the developer set keys
    of his own."""
    env = dict(os.environ)
    env["AIOS_ENV"] = config.aios_env
    ensure_key_files(config)
    if not (env.get("DJANGO_SECRET_KEY") or env.get("DJANGO_SECRET_KEY_FILE")):
        env["DJANGO_SECRET_KEY_FILE"] = str(config.secret_key_file)
    if not any(
        env.get(name)
        for name in (
            "AIOS_CREDENTIALS_KEY",
            "AIOS_CREDENTIALS_KEY_FILE",
            "AIOS_CREDENTIALS_KEYS",
            "AIOS_CREDENTIALS_KEYS_FILE",
        )
    ):
        env["AIOS_CREDENTIALS_KEY_FILE"] = str(config.credentials_key_file)
    env["PYTHONUNBUFFERED"] = "1"  # children write to pipes; unbuffered keeps their lines in time order
    venv_bin = str(Path(sys.executable).parent)
    if venv_bin not in env.get("PATH", "").split(os.pathsep):
        env["PATH"] = os.pathsep.join(filter(None, [venv_bin, env.get("PATH")]))
    # Children talk to each other over loopback; a proxy setting must never capture that traffic.
    for name in ("NO_PROXY", "no_proxy"):
        parts = [part for part in env.get(name, "").split(",") if part]
        env[name] = ",".join(parts + [host for host in ("127.0.0.1", "localhost", "::1") if host not in parts])
    env.update(service_urls(config))
    if config.inference_port is not None:
        env["AIOS_INFERENCE_URL"] = f"http://{LOOPBACK}:{config.inference_port}"
    if config.smtp_port is not None:
        env["EMAIL_URL"] = f"smtp://{LOOPBACK}:{config.smtp_port}"
        # Not a setting of the product: it tells tests (tests/support/smtp.py) where the catch-all's files are.
        env["AIOS_MAIL_CATCHER_DIR"] = str(config.mail_dir)
    if config.outside_port is not None:
        # Demo settings, read by the demo seed only: where the templates' connections point.
        env["AIOS_DEMO_OUTSIDE_URL"] = f"http://{LOOPBACK}:{config.outside_port}"
        if config.postgres_port is not None:
            server = f"{LOOPBACK}:{config.postgres_port}/{ERP_DATABASE}"
            env["AIOS_DEMO_ERP_URL"] = f"postgres://{ERP_READER_ROLE}:{ERP_READER_PASSWORD}@{server}"
        # The demo's outside systems and the product's own API (the weekly assistant reads it) are on loopback,
        # which the outbound guard refuses unless allowed; an explicit setting wins.
        env.setdefault("AIOS_HTTP_ALLOWLIST", "127.0.0.1/32")
    if config.inbound_smtp_port is not None:
        env["AIOS_INBOUND_SMTP_PORT"] = str(config.inbound_smtp_port)
    if config.is_test:
        env["DJANGO_SETTINGS_MODULE"] = "aios_web.settings_test"
    return env
