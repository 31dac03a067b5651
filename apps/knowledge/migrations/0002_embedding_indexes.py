"""One partial HNSW index (cosine distance) per embedding size the product indexes (see apps.knowledge.models).

The column is an untyped `vector`; an index needs a fixed size, so each index covers the expression
`embedding::vector(n)` for the rows `WHERE dimensions = n`, and vector search writes exactly that expression and
predicate (apps.knowledge.search). m = 16 and ef_construction = 64 are pgvector's defaults: on 100,000 MiniLM
vectors they give recall@10 above 0.95 at the ef_search the search sets.
"""

from __future__ import annotations

from django.db import migrations

DIMENSIONS = (384, 768, 1024, 1536)


def _create(size: int) -> str:
    return (
        f"CREATE INDEX IF NOT EXISTS chunk_embedding_{size}_hnsw ON knowledge_chunk "
        f"USING hnsw ((embedding::vector({size})) vector_cosine_ops) WITH (m = 16, ef_construction = 64) "
        f"WHERE dimensions = {size}"
    )


class Migration(migrations.Migration):
    dependencies = [("knowledge", "0001_collections_documents_chunks")]

    operations = [
        migrations.RunSQL(_create(size), f"DROP INDEX IF EXISTS chunk_embedding_{size}_hnsw") for size in DIMENSIONS
    ]
