"""S4: security headers on every page route, and no CSP violation in a real browser.

Every route of the permission matrix's table (tests/security/test_permission_matrix.py), fetched as a persona
who may see it, must carry the strict CSP (no inline script or style, frame-ancestors 'none'), X-Frame-Options,
nosniff, a Referrer-Policy, the Permissions-Policy and COOP; the session and CSRF cookies their flags. Then
Chromium opens every HTML page of the table (htmx fragments load as they would for a person) with a
`securitypolicyviolation` listener and a console watch, and counts violations. The detector is proven on a
control first: a page that adds an inline style must be counted, or the test fails.

Figure: `S4 pages N missing_headers 0 csp_violations 0 ok`.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse

from tests.security.test_permission_matrix import MATRIX, OK, expected
from tests.support.figures import record_figure

pytestmark = [pytest.mark.integration, pytest.mark.browser, pytest.mark.django_db(transaction=True)]

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

PERSONA_ORDER = ["analyst", "manager", "reviewer", "auditor", "outsider"]
DENIED_FEATURES = ["camera=()", "microphone=()", "geolocation=()", "payment=()", "usb=()"]

# Collects violations from the first script of every document, before any of the page's own scripts.
VIOLATION_LISTENER = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation', (event) => {
  window.__cspViolations.push(event.violatedDirective + ' ' + (event.blockedURI || 'inline') + ' ' +
                              (event.sourceFile || '') + ':' + event.lineNumber);
});
"""


def header_problems(response: Any) -> list[str]:
    """What is missing or weak in one response's security headers (empty when all is well)."""
    problems = []
    csp = response.get("Content-Security-Policy", "")
    directives = {part.strip().split(" ")[0]: part.strip() for part in csp.split(";") if part.strip()}
    for name in ("default-src", "script-src", "style-src", "object-src", "base-uri", "frame-ancestors"):
        if name not in directives:
            problems.append(f"CSP without {name}")
    if "'unsafe-inline'" in csp or "'unsafe-eval'" in csp:
        problems.append("CSP allows inline code")
    if "report-to" not in directives or response.get("Reporting-Endpoints") is None:
        problems.append("CSP violations are not reported")
    if directives.get("frame-ancestors") != "frame-ancestors 'none'":
        problems.append("CSP frame-ancestors is not 'none'")
    if response.get("X-Frame-Options") != "DENY":
        problems.append("X-Frame-Options")
    if response.get("X-Content-Type-Options") != "nosniff":
        problems.append("nosniff")
    if response.get("Referrer-Policy") not in ("same-origin", "strict-origin-when-cross-origin", "no-referrer"):
        problems.append("Referrer-Policy")
    permissions = response.get("Permissions-Policy", "")
    problems += [f"Permissions-Policy without {feature}" for feature in DENIED_FEATURES if feature not in permissions]
    if response.get("Cross-Origin-Opener-Policy") != "same-origin":
        problems.append("Cross-Origin-Opener-Policy")
    return problems


def cookie_problems(client: Client) -> list[str]:
    problems = []
    session = client.cookies.get(settings.SESSION_COOKIE_NAME)
    if session is None:
        return ["no session cookie after sign-in"]
    if not session["httponly"]:
        problems.append("session cookie readable by scripts")
    if str(session["samesite"]).lower() not in ("lax", "strict"):
        problems.append("session cookie SameSite")
    if settings.SESSION_COOKIE_SECURE is not True and settings.AIOS_ENV == "production":
        problems.append("session cookie not Secure in production")
    return problems


def _seeing_persona(route: str) -> str | None:
    for persona in PERSONA_ORDER:
        if expected(route, persona) == OK:
            return persona
    return None


def test_s4_headers_on_every_page_and_no_csp_violation_in_chromium(world, asgi_server, tmp_path):
    from playwright.sync_api import sync_playwright

    from tests.e2e.conftest import CHROMIUM_FLAGS, chromium_path

    clients: dict[str, Client] = {}
    for persona, user in world["personas"].items():
        client = Client()
        client.force_login(user)
        clients[persona] = client

    # --- headers, through the Django stack, every route of the table -------------------------------------
    missing: dict[str, list[str]] = {}
    pages: list[tuple[str, str]] = []  # (persona, url) of HTML pages for the browser pass
    checked = 0
    for route in sorted(MATRIX):
        persona = _seeing_persona(route)
        if persona is None:
            continue
        url = reverse(route, args=world["args"].get(route, []))
        response = clients[persona].get(url)
        if response.status_code != OK:
            missing[f"{route} ({persona})"] = [f"status {response.status_code}"]
            continue
        checked += 1
        problems = header_problems(response)
        if problems:
            missing[url] = problems
        if response.get("Content-Type", "").startswith("text/html") and not response.get("HX-Trigger"):
            pages.append((persona, url))
    # Answers that are not a view's own: the sign-in page, a 404, a refusal, the API's 401.
    anonymous = Client()
    for label, response in {
        "login": anonymous.get("/accounts/login/"),
        "404": clients["analyst"].get("/no/such/page/"),
        "403": clients["reviewer"].get(reverse("workflows:create")),
        "api-401": anonymous.get("/api/workflows/"),
    }.items():
        checked += 1
        problems = header_problems(response)
        if problems:
            missing[label] = problems
    login = Client()
    login.post("/accounts/login/", {"username": "ana", "password": _password()})
    cookie_issues = cookie_problems(login)
    if cookie_issues:
        missing["cookies"] = cookie_issues

    # --- Chromium, every HTML page, as its persona --------------------------------------------------------
    violations: dict[str, list[str]] = {}
    control: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS, headless=True)
        contexts = {}
        for persona, client in clients.items():
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            context.add_init_script(VIOLATION_LISTENER)
            context.add_cookies(
                [
                    {
                        "name": settings.SESSION_COOKIE_NAME,
                        "value": client.cookies[settings.SESSION_COOKIE_NAME].value,
                        "url": asgi_server,
                    }
                ]
            )
            contexts[persona] = context

        def visit(persona: str, url: str, *, then: str = "") -> list[str]:
            page = contexts[persona].new_page()
            console: list[str] = []
            page.on(
                "console",
                lambda message: console.append(message.text)
                if "Content Security Policy" in message.text or "Permissions-Policy" in message.text
                else None,
            )
            page.goto(asgi_server + url, wait_until="networkidle")
            if then:
                page.evaluate(then)
                page.wait_for_timeout(200)  # the violation event is queued as a task
            seen = list(page.evaluate("window.__cspViolations || []"))
            page.close()
            # One violation shows up both as an event and as a console line; count the larger of the two.
            return seen if len(seen) >= len(console) else console

        # The control: an inline style attribute added the way an htmx swap would add it must be caught.
        control = visit(
            "analyst",
            "/",
            then="document.body.insertAdjacentHTML('beforeend', '<div style=\"color: red\">x</div>')",
        )
        for persona, url in pages:
            seen = visit(persona, url)
            if seen:
                violations[url] = seen
        browser.close()

    assert control, "the CSP violation detector saw nothing on a page that breaks the CSP: it cannot be trusted"
    count = sum(len(found) for found in violations.values())
    ok = not missing and count == 0 and len(pages) > 10
    record_figure(f"S4 pages {checked} missing_headers {len(missing)} csp_violations {count} {'ok' if ok else 'FAIL'}")
    assert not missing, missing
    assert count == 0, violations
    assert len(pages) > 10, pages


def _password() -> str:
    from tests.conftest import PASSWORD

    return PASSWORD
