"""The product's URLs plus the peers' endpoints (B3's run start, B10's plain list), for the bench process only
(B3 and B10 set ROOT_URLCONF to this)."""

from __future__ import annotations

from django.urls import path

from aios_web.urls import urlpatterns as product_urlpatterns
from bench.b10 import peer_inbox
from bench.peer import peer_run_start

urlpatterns = [
    path("api/bench/peer/<slug:slug>/runs/", peer_run_start, name="bench-peer-run-start"),
    path("bench/b10/inbox/", peer_inbox, name="bench-b10-inbox"),
    *product_urlpatterns,
]
