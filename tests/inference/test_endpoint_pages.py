"""Model endpoint management: the admin pages, the probe against a real server, encrypted tokens, audit,
refusals for everyone else, and the in-flight limit holding across processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from decimal import Decimal

import pytest
from django.conf import settings
from django.test import Client

from apps.audit.models import AuditEvent
from apps.inference.models import ModelEndpoint

SECRET = "tok-secret-3b9e7d"


def form_data(**overrides: object) -> dict[str, object]:
    data: dict[str, object] = {
        "name": "gpu-small",
        "kind": "tgi",
        "url": settings.AIOS_INFERENCE_URL,
        "served_model": "",
        "price_input_per_1k": "0.25",
        "price_output_per_1k": "0.75",
        "max_in_flight": "16",
        "timeout_seconds": "30",
        "enabled": "on",
        "is_default": "on",
        "token": SECRET,
    }
    data.update(overrides)
    return data


@pytest.fixture
def admin_client(admin_user_role) -> Client:
    client = Client()
    client.force_login(admin_user_role)
    return client


@pytest.mark.django_db
def test_an_admin_adds_an_endpoint_and_the_probe_records_what_the_server_serves(admin_client):
    response = admin_client.post("/models/endpoints/new/", form_data())
    assert response.status_code == 302, response.content.decode()[:2000]
    endpoint = ModelEndpoint.objects.get(name="gpu-small")
    # The development server's /info: model id, revision and limits.
    assert endpoint.model_id == "aios/dev-model" and endpoint.probe_error == ""
    assert endpoint.max_input_tokens == 8191 and endpoint.max_total_tokens == 8192
    assert endpoint.server_label == "aios-devserver" and endpoint.probed_at is not None
    assert endpoint.price_input_per_1k == Decimal("0.25") and endpoint.is_default
    # The token is encrypted at rest and never rendered or audited.
    assert endpoint.token == SECRET and SECRET not in endpoint.token_encrypted
    listing = admin_client.get("/models/endpoints/")
    edit = admin_client.get(f"/models/endpoints/{endpoint.pk}/")
    assert listing.status_code == 200 and b"aios/dev-model" in listing.content
    assert SECRET.encode() not in listing.content and SECRET.encode() not in edit.content
    assert b"A token is stored." in edit.content
    events = AuditEvent.objects.filter(target_type="inference.modelendpoint", target_id=str(endpoint.pk))
    assert list(events.order_by("id").values_list("verb", flat=True)) == [
        "model_endpoint.created",
        "model_endpoint.probed",
    ]
    assert all(SECRET not in event.data for event in events)
    assert json.loads(events.first().data)["fields"]["has_token"] is True


@pytest.mark.django_db
def test_changing_an_endpoint_keeps_the_token_unless_replaced_and_audits_the_change(admin_client):
    admin_client.post("/models/endpoints/new/", form_data())
    endpoint = ModelEndpoint.objects.get(name="gpu-small")
    response = admin_client.post(f"/models/endpoints/{endpoint.pk}/", form_data(token="", max_in_flight="4"))
    assert response.status_code == 302
    endpoint.refresh_from_db()
    assert endpoint.max_in_flight == 4 and endpoint.token == SECRET
    changed = AuditEvent.objects.filter(verb="model_endpoint.changed", target_id=str(endpoint.pk)).get()
    assert json.loads(changed.data)["fields"] == {"max_in_flight": 4}
    # The name is fixed once created (steps refer to it): a changed name in the post is ignored.
    admin_client.post(
        f"/models/endpoints/{endpoint.pk}/", form_data(name="renamed", token="other-secret", max_in_flight="4")
    )
    endpoint.refresh_from_db()
    assert endpoint.name == "gpu-small" and endpoint.token == "other-secret"
    replaced = AuditEvent.objects.filter(verb="model_endpoint.changed", target_id=str(endpoint.pk)).last()
    assert json.loads(replaced.data)["fields"] == {"token_changed": True}
    admin_client.post(f"/models/endpoints/{endpoint.pk}/", form_data(token="", remove_token="on"))
    endpoint.refresh_from_db()
    assert endpoint.token == "" and not endpoint.has_token
    assert endpoint.history.count() >= 4  # every change kept in the history table


@pytest.mark.django_db
def test_a_stored_token_never_follows_the_url_to_another_server(admin_client, admin_user_role):
    """Review M8: re-pointing an endpoint at another scheme, host or port with the token field blank does not
    send the stored token there. The form asks for the token again; the service clears it for any other caller;
    both are audited; a change within the same origin keeps it."""
    from apps.inference.services import endpoint_save
    from tests.connectors.servers import ApiServer

    admin_client.post("/models/endpoints/new/", form_data())
    endpoint = ModelEndpoint.objects.get(name="gpu-small")
    assert endpoint.token == SECRET
    with ApiServer() as collector:
        refused = admin_client.post(f"/models/endpoints/{endpoint.pk}/", form_data(token="", url=collector.url))
        assert refused.status_code == 400
        assert "Enter the token again" in refused.content.decode()
        endpoint.refresh_from_db()
        assert endpoint.url == settings.AIOS_INFERENCE_URL and endpoint.token == SECRET
        assert collector.requests == []  # nothing was sent to the new server
        # Removing the token moves the endpoint; the probe goes out without the old token.
        moved = admin_client.post(
            f"/models/endpoints/{endpoint.pk}/", form_data(token="", remove_token="on", url=collector.url)
        )
        assert moved.status_code == 302
        endpoint.refresh_from_db()
        assert endpoint.url == collector.url and not endpoint.has_token
        assert collector.requests and all("authorization" not in r.headers for r in collector.requests)

    # The service, for callers without the form: a new origin and no new token clears the stored one.
    endpoint.token, endpoint.url = SECRET, settings.AIOS_INFERENCE_URL
    endpoint.save()
    endpoint.url = settings.AIOS_INFERENCE_URL.rstrip("/") + "/v1"  # same scheme, host and port
    endpoint_save(actor=admin_user_role, endpoint=endpoint)
    endpoint.refresh_from_db()
    assert endpoint.token == SECRET
    endpoint.url = "https://collector.example"
    endpoint_save(actor=admin_user_role, endpoint=endpoint)
    endpoint.refresh_from_db()
    assert endpoint.token == "" and not endpoint.has_token
    cleared = AuditEvent.objects.filter(verb="model_endpoint.changed", target_id=str(endpoint.pk)).last()
    fields = json.loads(cleared.data)["fields"]
    assert fields["token_cleared"] == "the URL's origin changed" and fields["has_token"] is False
    assert SECRET not in cleared.data


@pytest.mark.django_db
def test_bad_input_is_refused_field_by_field_and_saves_nothing(admin_client):
    response = admin_client.post(
        "/models/endpoints/new/",
        form_data(name="bad name!", url="not a url", price_input_per_1k="-1", max_in_flight="0", timeout_seconds="0"),
    )
    assert response.status_code == 400
    page = response.content.decode()
    for field in ("name", "url", "price_input_per_1k", "max_in_flight", "timeout_seconds"):
        assert f'id="id_{field}"' in page
    assert page.count('class="field-error"') >= 5
    assert not ModelEndpoint.objects.exists()


@pytest.mark.django_db
def test_credentials_in_the_url_and_an_embeddings_default_are_refused(admin_client):
    response = admin_client.post("/models/endpoints/new/", form_data(url="http://user:pw@127.0.0.1:9/?key=x"))
    assert response.status_code == 400 and b"no user name, password, query or fragment" in response.content
    response = admin_client.post("/models/endpoints/new/", form_data(name="embed", kind="tei"))
    assert response.status_code == 400 and b"an embeddings server cannot be it" in response.content
    assert not ModelEndpoint.objects.exists()


@pytest.mark.django_db
def test_analysts_read_the_list_of_names_but_manage_nothing(analyst):
    ModelEndpoint.objects.create(name="gpu-large", url="http://127.0.0.1:9")
    client = Client()
    client.force_login(analyst)
    page = client.get("/models/endpoints/")
    assert page.status_code == 200 and b"gpu-large" in page.content
    assert b"Add an endpoint" not in page.content and b"Probe" not in page.content
    # Each endpoint links its model card (what it serves, its revisions, who uses it, its costs).
    assert b'href="/dashboards/endpoints/gpu-large/"' in page.content


@pytest.mark.django_db
def test_an_unreachable_server_is_recorded_not_raised(admin_client):
    response = admin_client.post(
        "/models/endpoints/new/", form_data(name="gone", url="http://127.0.0.1:9"), follow=True
    )
    assert response.status_code == 200
    endpoint = ModelEndpoint.objects.get(name="gone")
    assert "connection refused" in endpoint.probe_error
    assert b"did not answer" in response.content


@pytest.mark.django_db
def test_disable_and_enable_and_the_default_cannot_be_disabled(admin_client):
    admin_client.post("/models/endpoints/new/", form_data())
    admin_client.post("/models/endpoints/new/", form_data(name="gpu-large", is_default=""))
    default, large = ModelEndpoint.objects.get(name="gpu-small"), ModelEndpoint.objects.get(name="gpu-large")
    page = admin_client.post(f"/models/endpoints/{default.pk}/toggle/", follow=True)
    assert b"is the default endpoint" in page.content
    default.refresh_from_db()
    assert default.enabled
    admin_client.post(f"/models/endpoints/{large.pk}/toggle/")
    large.refresh_from_db()
    assert not large.enabled
    assert AuditEvent.objects.filter(verb="model_endpoint.disabled", target_id=str(large.pk)).exists()
    admin_client.post(f"/models/endpoints/{large.pk}/toggle/")
    large.refresh_from_db()
    assert large.enabled


@pytest.mark.django_db
@pytest.mark.parametrize("persona", ["analyst", "reviewer", "manager", "outsider"])
def test_only_admins_manage_endpoints(request, persona):
    user = request.getfixturevalue(persona)
    endpoint = ModelEndpoint.objects.create(name="x", url="http://127.0.0.1:9")
    client = Client()
    client.force_login(user)
    assert client.post("/models/endpoints/new/", form_data()).status_code == 403
    assert client.post(f"/models/endpoints/{endpoint.pk}/probe/").status_code == 403
    assert client.post(f"/models/endpoints/{endpoint.pk}/toggle/").status_code == 403
    assert ModelEndpoint.objects.count() == 1 and ModelEndpoint.objects.get().enabled


HOLDER = textwrap.dedent(
    """
    import asyncio, json, os, sys, time
    import django
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aios_web.settings_test")
    django.setup()
    from apps.inference.limits import in_flight_count, in_flight_slot

    name, start_at = sys.argv[1], float(sys.argv[2])

    async def hold():
        async with in_flight_slot(name, 3, wait_seconds=60):
            peak = await in_flight_count(name)
            await asyncio.sleep(0.4)
            return peak

    async def main():
        # Both processes start together, so a limit kept per process would show up as six slots held.
        await asyncio.sleep(max(0.0, start_at - time.time()))
        return await asyncio.gather(*(hold() for _ in range(6)))

    print(json.dumps(asyncio.run(main())))
    """
)


def test_the_in_flight_limit_holds_across_processes(tmp_path):
    """Two processes, six callers each, one endpoint limited to three, starting at the same moment: never
    more than three slots held at once across both (a per-process limit would let six in)."""
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    name = f"limit-test-{tmp_path.name}"
    start_at = time.time() + 4  # both interpreters are up and waiting by then
    processes = [
        subprocess.Popen(
            [sys.executable, str(script), name, str(start_at)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=settings.BASE_DIR,
            env={**os.environ, "PYTHONPATH": str(settings.BASE_DIR)},
        )
        for _ in range(2)
    ]
    peaks = []
    for process in processes:
        out, _ = process.communicate(timeout=90)
        assert process.returncode == 0
        peaks += json.loads(out.strip().splitlines()[-1])
    assert len(peaks) == 12
    assert max(peaks) <= 3  # what each holder saw while holding its slot
    assert max(peaks) == 3  # and the limit was reached, so the check was exercised
