"""The product's URLs plus B3's peer endpoint, for the bench process only (B3 sets ROOT_URLCONF to this)."""

from __future__ import annotations

from django.urls import path

from aios_web.urls import urlpatterns as product_urlpatterns
from bench.peer import peer_run_start

urlpatterns = [
    path("api/bench/peer/<slug:slug>/runs/", peer_run_start, name="bench-peer-run-start"),
    *product_urlpatterns,
]
