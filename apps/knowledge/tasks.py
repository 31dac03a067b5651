"""Celery tasks of the knowledge app: thin doors into the ingest, each safe to run twice."""

from __future__ import annotations

from celery import shared_task

from apps.knowledge.ingest import document_ingest, documents_resume_due

INGEST_TASK = "knowledge.document_ingest"
RESUME_TASK = "knowledge.ingest_resume"


@shared_task(name=INGEST_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def ingest_document(document_id: int) -> str:
    """Read, cut and embed one document (a duplicate delivery finds it claimed and returns)."""
    return document_ingest(document_id)


@shared_task(name=RESUME_TASK, acks_late=False, ignore_result=True)
def resume_ingests() -> int:
    """The periodic pickup: ring again for every document whose ingest is due with no live worker."""
    due = documents_resume_due()
    for document_id in due:
        ingest_document.delay(document_id)
    return len(due)


def ingest_enqueue(document_id: int) -> None:
    """Ring the bell for one document (called on commit by the services)."""
    ingest_document.delay(document_id)
