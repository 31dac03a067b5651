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
app.conf.task_routes = {"runs.execute_step": {"queue": "engine"}}
app.conf.beat_schedule = {}
app.autodiscover_tasks(["apps.runs"])
