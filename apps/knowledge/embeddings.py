"""Embedding passages and queries for a collection, through the inference client (`apps.inference.client`).

A collection names a TEI `ModelEndpoint`, or none: then the configured embeddings server answers
(AIOS_KNOWLEDGE_EMBEDDINGS_URL, which defaults to AIOS_INFERENCE_URL: the development server's `/embed`, with
the real all-MiniLM-L6-v2 when it is installed).
"""

from __future__ import annotations

from collections.abc import Sequence

from django.conf import settings

from apps.core.exceptions import ApplicationError
from apps.inference import client
from apps.inference.models import ModelEndpoint
from apps.knowledge.models import INDEXED_DIMENSIONS, Collection


class EmbeddingSizeError(ApplicationError):
    """The model's vectors have a size the database does not index."""


def endpoint_for(collection: Collection, *, http_client: object | None = None) -> client.Endpoint:
    """Where `collection`'s embeddings come from, as the client's `Endpoint` (token decrypted here)."""
    endpoint: ModelEndpoint | None = collection.endpoint
    if endpoint is None:
        return client.Endpoint(
            base_url=settings.AIOS_KNOWLEDGE_EMBEDDINGS_URL,
            token=settings.AIOS_INFERENCE_TOKEN or None,
            timeout=settings.AIOS_INFERENCE_TIMEOUT,
            http_client=http_client,  # type: ignore[arg-type]
        )
    if not endpoint.enabled:
        raise ApplicationError(f'The embeddings endpoint "{endpoint.name}" is disabled.')
    return client.Endpoint(
        base_url=endpoint.url,
        token=endpoint.token or None,
        timeout=endpoint.timeout_seconds,
        http_client=http_client,  # type: ignore[arg-type]
    )


def model_label_for(endpoint: ModelEndpoint | None) -> str:
    """What the collection records as its embeddings model: the endpoint's probed model, or the default."""
    if endpoint is None:
        return f"default embeddings server ({client.redact_url(settings.AIOS_KNOWLEDGE_EMBEDDINGS_URL)})"
    return f"{endpoint.name}: {endpoint.model_label}"


def check_dimensions(vectors: Sequence[Sequence[float]]) -> int:
    """The vectors' common size; refuses sizes the database has no index for, and ragged replies."""
    sizes = {len(vector) for vector in vectors}
    if len(sizes) != 1:
        raise EmbeddingSizeError(f"The embeddings server returned vectors of different sizes ({sorted(sizes)}).")
    size = sizes.pop()
    if size not in INDEXED_DIMENSIONS:
        indexed = ", ".join(str(n) for n in INDEXED_DIMENSIONS)
        raise EmbeddingSizeError(
            f"The embeddings model returns vectors of {size} dimensions; AIOS indexes {indexed} dimensions."
        )
    return size


async def aembed_texts(endpoint: client.Endpoint, texts: Sequence[str]) -> list[list[float]]:
    """Unit-length embeddings of `texts`, one per text (cosine distance then equals 1 - dot product)."""
    return await client.aembed(endpoint, list(texts), normalize=True)
