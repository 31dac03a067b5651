"""Browser tests: Playwright's sync API runs an event loop in the test thread, and Django refuses database
work from a thread with a running loop. The test thread here only sets up and checks rows (the servers
under test are separate processes), which is what DJANGO_ALLOW_ASYNC_UNSAFE exists for."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
