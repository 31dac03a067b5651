"""`doc.parse`: read a document (PDF, Word, HTML, Markdown, plain text, CSV) into text with its pages and sections,
so later steps can extract from it, classify it or hand it to a knowledge collection."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from apps.knowledge.parsing import MAX_DOCUMENT_BYTES, DocumentError, ParsedDocument, parse_document, too_big_message
from apps.steps.base import StepConfig, StepContext, StepError, StepOutcome, StepType
from apps.steps.expressions import ExpressionError, cel_check, cel_evaluate
from apps.steps.registry import register


@dataclass(frozen=True)
class StoredDocument:
    """A document stored with a run's inputs: its file name, content type and bytes."""

    name: str
    content_type: str
    data: bytes


# Filled by the runs app (above the step library), which stores documents: given (run id, document id), the
# document if that run may read it (one of its own inputs), else None. The step library may not read the runs
# app's tables itself.
RUN_DOCUMENT_READERS: list[Callable[[int, int], StoredDocument | None]] = []

_SHAPES = (
    'a document from the run\'s input ({"document": id, ...}), inline content ({"name", "content_base64"} with an '
    'optional "content_type") or inline text ({"name", "text"}, or just a text)'
)


class DocParseConfig(StepConfig):
    document: str = Field(
        min_length=1,
        json_schema_extra={"x-widget": "cel"},
        description="The document to read, an expression over the run input and earlier steps: a document field "
        'of the run input (e.g. `input.claim`), inline content `{"name": "notes.md", "content_base64": ...}` or '
        'text `{"name": "page.html", "text": steps.fetch.body}`.',
    )
    format: Literal["auto", "pdf", "docx", "html", "markdown", "text", "csv"] = Field(
        default="auto",
        description='How to read it: "auto" decides by its content and name; any other reads it as that format.',
    )


def _inline_bytes(value: dict[str, Any], step_key: str, name: str) -> bytes:
    content = value.get("content_base64")
    if not isinstance(content, str):
        raise StepError(f'Step "{step_key}": the content of {name} must be base64 text.')
    # Refuse by length before decoding: four base64 characters carry three bytes.
    if len(content) // 4 * 3 > MAX_DOCUMENT_BYTES + 3:
        raise StepError(f'Step "{step_key}": {too_big_message(name, len(content) // 4 * 3)}')
    try:
        return base64.b64decode(content, validate=True)
    except (binascii.Error, ValueError):
        raise StepError(f'Step "{step_key}": the content of {name} is not valid base64.') from None


def _document_input(value: Any, context: StepContext) -> tuple[bytes, str, str | None]:
    """(bytes, file name, content type) of the document `value` names; StepError when it names none this run
    may read."""
    step_key = context.step_key
    if isinstance(value, str):
        return value.encode("utf-8"), "text", "text/plain"
    if not isinstance(value, dict):
        raise StepError(f'Step "{step_key}": the document expression gave {type(value).__name__}, not {_SHAPES}.')
    name = value.get("name")
    name = name if isinstance(name, str) and name.strip() else "the document"
    content_type = value.get("content_type") if isinstance(value.get("content_type"), str) else None
    if "document" in value:
        document_id = value["document"]
        if not isinstance(document_id, int) or isinstance(document_id, bool):
            raise StepError(f'Step "{step_key}": "document" must be the id of a stored document, not {document_id!r}.')
        stored = next(
            (found for reader in RUN_DOCUMENT_READERS if (found := reader(context.run_id, document_id))), None
        )
        if stored is None:
            raise StepError(
                f'Step "{step_key}": document {document_id} is not one of this run\'s input documents, '
                "so this run may not read it."
            )
        return stored.data, stored.name, stored.content_type
    if "content_base64" in value:
        return _inline_bytes(value, step_key, f'"{name}"'), name, content_type
    if "text" in value:
        text = value["text"]
        if not isinstance(text, str):
            raise StepError(f'Step "{step_key}": the text of "{name}" must be text.')
        if len(text) > MAX_DOCUMENT_BYTES:
            raise StepError(f'Step "{step_key}": {too_big_message(name, len(text.encode("utf-8")))}')
        return text.encode("utf-8"), name if name != "the document" else "text", content_type or "text/plain"
    raise StepError(
        f'Step "{step_key}": the document expression gave an object without "document", '
        f'"content_base64" or "text"; give {_SHAPES}.'
    )


def parsed_output(parsed: ParsedDocument, name: str) -> dict[str, Any]:
    """The step's output for a parsed document."""
    return {
        "text": parsed.text,
        "format": parsed.format,
        "name": name,
        "pages": [{"number": page.number, "start": page.start, "end": page.end} for page in parsed.pages],
        "sections": [
            {"heading": section.heading, "level": section.level, "start": section.start, "end": section.end}
            for section in parsed.sections
        ],
        "characters": len(parsed.text),
    }


@register
class DocParse(StepType):
    """Reads the document its `document` expression names: a document among the run's inputs (only this run's:
    the runs app checks), or content given inline. Outputs `{"text", "format", "name", "pages", "sections",
    "characters"}`, pages and sections as character offsets into `text` (see apps.knowledge.parsing). A document
    that cannot be read (encrypted, scanned, damaged, the wrong type, too large) fails the step with a message
    naming it; retrying would not help, so it is not retryable.

    Runs on the engine queue: parsing is CPU work bounded by the limits (20 MB, 200 PDF pages, 2 million
    characters) and takes well under a second for ordinary documents, about as long as a data.transform over
    large data; it makes no network call, so it gains nothing from the inference or connectors queues."""

    slug = "doc.parse"
    name = "Parse a document"
    description = "Read a PDF, Word, HTML, Markdown, text or CSV document into text with its pages and sections."
    Config = DocParseConfig
    category = "Data"

    @staticmethod
    def check_config(config: DocParseConfig) -> list[str]:
        problem = cel_check(config.document)
        return [f"document: the expression does not parse: {problem}"] if problem else []

    def execute(self, config: DocParseConfig, context: StepContext) -> StepOutcome:  # type: ignore[override]
        try:
            value = cel_evaluate(config.document, context.expression_variables())
        except ExpressionError as error:
            raise StepError(
                f'Step "{context.step_key}": the document expression `{config.document}` failed: {error}'
            ) from None
        data, name, content_type = _document_input(value, context)
        try:
            parsed = parse_document(data, filename=name, content_type=content_type, format=config.format)
        except DocumentError as error:
            raise StepError(f'Step "{context.step_key}": {error.message}') from None
        return StepOutcome(output=parsed_output(parsed, name))
