"""`rag.retrieve`: search knowledge collections for passages that answer a query, with their sources."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from apps.core.database import db_call
from apps.inference import runtime
from apps.inference.errors import InferenceError
from apps.knowledge.models import Collection
from apps.knowledge.search import MAX_TOP_K, SearchOptions, aquery_vectors, search_with_vectors
from apps.knowledge.selectors import collections_for_workflow
from apps.steps.base import StepConfig, StepContext, StepError, StepOutcome, StepType, Uses
from apps.steps.expressions import ExpressionError, template_check, template_render
from apps.steps.registry import register


class RagRetrieveConfig(StepConfig):
    collections: list[str] = Field(
        min_length=1,
        max_length=10,
        description="The knowledge collections to search: only those this workflow may read.",
        json_schema_extra={"x-widget": "collection"},
    )
    query: str = Field(
        min_length=1,
        description="Text template: what to look for, e.g. {{ input.question }}.",
        json_schema_extra={"x-widget": "template", "x-rows": 3},
    )
    top_k: int = Field(5, ge=1, le=MAX_TOP_K, description="How many passages to return at most.")
    min_score: float | None = Field(
        None,
        ge=-1,
        le=1,
        description="Leave out passages scoring below this (cosine similarity for vector search; 1.0 is the best "
        "hybrid score).",
        json_schema_extra={"x-advanced": True},
    )
    filters: dict[str, str] = Field(
        default_factory=dict,
        description="Metadata name → text template; passages must have exactly these values (e.g. document).",
        json_schema_extra={"x-widget": "template", "x-advanced": True},
    )
    mode: Literal["hybrid", "vector", "fulltext"] = Field(
        "hybrid",
        description="hybrid: meaning and words, fused; vector: meaning only; fulltext: words only.",
    )

    @field_validator("collections", mode="before")
    @classmethod
    def _one_name_is_a_list(cls, value: Any) -> Any:
        # A single name (what a one-choice form posts) is a list of one.
        if isinstance(value, str):
            return [line.strip() for line in value.splitlines() if line.strip()]
        return value


@register
class RagRetrieve(StepType):
    """Searches the named collections for the rendered query, as the run's workflow may (refused when the
    workflow's team, or its owner, may not use a collection). Output `{"query", "passages": [{"chunk_id",
    "text", "document", "document_id", "page", "heading", "score", "collection"}, ...]}`, best first; the
    passages are also the step's provenance (`usage["sources"]`), which the run page shows as its sources.

    Test runs, replays and what-if runs search for real (it is neither `side_effects` nor
    `replay_reuses_output`): retrieval only reads, so a test shows the passages and sources a real run would
    get, and a replay reads the collections as they are now (its provenance shows what it found).
    """

    slug = "rag.retrieve"
    category = "AI"
    name = "Retrieve knowledge"
    description = "Find passages in knowledge collections that answer a question, with their sources."
    Config = RagRetrieveConfig
    queue = "inference"

    @staticmethod
    def check_config(config: RagRetrieveConfig) -> list[str]:
        problems = []
        for label, template in [("query", config.query), *((f"filters.{k}", v) for k, v in config.filters.items())]:
            problem = template_check(template)
            if problem:
                problems.append(f"{label}: the template does not parse: {problem}")
        return problems

    @classmethod
    def uses(cls, config: Any) -> list[Uses]:
        return [Uses("collection", name, field="collections") for name in dict.fromkeys(config.collections)]

    @staticmethod
    def _options(config: RagRetrieveConfig, context: StepContext) -> SearchOptions:
        variables = context.expression_variables()
        try:
            query = template_render(config.query, variables).strip()
            filters = {name: template_render(value, variables) for name, value in config.filters.items()}
        except ExpressionError as error:
            raise StepError(f'Step "{context.step_key}": a template failed: {error}') from None
        if not query:
            raise StepError(f'Step "{context.step_key}": the query is empty once rendered.')
        options = SearchOptions(
            query=query[:2000], top_k=config.top_k, min_score=config.min_score, filters=filters, mode=config.mode
        )
        try:
            return options.checked()
        except ValueError as error:
            raise StepError(f'Step "{context.step_key}": {error}.') from None

    @staticmethod
    def _collections(config: RagRetrieveConfig, context: StepContext) -> list[Collection]:
        usable, problems = collections_for_workflow(config.collections, context.workflow_id)
        if problems:
            raise StepError(f'Step "{context.step_key}": {"; ".join(problems)}.')
        return usable

    async def aexecute(self, config: RagRetrieveConfig, context: StepContext) -> StepOutcome:  # type: ignore[override]
        options = self._options(config, context)
        collections = await db_call(self._collections, config, context)
        try:
            async with runtime.http_session() as http:
                vectors = await aquery_vectors(collections, options, http_client=http)
        except InferenceError as error:
            raise StepError(
                f'Step "{context.step_key}": the embeddings server failed: {error}', retryable=error.retryable
            ) from None
        passages = await db_call(search_with_vectors, collections, options, vectors)
        return StepOutcome(output={"query": options.query, "passages": passages}, usage=_usage(options, passages))

    def simulate(self, config: RagRetrieveConfig, context: StepContext) -> dict[str, Any]:  # type: ignore[override]
        # Retrieval only reads, so what a test run records is a real search (see the class docstring).
        from asgiref.sync import async_to_sync

        outcome = async_to_sync(self.aexecute)(config, context)
        return outcome.output


def _usage(options: SearchOptions, passages: list[dict[str, Any]]) -> dict[str, Any]:
    """The step's provenance: how it searched, and each source (document, page, heading, score, passage)."""
    return {
        "retrieval": {"mode": options.mode, "top_k": options.top_k, "query": options.query},
        "sources": [
            {
                "collection": passage["collection"],
                "document": passage["document"],
                "document_id": passage["document_id"],
                "page": passage["page"],
                "heading": passage["heading"],
                "score": passage["score"],
                "chunk_id": passage["chunk_id"],
                "text": passage["text"],
            }
            for passage in passages
        ],
    }
