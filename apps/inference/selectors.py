"""Reads about the configured model server."""

from __future__ import annotations

import time

from django.conf import settings

from apps.inference import client
from apps.inference.models import EndpointObservation, ModelEndpoint

# What AIOS's development inference server (`devserver/`, a process of its own) reports as /info's
# `docker_label`. The product recognises the server by this word on the wire and never imports it;
# tests/inference/test_selectors.py holds both sides to the same word.
DEVELOPMENT_SERVER_LABEL = "aios-devserver"

_INFO_TTL_SECONDS = 60.0
_cache: dict[str, tuple[float, bool]] = {}


def inference_server_is_development() -> bool:
    """Whether the configured server is AIOS's development inference server (its /info says so).

    Asked at most once a minute per process, with a short timeout: a page must never wait on a model
    server, and an unreachable one is simply not labelled.
    """
    url = settings.AIOS_INFERENCE_URL
    now = time.monotonic()
    cached = _cache.get(url)
    if cached and now - cached[0] < _INFO_TTL_SECONDS:
        return cached[1]
    try:
        info = client.server_info(url, token=settings.AIOS_INFERENCE_TOKEN or None, timeout=1)
        is_development = info.get("docker_label") == DEVELOPMENT_SERVER_LABEL
    except client.InferenceError:
        is_development = False
    _cache[url] = (now, is_development)
    return is_development


def endpoint_names_for_steps() -> list[str]:
    """The names LLM steps may give as their model: enabled text-generation endpoints (not embeddings
    servers), by name. Analysts may read this list (the names their steps use); it holds no URLs or tokens."""
    from apps.inference.models import ModelEndpoint

    return list(
        ModelEndpoint.objects.exclude(kind=ModelEndpoint.Kind.TEI)
        .filter(enabled=True)
        .order_by("name")
        .values_list("name", flat=True)
    )


def endpoint_observations(endpoint: ModelEndpoint) -> list[EndpointObservation]:
    """What the endpoint's server has reported about itself, newest first: one row per model, revision,
    server and limits in a row of probes (the revision history a model card shows). The caller has already
    checked that the person may see the endpoint."""
    return list(EndpointObservation.objects.filter(endpoint=endpoint).order_by("-first_seen_at", "-id"))
