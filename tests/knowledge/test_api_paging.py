"""L6 for the knowledge API: collections and a collection's documents (answered whole before) are paged like every
list, walk every row once, cap the limit, and show no collection of another team and no other collection's
documents."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from apps.accounts.services import team_create, user_create
from apps.knowledge.services import collection_create, document_upload
from tests.support.paging import assert_paging_refused, walk

pytestmark = pytest.mark.django_db


def _client(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_collections_and_their_documents_are_paged_and_only_visible_ones_listed(analyst, reviewer, team):
    names = ["kb-e", "kb-a", "kb-d", "kb-b", "kb-c"]
    collections = [collection_create(actor=analyst, name=name, title=name.upper(), team=team) for name in names]
    bill = user_create(username="bill", password="x-Unused-9", roles=["analyst"])
    billing = collection_create(
        actor=bill, name="kb-billing", title="Billing", team=team_create(name="Billing", members=[bill])
    )
    mine = [
        document_upload(actor=analyst, collection=collections[0], name=f"note-{n}.md", data=f"# Note {n}\n".encode())[0]
        for n in range(5)
    ]
    document_upload(actor=analyst, collection=collections[1], name="elsewhere.md", data=b"# Elsewhere\n")
    document_upload(actor=bill, collection=billing, name="billing.md", data=b"# Billing\n")
    client = _client(reviewer)

    assert walk(client, "/api/collections/", limit=2, key="name") == sorted(names)
    assert walk(_client(bill), "/api/collections/", limit=2, key="name") == ["kb-billing"]
    url = "/api/collections/kb-e/documents/"
    assert walk(client, url, limit=2) == [d.pk for d in sorted(mine, key=lambda d: (d.created_at, d.pk), reverse=True)]
    for address in ("/api/collections/", url):
        assert_paging_refused(client, address)
    assert client.get("/api/collections/kb-billing/documents/?limit=2").status_code == 404
