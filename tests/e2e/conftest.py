"""Browser tests: Debian's Chromium driven by Playwright.

Playwright's sync API runs an event loop in the test thread, and Django refuses database work from a
thread with a running loop. The test thread here only sets up and checks rows (the servers under test are
separate processes), which is what DJANGO_ALLOW_ASYNC_UNSAFE exists for.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, sync_playwright

from tests.support.processes import REPO

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

# Without the background-networking flags Chromium keeps trying hosts this machine cannot reach.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
SCREENSHOT_DIR = REPO / "reports" / "screenshots"


def chromium_path() -> str:
    path = os.environ.get("AIOS_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("Chromium is not installed: `make test` installs Debian's chromium package (apt-get).")
    return path


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS, headless=True)
        yield launched
        launched.close()


@pytest.fixture
def browser_page(browser: Browser) -> Iterator[tuple[Any, list[str]]]:
    """A page plus every console message and page error it logs ("type: text")."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    console: list[str] = []
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
    yield page, console
    context.close()
