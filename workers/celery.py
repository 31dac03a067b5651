"""The Celery application: configuration from Django settings, queues, routing and the beat schedule."""

from __future__ import annotations

import os

from celery import Celery
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aios_web.settings")

app = Celery("aios")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = [Queue(name) for name in ("engine", "inference", "connectors", "default")]
# Step tasks are sent to the queue their step type names (see apps.steps.base.StepType.queue).
# The sweeper goes to "default", not behind a backlog of steps on "engine": it is what repairs that backlog.
app.conf.task_routes = {"runs.execute_step": {"queue": "engine"}, "runs.sweep": {"queue": "default"}}
app.autodiscover_tasks(["apps.runs"])


@app.on_after_configure.connect
def _beat_schedule(sender: Celery, **kwargs: object) -> None:
    from django.conf import settings

    # The sweeper repairs what the broker lost; a sweep that expired unconsumed is simply replaced by the
    # next one, so messages never pile up while workers are down.
    interval = settings.AIOS_SWEEP_INTERVAL_SECONDS
    sender.add_periodic_task(interval, sender.signature("runs.sweep", expires=interval * 2), name="sweep")
