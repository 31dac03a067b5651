"""The embedded services' generated passwords: one file each under `<data dir>/secrets/`, mode 0600.

PostgreSQL and Redis listen on loopback only, but loopback is shared by every account on the machine, so they ask
for a password anyway (security review H2). The passwords are made on first start and kept, so a stack that
starts again finds its roles as it left them; `make clean-data` deletes them with the rest of the data.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from .config import DevstackError

SECRETS_DIR = "secrets"
# token_urlsafe(32): 256 bits in [A-Za-z0-9_-], which needs no escaping in a URL, a SQL literal or a redis.conf.
PASSWORD_BYTES = 32
PASSWORD_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def secrets_dir(data_dir: Path) -> Path:
    """`<data dir>/secrets`, made 0700 if missing."""
    directory = data_dir / SECRETS_DIR
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    # As root the launcher opens the data directory's prefix to the PostgreSQL system user (o+rx): this one
    # stays closed whatever made it.
    directory.chmod(0o700)
    return directory


def password_path(data_dir: Path, name: str) -> Path:
    """Where the password called `name` (e.g. `postgres-aios_app`, `redis`) is kept."""
    return secrets_dir(data_dir) / f"{name}.password"


def read_password(path: Path) -> str:
    """The password in `path`; DevstackError when it is readable by others or not one we could have written."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise DevstackError(f"{path} is readable by other users (mode {mode:o}): run `chmod 600 {path}`.")
    value = path.read_text(encoding="ascii", errors="replace").strip()
    if not value or not set(value) <= PASSWORD_ALPHABET:
        raise DevstackError(f"{path} does not hold a password this stack made: delete it, or run `make clean-data`.")
    return value


def ensure_password(data_dir: Path, name: str) -> str:
    """The password called `name`, generated into its file on first use.

    The file is written under a temporary name created with O_CREAT | O_EXCL and mode 0600 (never readable by
    others, not even between a create and a chmod), then hard-linked into place: link() refuses an existing name,
    so two launchers racing on a fresh data directory both end up reading the one file that won, never a
    half-written one.
    """
    path = password_path(data_dir, name)
    if path.exists():
        return read_password(path)
    scratch = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    descriptor = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="ascii") as handle:
            handle.write(secrets.token_urlsafe(PASSWORD_BYTES) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(scratch, path)
    finally:
        scratch.unlink(missing_ok=True)
    return read_password(path)
