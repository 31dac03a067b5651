"""Searching collections: by meaning (vector), by words (full text), or both fused (hybrid).

- vector: the query is embedded by each collection's embeddings server and compared by cosine distance through
  the partial HNSW index of its size (`embedding::vector(n)` where `dimensions = n`, see the models). The
  index is approximate: `hnsw.ef_search` is raised to 100 (or twice top k) for recall, and pgvector's iterative
  scan keeps reading the graph when the collection and metadata filters leave fewer than k rows.
  score = cosine similarity (1 − distance), for unit vectors in [−1, 1].
- fulltext: `websearch_to_tsquery` (quotes for phrases, `-word` to exclude) on English stems, ranked by
  `ts_rank_cd` normalised to [0, 1) (rank / (rank + 1)); passages holding every word rank first, then those
  holding some (a question rarely shares all its words with the passage that answers it).
- hybrid: reciprocal rank fusion of the two lists (k = 60), each read 4 × top k deep; score = the fused value
  divided by its maximum (first in both lists), so 1.0 means first in both.

`min_score` applies to the mode's score. `filters` match the passages' metadata exactly (document, page,
section and the document's own metadata). Permission checks happen before: callers pass only collections the
person or the run's workflow may search (apps.knowledge.selectors).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from asgiref.sync import async_to_sync
from django.db import connection, transaction

from apps.knowledge.embeddings import aembed_texts, endpoint_for
from apps.knowledge.models import TEXT_SEARCH_CONFIG, Chunk, Collection

Mode = Literal["vector", "fulltext", "hybrid"]
MODES: tuple[str, ...] = ("vector", "fulltext", "hybrid")
RRF_K = 60
HYBRID_DEPTH = 4
MAX_TOP_K = 50
EF_SEARCH_FLOOR = 100
MAX_QUERY_CHARS = 2000


@dataclass(frozen=True)
class SearchOptions:
    """What to search for and how; `filters` maps metadata names to the values passages must have."""

    query: str
    top_k: int = 5
    min_score: float | None = None
    filters: dict[str, Any] = field(default_factory=dict)
    mode: str = "hybrid"

    def checked(self) -> SearchOptions:
        """These options, or ValueError with a readable reason."""
        if self.mode not in MODES:
            raise ValueError(f'mode must be one of {", ".join(MODES)}, not "{self.mode}"')
        if not 1 <= self.top_k <= MAX_TOP_K:
            raise ValueError(f"top k must be 1 to {MAX_TOP_K}")
        if not self.query.strip():
            raise ValueError("the query is empty")
        if len(self.query) > MAX_QUERY_CHARS:
            raise ValueError(f"the query is longer than {MAX_QUERY_CHARS} characters")
        return self


def _vector_literal(vector: Sequence[float]) -> str:
    return "[" + ",".join(repr(float(x)) for x in vector) + "]"


def _scope(collections: Sequence[Collection], *, current_generation: bool) -> tuple[str, list[Any]]:
    """SQL matching the passages of `collections` (of their current embedding generation, for vectors)."""
    if current_generation:
        parts = ["(c.collection_id = %s AND c.generation = %s)"] * len(collections)
        params: list[Any] = [value for collection in collections for value in (collection.pk, collection.generation)]
        return "(" + " OR ".join(parts) + ")", params
    return "c.collection_id = ANY(%s)", [[collection.pk for collection in collections]]


def _filter_sql(filters: dict[str, Any]) -> tuple[str, list[Any]]:
    if not filters:
        return "", []
    return " AND c.metadata @> %s::jsonb", [json.dumps(filters)]


def _vector_hits(
    collections: Sequence[Collection], vector: Sequence[float], depth: int, filters: dict[str, Any]
) -> list[tuple[int, float]]:
    """(chunk id, cosine similarity), best first, for collections whose vectors have `len(vector)` dimensions."""
    size = len(vector)
    scope, params = _scope(collections, current_generation=True)
    where, filter_params = _filter_sql(filters)
    literal = _vector_literal(vector)
    sql = (
        f"SELECT c.id, (c.embedding::vector({size})) <=> %s::vector({size}) AS distance "
        f"FROM knowledge_chunk c WHERE c.dimensions = {size} AND {scope}{where} "
        f"ORDER BY (c.embedding::vector({size})) <=> %s::vector({size}) LIMIT %s"
    )
    with transaction.atomic(), connection.cursor() as cursor:
        # SET LOCAL: for this transaction only, so a pooled connection (PgBouncer) is left as it was found.
        cursor.execute("SELECT set_config('hnsw.ef_search', %s, true)", [str(max(EF_SEARCH_FLOOR, 2 * depth))])
        cursor.execute("SELECT set_config('hnsw.iterative_scan', 'strict_order', true)")
        cursor.execute(sql, [literal, *params, *filter_params, literal, depth])
        return [(int(chunk_id), 1.0 - float(distance)) for chunk_id, distance in cursor.fetchall()]


def _fulltext_hits(
    collections: Sequence[Collection], query: str, depth: int, filters: dict[str, Any]
) -> list[tuple[int, float]]:
    """(chunk id, normalised rank), best first: passages with every word of the query, then with some."""
    scope, params = _scope(collections, current_generation=False)
    where, filter_params = _filter_sql(filters)
    sql = f"""
        WITH q AS MATERIALIZED (
            SELECT all_words,
                   CASE WHEN strpos(all_words::text, '!') > 0 THEN all_words
                        ELSE replace(all_words::text, ' & ', ' | ')::tsquery END AS any_word
            FROM websearch_to_tsquery('{TEXT_SEARCH_CONFIG}', %s) AS all_words
        )
        SELECT c.id, ts_rank_cd(c.search_vector, q.any_word, 32) AS rank
        FROM knowledge_chunk c, q
        WHERE {scope}{where} AND c.search_vector @@ q.any_word
        ORDER BY (c.search_vector @@ q.all_words) DESC, rank DESC, c.id
        LIMIT %s
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, [query, *params, *filter_params, depth])
        return [(int(chunk_id), float(rank)) for chunk_id, rank in cursor.fetchall()]


def _fuse(lists: Sequence[Sequence[tuple[int, float]]]) -> list[tuple[int, float]]:
    """Reciprocal rank fusion, normalised so that first in every list scores 1.0."""
    fused: dict[int, float] = defaultdict(float)
    for hits in lists:
        for rank, (chunk_id, _) in enumerate(hits, start=1):
            fused[chunk_id] += 1.0 / (RRF_K + rank)
    best = len(lists) / (RRF_K + 1)
    return sorted(((chunk_id, score / best) for chunk_id, score in fused.items()), key=lambda item: -item[1])


QueryVectors = dict[int | None, list[float]]  # by collection endpoint id (None: the default server)


def _vector_groups(
    collections: Sequence[Collection], vectors: QueryVectors
) -> list[tuple[list[Collection], list[float]]]:
    groups: dict[tuple[int | None, int], list[Collection]] = defaultdict(list)
    for collection in collections:
        vector = vectors.get(collection.endpoint_id)
        # A collection whose vectors are not in yet, or of another size than its server now answers (a model
        # swapped under the endpoint, before re-embedding), has nothing this query can be compared with.
        if vector is not None and collection.dimensions == len(vector):
            groups[(collection.endpoint_id, len(vector))].append(collection)
    return [(members, vectors[key[0]]) for key, members in groups.items()]


def search_with_vectors(
    collections: Sequence[Collection], options: SearchOptions, vectors: QueryVectors
) -> list[dict[str, Any]]:
    """The search itself, once the query is embedded (database work only; see the module docstring)."""
    options = options.checked()
    if not collections:
        return []
    depth = options.top_k * (HYBRID_DEPTH if options.mode == "hybrid" else 1)
    details: dict[int, dict[str, float]] = defaultdict(dict)
    lists = []
    if options.mode in ("vector", "hybrid"):
        vector_hits: list[tuple[int, float]] = []
        for members, vector in _vector_groups(collections, vectors):
            vector_hits += _vector_hits(members, vector, depth, options.filters)
        vector_hits.sort(key=lambda item: -item[1])
        vector_hits = vector_hits[:depth]
        for chunk_id, score in vector_hits:
            details[chunk_id]["vector_score"] = round(score, 4)
        lists.append(vector_hits)
    if options.mode in ("fulltext", "hybrid"):
        text_hits = _fulltext_hits(collections, options.query, depth, options.filters)
        for chunk_id, score in text_hits:
            details[chunk_id]["text_score"] = round(score, 4)
        lists.append(text_hits)
    ranked = _fuse(lists) if options.mode == "hybrid" else lists[0]
    if options.min_score is not None:
        ranked = [(chunk_id, score) for chunk_id, score in ranked if score >= options.min_score]
    ranked = ranked[: options.top_k]
    return _passages(ranked, collections, details)


def _passages(
    ranked: Sequence[tuple[int, float]], collections: Sequence[Collection], details: dict[int, dict[str, float]]
) -> list[dict[str, Any]]:
    names = {collection.pk: collection.name for collection in collections}
    rows = {
        chunk.pk: chunk
        for chunk in Chunk.objects.filter(pk__in=[chunk_id for chunk_id, _ in ranked])
        .select_related("document")
        .only("pk", "text", "heading", "page", "collection_id", "document__id", "document__name")
    }
    passages = []
    for chunk_id, score in ranked:
        chunk = rows.get(chunk_id)
        if chunk is None:
            continue  # deleted between the two reads
        passages.append(
            {
                "chunk_id": chunk.pk,
                "text": chunk.text,
                "document": chunk.document.name,
                "document_id": chunk.document.pk,
                "page": chunk.page,
                "heading": chunk.heading,
                "score": round(score, 4),
                "collection": names.get(chunk.collection_id, ""),
                **details.get(chunk_id, {}),
            }
        )
    return passages


def _embedding_sources(collections: Sequence[Collection]) -> dict[int | None, Collection]:
    """One collection per embeddings endpoint: the query is embedded once per server."""
    sources: dict[int | None, Collection] = {}
    for collection in collections:
        sources.setdefault(collection.endpoint_id, collection)
    return sources


async def aquery_vectors(
    collections: Sequence[Collection], options: SearchOptions, *, http_client: Any = None
) -> QueryVectors:
    """The query's embedding from each embeddings server the collections use (none for full text)."""
    if options.mode == "fulltext":
        return {}
    vectors: QueryVectors = {}
    for endpoint_id, collection in _embedding_sources(collections).items():
        [vector] = await aembed_texts(endpoint_for(collection, http_client=http_client), [options.query])
        vectors[endpoint_id] = vector
    return vectors


def collections_search(
    collections: Sequence[Collection],
    query: str,
    *,
    top_k: int = 5,
    min_score: float | None = None,
    filters: dict[str, Any] | None = None,
    mode: str = "hybrid",
) -> list[dict[str, Any]]:
    """Search `collections` (already permitted to the caller) from synchronous code: passages with chunk id,
    text, document name and id, page, heading, score and collection, best first. Raises ValueError for bad
    options and InferenceError when the embeddings server fails."""
    options = SearchOptions(query=query, top_k=top_k, min_score=min_score, filters=filters or {}, mode=mode).checked()
    vectors = async_to_sync(aquery_vectors)(list(collections), options) if collections else {}
    return search_with_vectors(collections, options, vectors)


_WORD = re.compile(r"\w+", re.UNICODE)
_STOP = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "can",
        "do",
        "does",
        "for",
        "from",
        "how",
        "i",
        "if",
        "in",
        "is",
        "it",
        "me",
        "my",
        "of",
        "on",
        "or",
        "our",
        "the",
        "this",
        "to",
        "was",
        "we",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "will",
        "with",
        "you",
        "your",
    ]
)


def highlight_segments(text: str, query: str) -> list[tuple[str, bool]]:
    """`text` as (piece, matched) segments: words sharing a stem-like prefix with a query word are matched.
    For templates, which escape each piece; nothing here produces markup."""
    stems = {word.lower()[:5] for word in _WORD.findall(query) if word.lower() not in _STOP and len(word) > 1}
    segments: list[tuple[str, bool]] = []
    position = 0
    for match in _WORD.finditer(text):
        word = match.group()
        if word.lower()[:5] in stems and len(word) > 1:
            if match.start() > position:
                segments.append((text[position : match.start()], False))
            segments.append((word, True))
            position = match.end()
    if position < len(text):
        segments.append((text[position:], False))
    return segments
