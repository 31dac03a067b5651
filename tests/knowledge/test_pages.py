"""The knowledge pages and API by persona: creating, uploading (limits shown, wrong types refused), the polled
documents table, settings with re-embedding, deletion with confirmation, and the search page's safe highlighting."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from rest_framework.test import APIClient

from apps.knowledge.models import Chunk, Collection, Document
from tests.knowledge.conftest import ingest_all

pytestmark = pytest.mark.django_db


def signed_in(client: Any, user: Any) -> Any:
    client.force_login(user)
    return client


def test_the_list_and_creating_a_collection(client, analyst, team, outsider):
    page = signed_in(client, analyst).get(reverse("knowledge:collections"))
    assert b"New collection" in page.content and b"No collections are shared with you yet" in page.content
    response = client.post(
        reverse("knowledge:collections"), {"name": "Bad Name", "title": "", "team": str(team.pk), "description": ""}
    )
    assert response.status_code == 400
    assert b"lower-case letters" in response.content and b'value="Bad Name"' in response.content
    response = client.post(
        reverse("knowledge:collections"), {"name": "faq", "title": "FAQ", "team": str(team.pk), "description": "x"}
    )
    assert response.status_code == 302 and response["Location"] == reverse("knowledge:detail", args=["faq"])
    outsider_page = signed_in(client, outsider).get(reverse("knowledge:collections"))
    assert b"New collection" not in outsider_page.content and b"faq" not in outsider_page.content
    assert (
        client.post(reverse("knowledge:collections"), {"name": "x", "title": "x", "team": str(team.pk)}).status_code
        == 403
    )


def test_uploading_through_the_page(client, analyst, reviewer, collection):
    page = signed_in(client, analyst).get(reverse("knowledge:detail", args=[collection.name]))
    assert b"at most 20 MB each" in page.content and b'accept="application/pdf' in page.content
    files = [
        SimpleUploadedFile("faq.md", b"# FAQ\n\nLamps ship in two days.", content_type="text/markdown"),
        SimpleUploadedFile("photo.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, content_type="image/png"),
    ]
    response = client.post(reverse("knowledge:upload", args=[collection.name]), {"files": files}, follow=True)
    text = response.content.decode()
    assert "Added faq.md." in text and "is an image" in text
    assert list(Document.objects.values_list("name", flat=True)) == ["faq.md"]
    assert 'hx-trigger="every 2s"' in text  # the table polls while the document is queued
    ingest_all(collection)
    table = client.get(reverse("knowledge:documents", args=[collection.name])).content.decode()
    assert "Ready" in table and "every 2s" not in table
    reviewer_client = signed_in(client.__class__(), reviewer)
    assert b"Upload documents" not in reviewer_client.get(reverse("knowledge:detail", args=[collection.name])).content
    refused = reviewer_client.post(reverse("knowledge:upload", args=[collection.name]), {"files": [files[0]]})
    assert refused.status_code == 403


def test_deleting_a_document_and_the_collection_with_confirmation(client, analyst, collection):
    from apps.knowledge.services import document_upload

    document, _ = document_upload(actor=analyst, collection=collection, name="a.md", data=b"# A\n\nText.")
    ingest_all(collection)
    signed_in(client, analyst)
    url = reverse("knowledge:document-delete", args=[collection.name, document.pk])
    assert b"Delete \xe2\x80\x9ca.md\xe2\x80\x9d?" in client.get(url).content
    assert client.post(url).status_code == 302 and not Chunk.objects.exists()
    url = reverse("knowledge:delete", args=[collection.name])
    wrong = client.post(url, {"confirm_name": "nope"})
    assert wrong.status_code == 400 and b"to confirm" in wrong.content and Collection.objects.exists()
    assert client.post(url, {"confirm_name": collection.name}).status_code == 302
    assert not Collection.objects.exists()


def test_settings_ask_to_re_embed_when_the_model_changes(client, analyst, collection):
    from apps.inference.models import ModelEndpoint
    from apps.knowledge.services import document_upload

    endpoint = ModelEndpoint.objects.create(name="tei-b", url="http://127.0.0.1:9", kind=ModelEndpoint.Kind.TEI)
    document_upload(actor=analyst, collection=collection, name="a.md", data=b"# A\n\nText.")
    ingest_all(collection)
    signed_in(client, analyst)
    url = reverse("knowledge:settings", args=[collection.name])
    form = {"title": "Handbook", "description": "", "chunk_tokens": "180", "chunk_overlap": "30"}
    response = client.post(url, {**form, "endpoint": str(endpoint.pk)})
    assert response.status_code == 400 and b"confirm re-embedding" in response.content
    collection.refresh_from_db()
    assert collection.endpoint_id is None
    response = client.post(url, {**form, "endpoint": str(endpoint.pk), "reembed": "1"})
    assert response.status_code == 302
    collection.refresh_from_db()
    assert collection.endpoint_id == endpoint.pk and collection.generation == 2
    assert Document.objects.get().status == "embedding"
    assert client.post(url, {**form, "chunk_tokens": "9999", "endpoint": str(endpoint.pk)}).status_code == 400
    response = client.post(reverse("knowledge:reindex", args=[collection.name]), {"rechunk": "1"})
    assert response.status_code == 302 and Document.objects.get().status == "queued"


def test_the_search_page_escapes_passages_and_marks_matches(client, analyst, collection):
    from apps.knowledge.services import document_upload

    document_upload(
        actor=analyst,
        collection=collection,
        name="x.txt",
        data=b"Refunds <script>alert(1)</script> arrive within ten days.",
        content_type="text/plain",
    )
    ingest_all(collection)
    response = signed_in(client, analyst).get(
        reverse("knowledge:search", args=[collection.name]), {"q": "refunds arrive", "mode": "fulltext"}
    )
    text = response.content.decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "<script>alert" not in text
    assert "<mark>Refunds</mark>" in text and "<mark>arrive</mark>" in text and "x.txt" in text
    empty = client.get(reverse("knowledge:search", args=[collection.name]), {"q": "zzqq", "mode": "fulltext"})
    assert b"Nothing matched" in empty.content


def api(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_api_writes_by_persona(analyst, reviewer, manager, outsider, team, admin_user_role):
    created = api(analyst).post("/api/collections/", {"name": "faq", "title": "FAQ", "team": team.slug}, format="json")
    assert created.status_code == 201 and created.json()["team"] == team.slug
    assert api(reviewer).post("/api/collections/", {"name": "x", "title": "X", "team": team.slug}).status_code == 403
    bad = api(analyst).post("/api/collections/", {"name": "faq", "title": "FAQ", "team": team.slug}, format="json")
    assert bad.status_code == 400 and "already" in bad.json()["fields"]["name"][0]
    upload = {"file": SimpleUploadedFile("a.md", b"# A\n\nText.", content_type="text/markdown")}
    assert api(reviewer).post("/api/collections/faq/documents/", upload, format="multipart").status_code == 403
    assert api(outsider).post("/api/collections/faq/documents/", upload, format="multipart").status_code == 404
    upload = {"file": SimpleUploadedFile("a.md", b"# A\n\nText.", content_type="text/markdown")}
    first = api(analyst).post("/api/collections/faq/documents/", upload, format="multipart")
    assert first.status_code == 201 and first.json()["status"] == "queued"
    again = api(analyst).post(
        "/api/collections/faq/documents/", {"file": SimpleUploadedFile("b.md", b"# A\n\nText.")}, format="multipart"
    )
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    wrong = api(analyst).post(
        "/api/collections/faq/documents/",
        {"file": SimpleUploadedFile("x.exe", b"MZ\x90binary", content_type="application/octet-stream")},
        format="multipart",
    )
    assert wrong.status_code == 400 and "upload a PDF" in wrong.json()["fields"]["file"][0]
    assert api(reviewer).patch("/api/collections/faq/", {"title": "New"}, format="json").status_code == 403
    assert api(manager).patch("/api/collections/faq/", {"title": "New"}, format="json").status_code == 404
    assert api(admin_user_role).patch("/api/collections/faq/", {"title": "New"}, format="json").json()["title"] == "New"
    assert api(reviewer).post("/api/collections/faq/reindex/").status_code == 403
    assert api(analyst).post("/api/collections/faq/reindex/").status_code == 202
    document_url = f"/api/collections/faq/documents/{first.json()['id']}/"
    assert api(reviewer).get(document_url).json()["name"] == "a.md"
    assert api(reviewer).delete(document_url).status_code == 403
    assert api(analyst).delete(document_url).status_code == 204
    assert api(reviewer).delete("/api/collections/faq/").status_code == 403
    assert api(analyst).delete("/api/collections/faq/").status_code == 204
    assert not Collection.objects.exists()


def test_api_search(small_kb, analyst, reviewer, outsider):
    url = f"/api/collections/{small_kb.name}/search/"
    body = api(reviewer).post(url, {"q": "webhook signature", "mode": "vector", "top_k": 2}, format="json").json()
    assert body["mode"] == "vector" and len(body["passages"]) == 2
    assert body["passages"][0]["document"] == "webhooks.md"
    assert api(analyst).get(url, {"q": "refund", "mode": "bogus"}).status_code == 400
    assert api(outsider).get(url, {"q": "refund"}).status_code == 404
