"""Permission-aware reads of knowledge collections and documents.

A person sees a collection when she holds `view_collection` on it (its team's members, its managers) or is an
admin; anything else is invisible (404). A run's workflow may search a collection when the rule in
apps.knowledge.rules says so; that is checked at run time, and at publish (`collection_use_problem`) for the
person who publishes.
"""

from __future__ import annotations

from django.db.models import Count, QuerySet
from django.http import Http404

from apps.accounts.models import User
from apps.core.permissions import restrict
from apps.knowledge.models import Collection, Document
from apps.knowledge.rules import (
    USE,
    VIEW,
    AnyUser,
    collections_usable_by_workflow,
    is_knowledge_admin,
    user_uses_collection,
)


def collection_list_for_user(user: AnyUser) -> QuerySet[Collection]:
    """The collections `user` may see, with their team and document counts."""
    queryset = Collection.objects.select_related("team", "endpoint").annotate(document_count=Count("documents"))
    if is_knowledge_admin(user):
        return queryset.order_by("name", "pk")
    return restrict(queryset, user, VIEW).order_by("name", "pk")


def collection_get_for_user(user: AnyUser, name: str) -> Collection:
    """The collection named `name` if `user` may see it; Http404 otherwise (whether or not it exists)."""
    queryset = Collection.objects.select_related("team", "endpoint", "created_by")
    collection = queryset.filter(name=name).first()
    if collection is None or not (
        is_knowledge_admin(user) or restrict(queryset, user, VIEW).filter(pk=collection.pk).exists()
    ):
        raise Http404("No such collection.")
    return collection


def document_list(collection: Collection) -> QuerySet[Document]:
    """A visible collection's documents, newest first, without their stored bytes."""
    return (
        Document.objects.filter(collection=collection)
        .defer("data")
        .select_related("uploaded_by")
        .order_by("-created_at", "-pk")
    )


def document_get(collection: Collection, document_id: int) -> Document:
    """One document of a visible collection; Http404 when it is not in it."""
    document = document_list(collection).filter(pk=document_id).first()
    if document is None:
        raise Http404("No such document.")
    return document


def collection_use_problem(user: User, name: str) -> str | None:
    """Why `user` may not name collection `name` in a step, or None when she may. A collection she may not
    even see reads as missing, as its pages do."""
    collection = Collection.objects.filter(name=name).first()
    if collection is None or not (
        is_knowledge_admin(user) or user.has_perm(VIEW, collection) or user_uses_collection(user, collection)
    ):
        return f'there is no knowledge collection "{name}"'
    if not user_uses_collection(user, collection):
        return f'the knowledge collection "{name}" is not one you may use'
    return None


def collection_choices_for(user: AnyUser) -> list[tuple[str, str]]:
    """(name, label) of the collections `user` may name in steps, for the builder's options."""
    queryset = Collection.objects.order_by("name")
    if not is_knowledge_admin(user):
        queryset = restrict(queryset, user, USE)
    return [(collection.name, f"{collection.title} ({collection.name})") for collection in queryset]


def collections_for_workflow(names: list[str], workflow_id: int | None) -> tuple[list[Collection], list[str]]:
    """The named collections that runs of workflow `workflow_id` may search, and a sentence for each name
    they may not (missing, or not shared with the workflow's team or owner)."""
    wanted = list(dict.fromkeys(names))
    existing = {c.name: c for c in Collection.objects.filter(name__in=wanted).select_related("endpoint")}
    allowed = set(
        collections_usable_by_workflow(Collection.objects.filter(name__in=wanted), workflow_id).values_list(
            "name", flat=True
        )
    )
    usable, problems = [], []
    for name in wanted:
        if name not in existing:
            problems.append(f'there is no knowledge collection "{name}"')
        elif name not in allowed:
            problems.append(f'this workflow may not read the knowledge collection "{name}"')
        else:
            usable.append(existing[name])
    return usable, problems


def collections_for_user_search(user: AnyUser, names: list[str]) -> list[Collection]:
    """The named collections `user` may search (the search page and API); Http404 for any she may not see,
    so a name she may not see is indistinguishable from a missing one."""
    found = []
    for name in dict.fromkeys(names):
        collection = collection_get_for_user(user, name)
        if not user_uses_collection(user, collection) and not user.has_perm(VIEW, collection):
            raise Http404("No such collection.")
        found.append(collection)
    return found
