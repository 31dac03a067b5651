"""Start-up of Django commands in a subprocess under an environment a test chooses, as an operator would set it.

The test process itself runs under the test settings; these helpers start `manage.py` with none of the suite's
AIOS_/DJANGO_ variables, so what the settings do with exactly the given environment is what the test sees.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

from cryptography.fernet import Fernet

from tests.support.processes import REPO

# Variables of the suite's own environment that a subprocess of these tests must not inherit: the mode, the keys
# and every setting, so the child sees only what the test gives it. DATABASE_URL and REDIS_URL are kept when the
# test does not replace them (the test stack's services are real, and a production start needs them).
_DROPPED_PREFIXES = ("AIOS_", "DJANGO_")
_DROPPED = {"EMAIL_URL", "EMAIL_URL_FILE", "DATABASE_URL_FILE", "REDIS_URL_FILE", "DATABASE_OWNER_URL_FILE"}


def production_env(**overrides: str | None) -> dict[str, str | None]:
    """What an operator sets for a production start (fresh random keys), plus `overrides`."""
    env: dict[str, str | None] = {
        "AIOS_ENV": "production",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "AIOS_CREDENTIALS_KEY": Fernet.generate_key().decode(),
        "AIOS_AUDIT_SIGNING_KEY": secrets.token_urlsafe(40),
        "EMAIL_URL": "smtp+starttls://relay.example.com:587",
        "DJANGO_DEFAULT_FROM_EMAIL": "AIOS <aios@example.com>",
        "DJANGO_ALLOWED_HOSTS": "aios.example.com",
        "DJANGO_CSRF_TRUSTED_ORIGINS": "https://aios.example.com",
    }
    env.update(overrides)
    return env


def manage(
    *args: str, env: dict[str, str | None], data_dir: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`python manage.py *args` with the suite's settings variables removed and `env` applied (None for a name in
    `env` removes that variable). `data_dir` becomes AIOS_DATA_DIR, so that no key file lands in the
    checkout's .data."""
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith(_DROPPED_PREFIXES) and key not in _DROPPED
    }
    if data_dir is not None:
        environment["AIOS_DATA_DIR"] = str(data_dir)
    for key, value in env.items():
        if value is None:
            environment.pop(key, None)
        else:
            environment[key] = value
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
