"""Collections and documents by persona: who creates, uploads, changes and deletes; limits and wrong types;
the same file twice; deletion that removes passages and permissions; every change audited."""

from __future__ import annotations

import pytest
from guardian.models import GroupObjectPermission, UserObjectPermission

from apps.audit.models import AuditEvent
from apps.core.exceptions import Conflict, Forbidden, ValidationFailed
from apps.inference.models import ModelEndpoint
from apps.knowledge import limits, parsing
from apps.knowledge.models import Chunk, Collection, Document
from apps.knowledge.rules import user_manages_collection, user_uses_collection
from apps.knowledge.selectors import collection_list_for_user, collection_use_problem
from apps.knowledge.services import (
    collection_create,
    collection_delete,
    collection_manager_grant,
    collection_update,
    document_delete,
    document_upload,
)
from tests.knowledge.conftest import ingest_all

pytestmark = pytest.mark.django_db

NOTE = b"# Returns\n\nLamps can be returned within 30 days.\n"


def verbs(collection: Collection) -> list[str]:
    return list(
        AuditEvent.objects.filter(target_type="knowledge.collection", target_id=str(collection.pk))
        .order_by("stream_seq")
        .values_list("verb", flat=True)
    )


def test_analysts_create_for_their_team_the_others_may_not(analyst, reviewer, manager, outsider, team, admin_user_role):
    collection = collection_create(actor=analyst, name="kb", title="KB", team=team)
    assert user_manages_collection(analyst, collection) and user_uses_collection(reviewer, collection)
    assert not user_manages_collection(reviewer, collection)
    assert user_manages_collection(admin_user_role, collection)
    assert list(collection_list_for_user(reviewer)) == [collection]
    assert list(collection_list_for_user(manager)) == [] and list(collection_list_for_user(outsider)) == []
    for persona in (reviewer, manager, outsider):
        with pytest.raises(Forbidden):
            collection_create(actor=persona, name="other", title="Other", team=team)
    assert verbs(collection) == ["collection.created"]


def test_an_analyst_may_not_give_a_collection_to_another_team(analyst, outsider, team):
    from apps.accounts.services import team_create

    other = team_create(name="Marketing", members=[outsider])
    with pytest.raises(ValidationFailed) as refusal:
        collection_create(actor=analyst, name="kb", title="KB", team=other)
    assert "Marketing" in refusal.value.fields["team"][0]


@pytest.mark.parametrize(
    ("name", "field"),
    [("Has Spaces", "name"), ("UPPER", "name"), ("-dash", "name"), ("x" * 65, "name")],
)
def test_bad_names_are_refused(analyst, team, name, field):
    with pytest.raises(ValidationFailed) as refusal:
        collection_create(actor=analyst, name=name, title="KB", team=team)
    assert field in refusal.value.fields


def test_chunking_out_of_range_and_taken_names_are_refused(analyst, team, collection):
    with pytest.raises(ValidationFailed) as refusal:
        collection_create(actor=analyst, name="handbook", title="Again", team=team)
    assert "already" in refusal.value.fields["name"][0]
    with pytest.raises(ValidationFailed) as refusal:
        collection_create(actor=analyst, name="big", title="Big", team=team, chunk_tokens=5000)
    assert "32 to 512" in refusal.value.fields["chunk_tokens"][0]
    with pytest.raises(ValidationFailed) as refusal:
        collection_update(actor=analyst, collection=collection, chunk_overlap=150)
    assert "half a passage" in refusal.value.fields["chunk_overlap"][0]


def test_upload_by_persona_and_the_same_file_twice(analyst, reviewer, outsider, collection):
    document, created = document_upload(
        actor=analyst, collection=collection, name="returns.md", data=NOTE, content_type="text/markdown"
    )
    assert created and document.status == Document.Status.QUEUED and document.size == len(NOTE)
    again, created_again = document_upload(actor=analyst, collection=collection, name="copy.md", data=NOTE)
    assert again.pk == document.pk and not created_again
    for persona in (reviewer, outsider):
        with pytest.raises(Forbidden):
            document_upload(actor=persona, collection=collection, name="x.md", data=b"# X\n\ny")
    assert Document.objects.count() == 1
    assert verbs(collection) == ["collection.created", "document.uploaded"]


def test_wrong_types_and_too_large_files_are_refused_with_the_limit_and_nothing_is_stored(analyst, collection):
    cases = [
        ("photo.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, "image"),
        ("sheet.xlsx", b"PK\x03\x04" + b"\x00" * 100, "ZIP"),
        ("fake.pdf", b"just text, not a pdf", "not a PDF"),
        ("program.exe", b"MZ\x90\x00 binary", "upload a PDF, Word (.docx), HTML, Markdown"),
        ("empty.txt", b"", "empty"),
    ]
    for name, data, expected in cases:
        with pytest.raises(ValidationFailed) as refusal:
            document_upload(actor=analyst, collection=collection, name=name, data=data)
        assert expected in refusal.value.fields["file"][0], (name, refusal.value.fields)
    big = b"a" * (limits.MAX_UPLOAD_BYTES + 1)
    with pytest.raises(ValidationFailed) as refusal:
        document_upload(actor=analyst, collection=collection, name="big.txt", data=big)
    assert f"at most {parsing.MAX_DOCUMENT_BYTES // 2**20} MB" in refusal.value.fields["file"][0]
    assert Document.objects.count() == 0
    assert verbs(collection) == ["collection.created"]


def test_metadata_must_be_plain_names_and_values(analyst, collection):
    for metadata in (["a"], {"page": 3}, {"k": {"nested": 1}}, {"": "x"}):
        with pytest.raises(ValidationFailed):
            document_upload(actor=analyst, collection=collection, name="a.md", data=b"# A\n\nb", metadata=metadata)
    document, _ = document_upload(
        actor=analyst, collection=collection, name="a.md", data=b"# A\n\nb", metadata={"product": "lamp", "v": 2}
    )
    assert document.metadata == {"product": "lamp", "v": 2}


def test_deleting_a_document_removes_its_passages(analyst, reviewer, collection):
    document, _ = document_upload(actor=analyst, collection=collection, name="returns.md", data=NOTE)
    ingest_all(collection)
    assert Chunk.objects.filter(document=document).exists()
    with pytest.raises(Forbidden):
        document_delete(actor=reviewer, document=document)
    document_delete(actor=analyst, document=document)
    assert not Chunk.objects.exists() and not Document.objects.exists()
    assert verbs(collection)[-1] == "document.deleted"


def test_deleting_a_collection_removes_everything_and_its_permissions(analyst, reviewer, collection):
    document_upload(actor=analyst, collection=collection, name="returns.md", data=NOTE)
    ingest_all(collection)
    with pytest.raises(Forbidden):
        collection_delete(actor=reviewer, collection=collection)
    pk = collection.pk
    collection_delete(actor=analyst, collection=collection)
    assert not Collection.objects.exists() and not Document.objects.exists() and not Chunk.objects.exists()
    assert not UserObjectPermission.objects.filter(object_pk=str(pk), content_type__app_label="knowledge").exists()
    assert not GroupObjectPermission.objects.filter(object_pk=str(pk), content_type__app_label="knowledge").exists()
    event = AuditEvent.objects.filter(target_type="knowledge.collection", target_id=str(pk)).last()
    assert event.verb == "collection.deleted" and '"documents":1' in event.data
    assert collection_use_problem(analyst, "handbook") == 'there is no knowledge collection "handbook"'


def test_a_new_model_needs_re_embedding_once_there_are_passages(analyst, collection):
    endpoint = ModelEndpoint.objects.create(name="tei-768", url="http://127.0.0.1:9", kind=ModelEndpoint.Kind.TEI)
    document_upload(actor=analyst, collection=collection, name="returns.md", data=NOTE)
    ingest_all(collection)
    with pytest.raises(Conflict) as refusal:
        collection_update(actor=analyst, collection=collection, endpoint=endpoint)
    assert "confirm re-embedding" in refusal.value.message
    updated = collection_update(actor=analyst, collection=collection, endpoint=endpoint, reembed=True)
    assert updated.generation == 2 and updated.dimensions is None and "tei-768" in updated.embedding_model
    document = Document.objects.get()
    assert document.status == Document.Status.EMBEDDING and document.chunks_done == 0
    generator = ModelEndpoint.objects.create(name="llm", url="http://127.0.0.1:9", kind=ModelEndpoint.Kind.TGI)
    with pytest.raises(ValidationFailed) as refusal:
        collection_update(actor=analyst, collection=collection, endpoint=generator, reembed=True)
    assert "not an embeddings endpoint" in refusal.value.fields["endpoint"][0]
    event = AuditEvent.objects.filter(verb="collection.changed").last()
    assert '"reembedding_documents":1' in event.data and "tei-768" in event.data


def test_granting_management(analyst, reviewer, collection):
    collection_manager_grant(actor=analyst, collection=collection, person=reviewer)
    assert user_manages_collection(reviewer, collection)
    assert verbs(collection)[-1] == "collection.manager_added"


def test_publish_check_by_persona(analyst, reviewer, manager, outsider, admin_user_role, collection):
    assert collection_use_problem(analyst, "handbook") is None
    assert collection_use_problem(reviewer, "handbook") is None
    assert collection_use_problem(admin_user_role, "handbook") is None
    for persona in (manager, outsider):
        assert collection_use_problem(persona, "handbook") == 'there is no knowledge collection "handbook"'
    assert collection_use_problem(analyst, "nope") == 'there is no knowledge collection "nope"'
    from guardian.shortcuts import assign_perm

    assign_perm("knowledge.view_collection", manager, collection)
    assert collection_use_problem(manager, "handbook") == 'the knowledge collection "handbook" is not one you may use'
