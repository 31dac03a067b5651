from __future__ import annotations

from django.apps import AppConfig


class KnowledgeConfig(AppConfig):
    """Knowledge collections: documents parsed, chunked and embedded into pgvector, and permission-aware search
    over them for `rag.retrieve` and the search page."""

    name = "apps.knowledge"
    label = "knowledge"
