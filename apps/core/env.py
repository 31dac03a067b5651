"""Typed readers for settings that come from the environment.

Every reader names the variable in its error, so a broken `.env` value stops start-up with a message an
operator can act on instead of a traceback deep inside Django.

Secrets may also come from files (Docker and Kubernetes secrets are mounted as files): `env_secret` and
`env_secret_url` read `NAME` or `NAME_FILE` (the file's text without one trailing newline), never both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str | None = None) -> str:
    """The variable's value, or `default`; a missing variable without a default is an error."""
    value = os.environ.get(name)
    if value is None:
        if default is None:
            raise ImproperlyConfigured(f"{name} must be set.")
        return default
    return value


def env_secret_raw(name: str) -> str | None:
    """The value of secret `name` from the variable itself or from the file `NAME_FILE` names; None when neither
    is set. Both set is an error (which one wins would be a guess); an unreadable file is an error naming it."""
    value = os.environ.get(name)
    path = os.environ.get(f"{name}_FILE")
    if path is None or path.strip() == "":
        return value
    if value is not None:
        raise ImproperlyConfigured(f"{name} and {name}_FILE are both set: set only one of them.")
    try:
        text = Path(path.strip()).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else type(error).__name__
        raise ImproperlyConfigured(f'{name}_FILE names a file that cannot be read ("{path}": {reason}).') from None
    # Exactly one trailing newline goes: the one `echo` and editors add; anything else is part of the secret.
    if text.endswith("\r\n"):
        return text[:-2]
    if text.endswith("\n"):
        return text[:-1]
    return text


def env_secret(name: str, default: str | None = None) -> str:
    """A secret from `name` or `NAME_FILE` (see env_secret_raw), or `default`; missing without a default is an
    error naming both ways of setting it."""
    value = env_secret_raw(name)
    if value is None:
        if default is None:
            raise ImproperlyConfigured(f"{name} must be set (or {name}_FILE, naming a file that holds it).")
        return default
    return value


def env_is_set(name: str) -> bool:
    """Whether `name` or `NAME_FILE` is set to something non-empty (an empty value copied from an example file
    counts as unset)."""
    return bool(os.environ.get(name, "").strip() or os.environ.get(f"{name}_FILE", "").strip())


def env_bool(name: str, default: bool) -> bool:
    """A yes/no variable: 1/true/yes/on or 0/false/no/off, case-insensitive."""
    value = os.environ.get(name)
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ImproperlyConfigured(f'{name} must be true or false (got "{value}").')


def env_int(name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer variable, optionally bounded."""
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        number = int(value.strip())
    except ValueError:
        raise ImproperlyConfigured(f'{name} must be an integer (got "{value}").') from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum} (got {number}).")
    if maximum is not None and number > maximum:
        raise ImproperlyConfigured(f"{name} must be at most {maximum} (got {number}).")
    return number


def env_float(name: str, default: float, *, minimum: float | None = None) -> float:
    """A decimal variable, optionally bounded below."""
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        number = float(value.strip())
    except ValueError:
        raise ImproperlyConfigured(f'{name} must be a number (got "{value}").') from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum} (got {number}).")
    return number


def env_list(name: str, default: list[str]) -> list[str]:
    """A comma-separated list; blanks are dropped."""
    value = os.environ.get(name)
    if value is None:
        return list(default)
    return [item.strip() for item in value.split(",") if item.strip()]


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    """One of a fixed set of words."""
    value = os.environ.get(name, default).strip()
    if value not in choices:
        raise ImproperlyConfigured(f'{name} must be one of {", ".join(choices)} (got "{value}").')
    return value


def redact_url(url: str) -> str:
    """`url` with its password replaced by ***, for messages and logs: a start-up error must not print a secret."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo = f"{parts.username or ''}:***"
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{host}"))


def _checked_url(name: str, value: str, schemes: tuple[str, ...]) -> str:
    value = value.strip()
    parts = urlsplit(value)
    if parts.scheme not in schemes or not parts.hostname:
        raise ImproperlyConfigured(
            f'{name} must be a URL starting with {" or ".join(s + "://" for s in schemes)} (got "{redact_url(value)}").'
        )
    try:
        parts.port  # noqa: B018 - touching .port validates it
    except ValueError:
        raise ImproperlyConfigured(f'{name} has an invalid port (got "{redact_url(value)}").') from None
    return value


def env_url(name: str, default: str, *, schemes: tuple[str, ...]) -> str:
    """A URL whose scheme is one of `schemes` and which names a host."""
    return _checked_url(name, os.environ.get(name, default), schemes)


def env_secret_url(name: str, default: str | None, *, schemes: tuple[str, ...]) -> str:
    """`env_url` for a URL that may carry a password: also read from `NAME_FILE`; errors never show the
    password. A None default makes the variable required."""
    return _checked_url(name, env_secret(name, default), schemes)


def database_from_url(name: str, url: str) -> dict[str, Any]:
    """Django's DATABASES entry for a postgres:// URL (validated by `env_url`), parsed by dj-database-url: query
    options such as `sslmode`, `sslrootcert` or `connect_timeout` become connection OPTIONS, and a
    percent-escaped user name or password is decoded (`p%40ss` is the password `p@ss`)."""
    if not urlsplit(url).path.lstrip("/"):
        raise ImproperlyConfigured(
            f'{name} must name a database, e.g. postgres://user@host:5432/aios (got "{redact_url(url)}").'
        )
    try:
        parsed = dj_database_url.parse(url)
    except ValueError as error:
        raise ImproperlyConfigured(f'{name} cannot be read ({error}; got "{redact_url(url)}").') from None
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": parsed["NAME"],
        "USER": parsed.get("USER") or "postgres",
        "PASSWORD": parsed.get("PASSWORD") or "",
        "HOST": parsed.get("HOST") or "",
        "PORT": str(parsed.get("PORT") or 5432),
        "OPTIONS": dict(parsed.get("OPTIONS") or {}),
    }


# smtp:// talks plain SMTP (port 25 unless given), smtp+starttls:// upgrades the connection with STARTTLS (587),
# smtps:// is TLS from the first byte (465). Spelled out because the older `smtps` of some URL libraries meant
# STARTTLS, and the wrong one of the two only shows as a connection that hangs until its timeout.
SMTP_SCHEMES = ("smtp", "smtp+starttls", "smtps")
_SMTP_DEFAULT_PORTS = {"smtp": 25, "smtp+starttls": 587, "smtps": 465}


@dataclass(frozen=True)
class SmtpServer:
    """Where Django's SMTP backend sends mail: its EMAIL_HOST, EMAIL_PORT, credentials and TLS switches."""

    host: str
    port: int
    user: str
    password: str
    use_tls: bool  # STARTTLS after the greeting
    use_ssl: bool  # TLS from the first byte


def smtp_server_from_url(name: str, url: str) -> SmtpServer:
    """The SMTP server an smtp://, smtp+starttls:// or smtps:// URL names (validated by `env_url`); a user name
    and password in the URL are percent-decoded, so `p%40ss` is the password `p@ss`."""
    parts = urlsplit(url)
    if parts.scheme not in _SMTP_DEFAULT_PORTS:
        raise ImproperlyConfigured(
            f'{name} must be a URL starting with {" or ".join(s + "://" for s in SMTP_SCHEMES)} (got "{url}").'
        )
    return SmtpServer(
        host=parts.hostname or "",
        port=parts.port or _SMTP_DEFAULT_PORTS[parts.scheme],
        user=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        use_tls=parts.scheme == "smtp+starttls",
        use_ssl=parts.scheme == "smtps",
    )
