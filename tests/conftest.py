"""Shared fixtures: the named personas, the demo workflow, and real service processes.

Personas (CONVENTIONS.md): Ana the analyst owns workflows; Rita the reviewer is on her team; Max the
manager reads everything; Otto the outsider has no rights at all.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.processes import (
    asgi_server_argv,
    celery_worker_argv,
    free_port,
    http_ok,
    inference_server_argv,
    redis_url_with_db,
    running,
    service_env,
)

PASSWORD = "correct-horse-battery-staple"


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: Any) -> None:
    """The test database is made anew for each session, so audit checkpoints an earlier session wrote for it
    describe a chain that no longer exists (and may be signed with a key a test chose): they are removed, or the
    next session's audit verifications would report them."""
    from apps.audit.services import checkpoint_directory

    shutil.rmtree(checkpoint_directory(), ignore_errors=True)


@pytest.fixture
def analyst(db: Any) -> Any:
    from apps.accounts.services import user_create

    return user_create(username="ana", password=PASSWORD, roles=["analyst"], first_name="Ana", last_name="Analyst")


@pytest.fixture
def reviewer(db: Any) -> Any:
    from apps.accounts.services import user_create

    return user_create(username="rita", password=PASSWORD, roles=["reviewer"], first_name="Rita")


@pytest.fixture
def manager(db: Any) -> Any:
    from apps.accounts.services import user_create

    return user_create(username="max", password=PASSWORD, roles=["manager"], first_name="Max")


@pytest.fixture
def outsider(db: Any) -> Any:
    from apps.accounts.services import user_create

    return user_create(username="otto", password=PASSWORD, roles=[], first_name="Otto")


@pytest.fixture
def auditor(db: Any) -> Any:
    """Aude, holding the auditor role: reads the audit trail and what it refers to, changes nothing."""
    from apps.accounts.services import user_create

    return user_create(username="aude", password=PASSWORD, roles=["auditor"], first_name="Aude")


@pytest.fixture
def admin_user_role(db: Any) -> Any:
    """Adam, holding the admin role (not a Django superuser)."""
    from apps.accounts.services import user_create

    return user_create(username="adam", password=PASSWORD, roles=["admin"], first_name="Adam")


@pytest.fixture
def team(analyst: Any, reviewer: Any) -> Any:
    from apps.accounts.services import team_create

    return team_create(name="Claims", members=[analyst, reviewer])


@pytest.fixture
def claims_workflow(analyst: Any, team: Any) -> Any:
    """The demo claims-triage workflow, published, owned by Ana, shared with her team."""
    from apps.workflows.demo import CLAIMS_TRIAGE_GRAPH, CLAIMS_TRIAGE_INPUT_SCHEMA
    from apps.workflows.services import workflow_create, workflow_version_create, workflow_version_publish

    workflow = workflow_create(actor=analyst, name="Claims triage", description="Demo", team=team)
    version = workflow_version_create(
        actor=analyst, workflow=workflow, graph=CLAIMS_TRIAGE_GRAPH, input_schema=CLAIMS_TRIAGE_INPUT_SCHEMA
    )
    workflow_version_publish(actor=analyst, version=version)
    return workflow


@pytest.fixture
def sample_claim() -> str:
    from apps.workflows.demo import SAMPLE_CLAIMS

    return SAMPLE_CLAIMS[0]["claim_text"]


@pytest.fixture(scope="session")
def celery_worker_process(django_db_setup: Any, django_db_blocker: Any) -> Iterator[None]:
    """A real Celery worker process (prefork, all queues) on the test database."""
    with django_db_blocker.unblock():
        env = service_env()
    with running("celery-worker", celery_worker_argv(), ready=lambda log: " ready." in log, env=env):
        yield


@pytest.fixture(scope="session")
def asgi_server(django_db_setup: Any, django_db_blocker: Any) -> Iterator[str]:
    """The real ASGI app (HTTP + WebSocket) under uvicorn on a free port; yields its base URL."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with django_db_blocker.unblock():
        env = service_env(DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost", AIOS_PUBLIC_URLS=base)
    with running("asgi", asgi_server_argv(port), ready=lambda log: http_ok(f"{base}/healthz"), env=env):
        yield base


@pytest.fixture(scope="module")
def paced_stack(django_db_setup: Any, django_db_blocker: Any) -> Iterator[str]:
    """A whole product at a human pace, for browser tests: its own inference server streaming at about
    25 tokens/s, its own worker and ASGI server, on a Redis database of their own so the session-wide
    worker never takes its tasks. Yields the web server's base URL."""
    import redis
    from django.conf import settings

    inference_port, web_port = free_port(), free_port()
    inference_url = f"http://127.0.0.1:{inference_port}"
    redis_url = redis_url_with_db(settings.REDIS_URL, 3)
    redis.Redis.from_url(redis_url).flushdb()  # no sign-in lockouts or stale tasks from an earlier session
    with django_db_blocker.unblock():
        env = service_env(
            REDIS_URL=redis_url,
            CELERY_BROKER_URL=redis_url,
            AIOS_INFERENCE_URL=inference_url,
            DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
            AIOS_PUBLIC_URLS=f"http://127.0.0.1:{web_port}",
        )
    base = f"http://127.0.0.1:{web_port}"
    with (
        running(
            "paced-inference",
            inference_server_argv(inference_port, ttft_ms=400, tpot_ms=40),
            ready=lambda log: http_ok(f"{inference_url}/health"),
            env=env,
        ),
        running("paced-worker", celery_worker_argv(), ready=lambda log: " ready." in log, env=env),
        running("paced-asgi", asgi_server_argv(web_port), ready=lambda log: http_ok(f"{base}/healthz"), env=env),
    ):
        yield base
