"""Keys generated once per machine for development and tests, kept in files only their owner can read.

Production never uses these: it is given its keys (DJANGO_SECRET_KEY, AIOS_CREDENTIALS_KEY, or their `_FILE`
forms). The embedded stack (deploy/devstack) calls `key_file_ensure` before it starts anything and passes the
paths to its children as `*_FILE` variables, so every process of one stack reads the same key, and a key is
never a public constant from this repository.

Standard library and `cryptography` only: deploy/devstack imports this module before Django is set up.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from cryptography.fernet import Fernet

SECRET_KEY_FILE_NAME = "secret.key"  # noqa: S105 - a file name, not a key
CREDENTIALS_KEY_FILE_NAME = "credentials.key"


def generate_secret_key() -> str:
    """A Django SECRET_KEY: 64 URL-safe characters from the OS's random source (well over Django's W009 bar of
    50 characters and 5 distinct ones)."""
    return secrets.token_urlsafe(48)


def generate_credentials_key() -> str:
    """A Fernet key: 32 random bytes, URL-safe base64."""
    return Fernet.generate_key().decode()


def key_file_ensure(path: Path, generate: Callable[[], str]) -> str:
    """The key stored in `path`, generating it with `generate` first if the file does not exist.

    The file is created with mode 0600 from the start (os.open with O_CREAT|O_EXCL, never chmod after writing,
    which would leave a window in which another user could open it), written under a temporary name and then
    hard-linked into place: two processes starting at once both end up reading the one key that won, and no
    reader ever sees a half-written file. An existing file is read as it is (one trailing newline stripped).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(generate() + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            # Another process that won the race made the file first: its key is the one.
            with contextlib.suppress(FileExistsError):
                os.link(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
    text = path.read_text(encoding="utf-8")
    return text[:-1] if text.endswith("\n") else text


def fernet_key_valid(key: str) -> bool:
    """Whether `key` is a Fernet key: URL-safe base64 of exactly 32 bytes."""
    try:
        Fernet(key.encode())
    except (ValueError, TypeError):
        return False
    return True
