"""NUL characters in a request answer 400 before any view runs, and change nothing (PostgreSQL cannot store
them, so without this they would surface as 500s); uploaded file contents are not looked at."""

from __future__ import annotations

import pytest
from django.test import Client
from rest_framework.test import APIClient

from apps.audit.models import AuditEvent

NUL_MESSAGE = "contains a NUL character"


@pytest.mark.parametrize("path", ["/inbox/?queue=%00", "/inbox/?workflow=a%00b", "/api/approvals/?state=%00"])
def test_a_nul_in_the_query_string_is_a_400(reviewer, path):
    client = Client()
    client.force_login(reviewer)
    response = client.get(path)
    assert response.status_code == 400 and NUL_MESSAGE in response.content.decode()


def test_a_nul_in_a_form_field_or_json_body_is_a_400_and_nothing_changes(reviewer):
    client = Client()
    client.force_login(reviewer)
    before = AuditEvent.objects.exclude(verb__startswith="request.").count()
    form = client.post("/inbox/away/", {"starts_on": "2030-01-01", "ends_on": "2030-01-02", "note": "away\x00"})
    assert form.status_code == 400 and NUL_MESSAGE in form.content.decode()
    api = APIClient()
    api.force_authenticate(reviewer)
    body = '{"starts_on": "2030-01-01", "ends_on": "2030-01-02", "delegate": "rita", "note": "a\\u0000b"}'
    answer = api.post("/api/absences/", body, content_type="application/json")
    assert answer.status_code == 400 and NUL_MESSAGE in answer.json()["detail"]
    assert AuditEvent.objects.exclude(verb__startswith="request.").count() == before


def test_uploaded_file_contents_are_not_looked_at(analyst):
    client = Client()
    client.force_login(analyst)
    upload = client.post("/api/documents/", {"file": _file(b"%PDF-1.4\n\x00\x00 not really a pdf")})
    assert NUL_MESSAGE not in upload.content.decode()


def _file(data: bytes):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile("claim.pdf", data, content_type="application/pdf")
