"""Endpoint probe history: what a server reports about itself is kept as a row per stretch of identical
reports, against real development inference servers on loopback."""

from __future__ import annotations

import pytest

from apps.audit.models import AuditEvent
from apps.inference.models import EndpointObservation, ModelEndpoint
from apps.inference.selectors import endpoint_observations
from apps.inference.services import endpoint_probe

pytestmark = pytest.mark.django_db


def _probe(endpoint: ModelEndpoint, url: str) -> ModelEndpoint:
    ModelEndpoint.objects.filter(pk=endpoint.pk).update(url=url)
    endpoint.refresh_from_db()
    return endpoint_probe(actor=None, endpoint=endpoint)


def test_a_changed_report_starts_a_new_row_and_the_same_report_extends_the_newest(make_server):
    endpoint = ModelEndpoint.objects.create(name="cards", url="http://127.0.0.1:9")
    with make_server(model_id="acme/claims-7b", max_total_tokens=4096) as first_url:
        _probe(endpoint, first_url)
        _probe(endpoint, first_url)
        _probe(endpoint, first_url)
    [only] = endpoint_observations(endpoint)
    assert (only.model_id, only.max_total_tokens, only.probe_count) == ("acme/claims-7b", 4096, 3)
    assert only.last_seen_at > only.first_seen_at
    first_seen = only.first_seen_at

    # The server comes back with a larger context: same model, new limits, so a new stretch.
    with make_server(model_id="acme/claims-7b", max_total_tokens=8192) as second_url:
        _probe(endpoint, second_url)
    # A probe that fails observes nothing: the newest row stays as it was.
    failed = _probe(endpoint, "http://127.0.0.1:9")
    assert failed.probe_error
    with make_server(model_id="acme/claims-8b", max_total_tokens=8192) as third_url:
        _probe(endpoint, third_url)
        _probe(endpoint, third_url)

    history = endpoint_observations(endpoint)
    assert [(row.model_id, row.max_total_tokens, row.probe_count) for row in history] == [
        ("acme/claims-8b", 8192, 2),
        ("acme/claims-7b", 8192, 1),
        ("acme/claims-7b", 4096, 3),
    ]
    assert history[-1].first_seen_at == first_seen
    assert history[0].first_seen_at > history[1].last_seen_at
    # Every probe is audited, and says which row it wrote (none for the failed one).
    probes = list(AuditEvent.objects.filter(verb="model_endpoint.probed", target_id=str(endpoint.pk)).order_by("id"))
    written = [(event.data_dict["observation"], event.data_dict["new_observation"]) for event in probes]
    ids = [row.pk for row in reversed(history)]
    assert written == [
        (ids[0], True),
        (ids[0], False),
        (ids[0], False),
        (ids[1], True),
        (None, False),
        (ids[2], True),
        (ids[2], False),
    ]


def test_observations_belong_to_their_endpoint(make_server):
    one = ModelEndpoint.objects.create(name="one", url="http://127.0.0.1:9")
    two = ModelEndpoint.objects.create(name="two", url="http://127.0.0.1:9")
    with make_server(model_id="acme/shared") as url:
        _probe(one, url)
        _probe(two, url)
    assert [row.endpoint_id for row in endpoint_observations(one)] == [one.pk]
    assert EndpointObservation.objects.count() == 2
