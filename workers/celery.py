"""The Celery application: configuration from Django settings, queues, routing and the beat schedule."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.signals import (
    beat_init,
    setup_logging,
    worker_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)
from kombu import Queue

from apps.core.startup import settings_or_exit

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aios_web.settings")

app = Celery("aios")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = [Queue(name) for name in ("engine", "inference", "connectors", "default")]
# One beat sends the schedule however many run (workers/beat.py): the others stand by and take over.
app.conf.beat_scheduler = "workers.beat:SingleBeatScheduler"
# Step tasks are sent to the queue their step type names (see apps.steps.base.StepType.queue).
# The sweeper goes to "default", not behind a backlog of steps on "engine": it is what repairs that backlog.
app.conf.task_routes = {
    "runs.execute_step": {"queue": "engine"},
    "runs.sweep": {"queue": "default"},
    # Audit anchors and checkpoints are small, periodic and never urgent; a checkpoint is written to the
    # filesystem of the worker that runs it, so AIOS_AUDIT_CHECKPOINT_DIR must be the same volume on every
    # worker that serves this queue.
    "audit.anchor_write": {"queue": "default"},
    "audit.checkpoint_write": {"queue": "default"},
    "approvals.escalations_fire": {"queue": "default"},
    "approvals.digests_send": {"queue": "default"},
    # Knowledge ingest: parsing and embedding a document waits on the embeddings server batch by batch, which the
    # engine's quick steps should not queue behind.
    "knowledge.document_ingest": {"queue": "default"},
    "knowledge.ingest_resume": {"queue": "default"},
    # Email triggers that read a mailbox: the tick is quick bookkeeping; a poll waits on an outside IMAP server.
    "runs.mailboxes_poll": {"queue": "default"},
    "runs.mailbox_poll": {"queue": "connectors"},
    # KPI rollups: a periodic rebuild of the days that changed; never urgent, and it must not hold up steps.
    "dashboards.rollups_refresh": {"queue": "default"},
    "evaluations.reports_score": {"queue": "default"},
    "dashboards.kpi_digests_send": {"queue": "default"},
}
app.autodiscover_tasks(
    ["apps.runs", "apps.audit", "apps.approvals", "apps.knowledge", "apps.evaluations", "apps.dashboards"]
)
# The weekly KPI digest's task lives beside the rollups' tasks module, in a module of its own.
app.autodiscover_tasks(["apps.dashboards"], related_name="tasks_digest")


@app.on_after_configure.connect
def _beat_schedule(sender: Celery, **kwargs: object) -> None:
    from django.conf import settings

    # The sweeper repairs what the broker lost; a sweep that expired unconsumed is simply replaced by the
    # next one, so messages never pile up while workers are down.
    interval = settings.AIOS_SWEEP_INTERVAL_SECONDS
    sender.add_periodic_task(interval, sender.signature("runs.sweep", expires=interval * 2), name="sweep")
    # A cut of audit events shows once an anchor records them, and a cut of events and anchors together once a
    # signed checkpoint covers that anchor: these two intervals are the windows before that. Same expiry rule
    # as the sweep.
    anchor_every = settings.AIOS_AUDIT_ANCHOR_SECONDS
    sender.add_periodic_task(
        anchor_every, sender.signature("audit.anchor_write", expires=anchor_every * 2), name="audit-anchor"
    )
    checkpoint_every = settings.AIOS_AUDIT_CHECKPOINT_SECONDS
    sender.add_periodic_task(
        checkpoint_every,
        sender.signature("audit.checkpoint_write", expires=checkpoint_every * 2),
        name="audit-checkpoint",
    )
    # Escalation steps are timer rows claimed by a conditional update, so a late or repeated sweep never fires
    # one twice; the digest marks what it mailed in the same transaction.
    escalate_every = settings.AIOS_ESCALATION_INTERVAL_SECONDS
    sender.add_periodic_task(
        escalate_every,
        sender.signature("approvals.escalations_fire", expires=escalate_every * 2),
        name="approval-escalations",
    )
    # Documents whose ingest stopped (a lost message, a dead worker) are claimed again by a conditional update,
    # so a late or repeated pickup never ingests one twice at once.
    resume_every = settings.AIOS_KNOWLEDGE_SWEEP_SECONDS
    sender.add_periodic_task(
        resume_every, sender.signature("knowledge.ingest_resume", expires=resume_every * 2), name="knowledge-resume"
    )
    # Mailbox triggers: each tick sends a poll for every trigger whose row says it is due; a poll takes its
    # trigger's lease by a conditional update, so ticks that overlap a slow poll never poll one mailbox twice.
    mailbox_every = settings.AIOS_MAILBOX_POLL_SECONDS
    sender.add_periodic_task(
        mailbox_every, sender.signature("runs.mailboxes_poll", expires=mailbox_every * 2), name="mailbox-polls"
    )
    # Evaluation reports are scored at the end of every sweep (apps.runs.hooks.after_sweep), not by a task of their
    # own on the same interval, which made the sweep wait behind it on the default queue.
    digest_every = settings.AIOS_DIGEST_INTERVAL_SECONDS
    sender.add_periodic_task(
        digest_every, sender.signature("approvals.digests_send", expires=digest_every), name="approval-digests"
    )
    # The rollup job claims a lease on its state row and rebuilds whole days idempotently, so an overlapping beat
    # returns at once and a repeated one finds less to do.
    rollup_every = settings.AIOS_ROLLUP_INTERVAL_SECONDS
    sender.add_periodic_task(
        rollup_every, sender.signature("dashboards.rollups_refresh", expires=rollup_every), name="kpi-rollups"
    )
    # The KPI digest is looked for as often as the inbox digest; each subscription is claimed by a conditional
    # update on its last-sent time, so a person gets one digest per week however often the beat fires.
    sender.add_periodic_task(
        digest_every, sender.signature("dashboards.kpi_digests_send", expires=digest_every), name="kpi-digests"
    )


# --- operations telemetry (docs/operations.md) ---------------------------------------------------------------
# Logs: Django's LOGGING (apps/core/telemetry/logs.py) rather than Celery's own set-up, so workers and beat write
# the same lines as web, with the run id on every line a step's execution writes.
@setup_logging.connect
def _logging(loglevel: int | str | None = None, **kwargs: Any) -> None:
    import logging.config

    from django.conf import settings

    logging.config.dictConfig(settings.LOGGING)
    if loglevel:
        # `--loglevel` set the root level before (the launcher and the benchmarks wait for the INFO "ready." line);
        # AIOS_LOG_LEVEL may ask for more, never for less.
        root = logging.getLogger()
        wanted = loglevel if isinstance(loglevel, int) else logging.getLevelName(str(loglevel).upper())
        if isinstance(wanted, int):
            root.setLevel(min(root.level, wanted))


@worker_init.connect
def _worker_database(**kwargs: Any) -> None:
    # Production workers and beat stop at start-up, with one line naming DATABASE_URL, when it does not answer.
    settings_or_exit(serving=True)


@beat_init.connect
def _beat_database(**kwargs: Any) -> None:
    settings_or_exit(serving=True)


@worker_init.connect
def _worker_tracing(**kwargs: Any) -> None:
    from apps.core.telemetry import tracing

    tracing.configure("worker")


@beat_init.connect
def _beat_tracing(**kwargs: Any) -> None:
    from apps.core.telemetry import tracing

    tracing.configure("beat")


_heartbeat: Any = None


@worker_ready.connect
def _heartbeat_start(sender: Any = None, **kwargs: Any) -> None:
    # From the moment the worker consumes from the broker: `manage.py worker_health` reads it.
    global _heartbeat
    from django.conf import settings

    from apps.core.telemetry.health import Heartbeat

    node = getattr(sender, "hostname", None) or "unknown"
    queues = sorted(getattr(sender.app.amqp.queues, "consume_from", {}) or {}) if sender is not None else []
    _heartbeat = Heartbeat(
        node, interval=settings.AIOS_WORKER_HEARTBEAT_SECONDS, details={"pid": os.getpid(), "queues": queues}
    )
    _heartbeat.start()


@worker_shutdown.connect
def _heartbeat_stop(**kwargs: Any) -> None:
    from apps.core.telemetry import tracing

    if _heartbeat is not None:
        _heartbeat.stop()
    tracing.flush()


@worker_process_shutdown.connect
def _child_flush(**kwargs: Any) -> None:
    # A pool child ends without running exit handlers: send the spans it still buffers first.
    from apps.core.telemetry import tracing

    tracing.flush()


# A refused configuration stops `celery -A workers.celery ...` with one line, before Celery reads its settings.
# Last in the module: the settings package (aios_web/__init__.py) imports `app` from here.
settings_or_exit()
