"""Ingest through real Celery workers against the development inference server's /embed: an upload through the
API reaches "ready" with its progress visible on the way, and a worker killed mid-way leaves a document that the
periodic pickup hands to another worker, which finishes it without starting over."""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest
import redis
from django.conf import settings
from kombu import Connection
from rest_framework.test import APIClient

from apps.knowledge.ingest import documents_resume_due
from apps.knowledge.models import Chunk, Document
from apps.knowledge.tasks import INGEST_TASK, RESUME_TASK
from deploy.devstack.processes import ManagedProcess
from tests.support.figures import record_figure
from tests.support.processes import LOG_DIR, REPO, celery_worker_argv, redis_url_with_db, service_env
from workers.celery import app as celery_app

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def guide(sections: int, sentences: int) -> bytes:
    parts = ["# Lumo service manual"]
    for number in range(1, sections + 1):
        parts.append(f"## Chapter {number}")
        parts.append(
            " ".join(
                f"Step {i} of chapter {number} tells the technician how to check lamp {i}." for i in range(sentences)
            )
        )
    return "\n\n".join(parts).encode()


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_an_upload_through_the_api_is_ingested_by_a_worker_with_visible_progress(
    celery_worker_process, analyst, collection
):
    client = APIClient()
    client.force_authenticate(analyst)
    from django.core.files.uploadedfile import SimpleUploadedFile

    upload = SimpleUploadedFile("manual.md", guide(12, 30), content_type="text/markdown")
    response = client.post(f"/api/collections/{collection.name}/documents/", {"file": upload}, format="multipart")
    assert response.status_code == 201, response.content
    url = f"/api/collections/{collection.name}/documents/{response.json()['id']}/"
    seen: list[tuple[str, int, int]] = []

    def ready() -> bool:
        body = client.get(url).json()
        state = (body["status"], body["chunks_done"], body["chunks_total"])
        if not seen or seen[-1] != state:
            seen.append(state)
        return body["status"] in ("ready", "failed")

    wait_for(ready, 300, "the document to be ingested")
    status, done, total = seen[-1]
    assert status == "ready" and done == total > 32, seen
    assert any(s == "embedding" and 0 < d < t for s, d, t in seen), f"no progress seen between batches: {seen}"
    search = client.get(f"/api/collections/{collection.name}/search/", {"q": "check lamp 7 in chapter 3"}).json()
    assert search["passages"] and search["passages"][0]["document"] == "manual.md"


def test_a_worker_killed_mid_ingest_leaves_work_that_the_pickup_finishes(analyst, collection):
    # Workers of this test use a Redis database of their own: the session's worker must not take their tasks.
    broker = redis_url_with_db(settings.REDIS_URL, 5)
    redis.Redis.from_url(broker).flushdb()
    env = service_env(
        REDIS_URL=broker,
        CELERY_BROKER_URL=broker,
        AIOS_KNOWLEDGE_LEASE_SECONDS="5",
        AIOS_KNOWLEDGE_EMBED_BATCH="8",
    )
    document = Document.objects.create(
        collection=collection,
        name="manual.md",
        content_type="text/markdown",
        size=1,
        sha256="0" * 64,
        data=guide(10, 30),
        uploaded_by=analyst,
    )

    def worker(node: str) -> ManagedProcess:
        process = ManagedProcess(
            node,
            celery_worker_argv(queues="default", concurrency=1, node=node),
            env=env,
            cwd=REPO,
            log_path=LOG_DIR / f"{node}.log",
        )
        process.start()
        process.wait_until(lambda log: " ready." in log, 60)
        return process

    def send(task: str, *args: Any) -> None:
        with Connection(broker) as connection:
            celery_app.send_task(task, args=list(args), queue="default", connection=connection)

    first = worker("kb-worker-a")
    try:
        send(INGEST_TASK, document.pk)

        def part_done() -> bool:
            document.refresh_from_db()
            return document.status == "embedding" and 8 <= document.chunks_done < document.chunks_total - 16

        wait_for(part_done, 180, "the first batches")
        first.signal_group(signal.SIGKILL)
        first.reap()
    finally:
        first.stop(timeout=5)
    document.refresh_from_db()
    done_at_kill, total = document.chunks_done, document.chunks_total
    embedded_at_kill = set(
        Chunk.objects.filter(document=document, embedding__isnull=False).values_list("pk", flat=True)
    )
    assert document.status == "embedding" and len(embedded_at_kill) >= done_at_kill
    # Nothing is due while the dead worker's lease runs; once it lapses, the pickup finds the document.
    wait_for(lambda: documents_resume_due() == [document.pk], 30, "the lease to lapse")
    second = worker("kb-worker-b")
    try:
        send(RESUME_TASK)  # the periodic pickup, as beat sends it
        wait_for(lambda: Document.objects.filter(pk=document.pk, status="ready").exists(), 180, "the second worker")
    finally:
        second.stop(timeout=10)
    document.refresh_from_db()
    assert document.chunks_done == document.chunks_total == total and document.attempts == 2
    assert not Chunk.objects.filter(document=document, embedding__isnull=True).exists()
    # The passages and batches of the killed worker were kept, not cut and embedded again.
    assert Chunk.objects.filter(pk__in=embedded_at_kill).count() == len(embedded_at_kill)
    record_figure(
        f"K2 ingest_after_worker_kill completed 1/1 chunks {total} kept_from_killed_worker {len(embedded_at_kill)} ok"
    )
