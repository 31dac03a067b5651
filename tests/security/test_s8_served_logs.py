"""S8 (served processes): the log files of the web server (uvicorn, the real ASGI app) and of a Celery worker, each
a process of its own as in production, never hold a secret that passed through them.

Planted: a model endpoint's token (the worker sends it to the model server on every call), a person's API token
(sent to the web server as a Bearer token, and a wrong one beside it), a password typed into the sign-in form (a
failed sign-in), and the processes' own secret key and credentials key. Then both log files are searched for every
canary.

Figure: `S8b served_logs canary_found 0 of N files ok`.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from typing import Any

import pytest
from django.conf import settings

from apps.accounts.services import api_token_issue
from apps.inference.models import ModelEndpoint
from apps.runs.models import Run
from apps.runs.services import run_start
from apps.workflows.services import workflow_create, workflow_version_create, workflow_version_publish
from tests.conftest import PASSWORD
from tests.support.figures import record_figure
from tests.support.processes import LOG_DIR

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

TOKEN = "s8b-canary-endpoint-3f9c0d1e7a"
TYPED_PASSWORD = "s8b-canary-typed-password-81ac"
WRONG_API_TOKEN = "aios_s8bcanarywrongtoken5d2e9f"


def _request(url: str, *, headers: dict[str, str] | None = None, data: bytes | None = None, opener: Any = None) -> int:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with (opener or urllib.request.build_opener()).open(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def test_s8b_served_web_and_worker_logs_hold_no_secret(celery_worker_process, asgi_server, analyst, team) -> None:
    # The worker's model calls carry the endpoint's token.
    ModelEndpoint.objects.update(is_default=False)
    ModelEndpoint.objects.create(
        name="s8b", kind="tgi", url=settings.AIOS_INFERENCE_URL, is_default=True, token=TOKEN, timeout_seconds=30
    )
    workflow = workflow_create(actor=analyst, name="S8b served", team=team)
    version = workflow_version_create(
        actor=analyst,
        workflow=workflow,
        graph={"steps": [{"key": "note", "type": "llm.generate", "config": {"prompt": "Hi {{ input.text }}"}}]},
        input_schema={"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
    )
    workflow_version_publish(actor=analyst, version=version)
    run, _ = run_start(actor=analyst, workflow=workflow, inputs={"text": "a short claim"})
    deadline = time.monotonic() + 60
    while not Run.objects.get(pk=run.pk).is_finished:
        assert time.monotonic() < deadline, "the worker did not finish the run"
        time.sleep(0.2)

    # The web server: the API with a real token and a wrong one, a failed sign-in with a typed password.
    _, api_token = api_token_issue(user=analyst, name="s8b canary", lifetime_days=1)
    assert _request(f"{asgi_server}/api/workflows/", headers={"Authorization": f"Bearer {api_token}"}) == 200
    assert _request(f"{asgi_server}/api/workflows/", headers={"Authorization": f"Bearer {WRONG_API_TOKEN}"}) in (
        401,
        403,
    )
    jar = CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    assert _request(f"{asgi_server}/accounts/login/", opener=opener) == 200
    csrf = next(cookie.value for cookie in jar if "csrftoken" in cookie.name)
    form = urllib.parse.urlencode(
        {"username": analyst.username, "password": TYPED_PASSWORD, "csrfmiddlewaretoken": csrf}
    ).encode()
    headers = {"Referer": f"{asgi_server}/accounts/login/", "Content-Type": "application/x-www-form-urlencoded"}
    assert _request(f"{asgi_server}/accounts/login/", data=form, headers=headers, opener=opener) == 200
    # A successful sign-in, so the session's pages are served as well.
    form = urllib.parse.urlencode(
        {"username": analyst.username, "password": PASSWORD, "csrfmiddlewaretoken": csrf}
    ).encode()
    assert _request(f"{asgi_server}/accounts/login/", data=form, headers=headers, opener=opener) == 200
    assert _request(f"{asgi_server}/runs/{run.pk}/", opener=opener) == 200

    canaries = {
        "endpoint token": TOKEN,
        "API token": api_token,
        "wrong API token": WRONG_API_TOKEN,
        "typed password": TYPED_PASSWORD,
        "secret key": settings.SECRET_KEY,
        "credentials key": settings.AIOS_CREDENTIALS_KEY,
    }
    time.sleep(1)  # the processes write their logs unbuffered; give the last lines a moment to land
    files = {"web": LOG_DIR / "asgi.log", "worker": LOG_DIR / "celery-worker.log"}
    finds = {}
    for name, path in files.items():
        text = path.read_text(encoding="utf-8", errors="replace")
        assert text.strip(), f"the {name} log is empty: nothing was searched"
        hits = [what for what, canary in canaries.items() if canary and canary in text]
        if hits:
            finds[name] = hits
    ok = not finds
    record_figure(f"S8b served_logs canary_found {len(finds)} of {len(files)} files {'ok' if ok else 'FAILED'}")
    assert ok, f"secrets in served logs: {finds}"
