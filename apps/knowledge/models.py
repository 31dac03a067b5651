"""Knowledge collections: documents, the passages (chunks) cut from them, and their embeddings.

A `Collection` is owned by a team. Who may do what is a matter of object permissions (django-guardian), never
of names: the owning team's group holds `view_collection` and `use_collection` (steps of its workflows may
search it); `manage_collection` (upload, delete, settings) is granted to the person who created it and to
whoever an admin grants it; admins manage every collection.

Embeddings of every size live in one untyped `vector` column. Each chunk records its `dimensions`, and the
migration builds one partial HNSW index (cosine) per size in `INDEXED_DIMENSIONS`, over the expression
`embedding::vector(n)` where `dimensions = n`. So a collection on a 384-dimension model and another on a
768-dimension one share the table, each searched through an index of its own size, and a model of another
size is refused when its first vectors arrive, with the sizes that are indexed. (A fixed `vector(384)` column
would refuse every other model; a column per size would spread one concept over several columns.)
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVector, SearchVectorField
from django.db import models
from pgvector.django import VectorField

# The embedding sizes the database indexes (partial HNSW indexes, see the module docstring and the migration):
# MiniLM and friends (384), BERT-base sized models (768), large ones (1024), OpenAI-sized ones (1536).
INDEXED_DIMENSIONS = (384, 768, 1024, 1536)

# The text-search configuration of the full-text index: English stemming and stop words.
TEXT_SEARCH_CONFIG = "english"


class Collection(models.Model):
    """A named set of documents that `rag.retrieve` steps search (they name it by `name`).

    `endpoint` is the embeddings server (a `ModelEndpoint` of kind TEI); empty means the configured inference
    server's `/embed` (AIOS_KNOWLEDGE_EMBEDDINGS_URL, by default the development server's MiniLM, 384
    dimensions). `embedding_model` and `dimensions` record what the current vectors came from (`dimensions` is
    learnt from the first vectors of a generation). `generation` grows when the model changes: chunks
    embedded under an older generation are re-embedded, and vector search reads only the current one.
    """

    name = models.SlugField(max_length=64, unique=True, help_text="What steps name, e.g. support-kb. Never changes.")
    title = models.CharField(max_length=150)
    description = models.TextField(blank=True)
    team = models.ForeignKey("accounts.Team", on_delete=models.PROTECT, related_name="collections")
    endpoint = models.ForeignKey(
        "inference.ModelEndpoint", on_delete=models.PROTECT, null=True, blank=True, related_name="collections"
    )
    embedding_model = models.CharField(max_length=200, blank=True)
    dimensions = models.PositiveIntegerField(null=True, blank=True)
    generation = models.PositiveIntegerField(default=1)
    chunk_tokens = models.PositiveIntegerField(default=180)
    chunk_overlap = models.PositiveIntegerField(default=30)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    # What a person sets; also what the audit chain records of a change.
    SETTINGS = ("title", "description", "chunk_tokens", "chunk_overlap", "endpoint")

    class Meta:
        ordering = ["name"]
        permissions = [
            ("use_collection", "Name the collection in steps and search it"),
            ("manage_collection", "Upload and delete documents, change settings"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(chunk_overlap__lt=models.F("chunk_tokens")), name="collection_overlap_below_size"
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def model_label(self) -> str:
        """The embeddings model as people read it."""
        if self.endpoint_id is None:
            return self.embedding_model or "the default embeddings server"
        return self.embedding_model or str(self.endpoint)


class Document(models.Model):
    """One uploaded file and where its ingest stands.

    `status` moves queued → parsing → embedding → ready, or to failed with `error` (naming the document). The
    ingest task claims a document by a conditional update that sets `claim_token` and `lease_until`; a
    document whose lease lapsed in a non-final state is taken over by the periodic pickup, and a worker whose
    token is no longer current stops writing. `sha256` is unique per collection: the same file twice is the
    same document.
    """

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        PARSING = "parsing", "Reading"
        EMBEDDING = "embedding", "Embedding"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"

    FINAL = (Status.READY, Status.FAILED)

    collection = models.ForeignKey(Collection, on_delete=models.CASCADE, related_name="documents")
    name = models.CharField(max_length=255)
    content_type = models.CharField(max_length=100, blank=True)
    format = models.CharField(max_length=20, blank=True)
    size = models.PositiveBigIntegerField()
    sha256 = models.CharField(max_length=64)
    data = models.BinaryField()
    metadata = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    chunks_total = models.PositiveIntegerField(default=0)
    chunks_done = models.PositiveIntegerField(default=0)
    pages = models.PositiveIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    claim_token = models.PositiveIntegerField(default=0)
    lease_until = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    uploaded_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.UniqueConstraint(fields=["collection", "sha256"], name="document_unique_file_per_collection"),
        ]
        indexes = [models.Index(fields=["status", "lease_until"], name="document_due_idx")]

    def __str__(self) -> str:
        return self.name

    @property
    def is_final(self) -> bool:
        return self.status in self.FINAL

    @property
    def progress_percent(self) -> int:
        """How far the embedding is, 0–100 (a parsed document with no passages counts as done)."""
        if self.status == self.Status.READY:
            return 100
        if not self.chunks_total:
            return 0
        return min(100, int(100 * self.chunks_done / self.chunks_total))


class Chunk(models.Model):
    """One passage of a document: its text, where it sits (page, heading path), its embedding and its
    full-text vector. `metadata` holds the document's name, page and section and the document's own metadata,
    so filters can match any of them. `embedding` is None until embedded (and re-embedded when `generation`
    is behind the collection's)."""

    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="chunks")
    collection = models.ForeignKey(Collection, on_delete=models.CASCADE, related_name="+")
    ordinal = models.PositiveIntegerField()
    text = models.TextField()
    heading = models.CharField(max_length=500, blank=True)
    page = models.PositiveIntegerField(null=True, blank=True)
    token_count = models.PositiveIntegerField()
    metadata = models.JSONField(default=dict, blank=True)
    embedding = VectorField(null=True, blank=True)
    dimensions = models.PositiveIntegerField(null=True, blank=True)
    generation = models.PositiveIntegerField(default=0)
    search_vector = models.GeneratedField(
        expression=SearchVector("heading", weight="A", config=TEXT_SEARCH_CONFIG)
        + SearchVector("text", weight="B", config=TEXT_SEARCH_CONFIG),
        output_field=SearchVectorField(),
        db_persist=True,
    )

    class Meta:
        ordering = ["document", "ordinal"]
        constraints = [models.UniqueConstraint(fields=["document", "ordinal"], name="chunk_unique_ordinal")]
        indexes = [
            GinIndex(fields=["search_vector"], name="chunk_search_vector_idx"),
            models.Index(fields=["collection", "generation"], name="chunk_collection_gen_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.document_id}#{self.ordinal}"
