from __future__ import annotations

from django.apps import AppConfig


class TestDatabaseConfig(AppConfig):
    """Test-only: a `flush` that may empty append-only tables. Never installed outside the test settings."""

    name = "tests.support.testdb"
    label = "testdb"
