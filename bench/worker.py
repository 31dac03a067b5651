"""Celery entry point for bench workers: `celery -A bench.worker worker ...`.

The same worker processes run the product's step tasks and the peer tasks, so both sides share the broker,
the pool, the Celery configuration (acks_late, prefetch 1) and the database driver.
"""

from __future__ import annotations

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aios_web.settings")
django.setup()  # bench.steps registers a step type, which needs the app registry

import bench.peer  # noqa: E402  (registers the peer tasks)
import bench.steps  # noqa: E402,F401  (registers the bench.cpu step type)
from workers.celery import app  # noqa: E402

__all__ = ["app"]
