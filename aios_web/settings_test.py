"""Test settings: the real services (Postgres, Redis, the development inference server), faster hashing."""

from __future__ import annotations

import os

os.environ.setdefault("AIOS_ENV", "test")
# pytest creates, migrates and empties the test database (`flush` switches the append-only triggers off), all
# of which takes the owner role. The service processes that tests start set AIOS_DATABASE_ROLE=application and
# connect as the product does (tests/support/processes.service_env).
os.environ.setdefault("AIOS_DATABASE_ROLE", "owner")
# The suite drives the API and starts runs far faster than a person; tests of the limits lower these.
os.environ.setdefault("AIOS_API_REQUESTS_PER_MINUTE", "1000000")
os.environ.setdefault("AIOS_API_ANON_REQUESTS_PER_MINUTE", "1000000")
os.environ.setdefault("AIOS_RUN_STARTS_PER_MINUTE", "1000000")
os.environ.setdefault("AIOS_DRAFTS_PER_MINUTE", "1000000")
os.environ.setdefault("AIOS_WEBHOOK_REFUSALS_PER_MINUTE", "1000000")

from aios_web.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
AIOS_TOKEN_FLUSH_SECONDS = 0.05
CACHES["default"]["KEY_PREFIX"] = "aios-test"  # noqa: F405
# The test suite's flush, which may empty append-only tables; never installed anywhere else.
INSTALLED_APPS = [*INSTALLED_APPS, "tests.support.testdb"]  # noqa: F405
