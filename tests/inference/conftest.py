"""Fixtures for the inference client tests: a real development server on loopback.

No database is involved in the client tests: they talk HTTP to a server process, so they run with or
without the Django project around them.
"""

from tests.support.devserver import base_url, devserver, make_server, script_path

__all__ = ["base_url", "devserver", "make_server", "script_path"]
