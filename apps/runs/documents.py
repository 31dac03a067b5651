"""Documents as run inputs: a file in any format apps.knowledge.parsing reads (PDF, Word, HTML, Markdown, plain
text, CSV) is stored once with the text read from it, a run's input names it as
`{"document": id, "name", "sha256", "pages", "text"}` (so prompts read `{{ input.<field>.text }}`), and, for a
PDF, a reviewer sees its pages as images with boxes around any character range of that text. Other formats have
one page and no page images: they have no fixed layout to show.

PDFium (through pypdfium2) reads PDFs, through apps.knowledge.parsing, the product's one PDF reader. It is not
thread-safe, so every use holds the reader's lock (`pdf_opened` takes it); the ASGI server runs sync views on
threads and a worker may render while another stores.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_raw
from django.conf import settings
from django.db import IntegrityError, transaction

from apps.accounts.models import User
from apps.audit.services import audit_record
from apps.core.exceptions import ValidationFailed
from apps.knowledge import parsing
from apps.knowledge.parsing import DocumentError, pdf_opened, pdf_page_characters
from apps.runs.models import InputDocument, Run
from apps.runs.selectors import AnyUser, run_list_for_user
from apps.steps.library.doc_parse import StoredDocument
from apps.workflows.input_schema import document_field_names

MAX_BYTES = parsing.MAX_DOCUMENT_BYTES
MAX_PAGES = parsing.MAX_PAGES
PAGE_IMAGE_WIDTH = 1000
PDF_CONTENT_TYPE = parsing.content_type_of("pdf")


def too_big_message(size: int, name: str = "") -> str:
    """Why a file of `size` bytes is refused (rounded up, so it never reads as the limit itself)."""
    return parsing.too_big_message(name, size)


def _refuse(message: str, field_name: str = "file") -> ValidationFailed:
    return ValidationFailed(message, fields={field_name: [message]})


def is_pdf(document: InputDocument) -> bool:
    """Whether the stored document is a PDF: only a PDF has pages to show as images and text boxes on them."""
    return document.content_type == PDF_CONTENT_TYPE


@transaction.atomic
def document_store(*, actor: User, name: str, data: bytes, content_type: str | None = None) -> InputDocument:
    """Store an uploaded document and the text read from it; the stored row if `actor` uploaded these bytes
    before.

    Refuses (ValidationFailed on "file", the message naming the file) what apps.knowledge.parsing cannot read:
    a format it does not support or that does not match the file's name, more than 20 MB, a PDF longer than 200
    pages, protected by a password or without a text layer (a scan), a document with no text.
    `content_type` is the uploader's claim, consulted only where the bytes and the name leave the format open.
    """
    if len(data) > MAX_BYTES:
        raise _refuse(too_big_message(len(data), name))
    digest = hashlib.sha256(data).hexdigest()
    existing = InputDocument.objects.filter(uploaded_by=actor, sha256=digest).first()
    if existing is not None:
        return existing
    try:
        parsed = parsing.parse_document(data, filename=name, content_type=content_type)
    except DocumentError as error:
        raise _refuse(error.message) from None
    extension = parsing.SUPPORTED_FORMATS[parsed.format].extensions[0]
    name = Path(name.replace("\\", "/")).name.strip()[:255] or f"document{extension}"
    try:
        with transaction.atomic():
            document = InputDocument.objects.create(
                name=name,
                content_type=parsing.content_type_of(parsed.format),
                size=len(data),
                sha256=digest,
                data=data,
                page_count=len(parsed.pages),
                text=parsed.text,
                page_offsets=[[page.start, page.end] for page in parsed.pages],
                uploaded_by=actor,
            )
    except IntegrityError:
        # The same person uploaded the same file twice at once: the other request stored it.
        return InputDocument.objects.get(uploaded_by=actor, sha256=digest)
    audit_record(
        actor=actor,
        verb="document.stored",
        target=document,
        data={
            "name": name,
            "sha256": digest,
            "pages": document.page_count,
            "size": document.size,
            "format": parsed.format,
        },
    )
    return document


def document_input_value(document: InputDocument) -> dict[str, Any]:
    """What a run's input holds for a document field."""
    return {
        "document": document.pk,
        "name": document.name,
        "sha256": document.sha256,
        "pages": document.page_count,
        "text": document.text,
    }


def document_inputs_expand(*, actor: User, schema: dict[str, Any], inputs: Any) -> dict[str, Any]:
    """`inputs` with each document field's `{"document": id}` replaced by the stored document's input value.

    Only the id is read: name, hash and text always come from the stored row, never from the caller. A
    document `actor` did not upload is refused like one that does not exist.
    """
    if not isinstance(inputs, dict):
        return inputs
    expanded, errors = dict(inputs), {}
    for name in document_field_names(schema):
        value = inputs.get(name)
        if value is None:
            continue
        document_id = value.get("document") if isinstance(value, dict) else None
        if not isinstance(document_id, int) or isinstance(document_id, bool):
            errors[name] = ['Name an uploaded document: {"document": <id from POST /api/documents/>}.']
            continue
        document = InputDocument.objects.filter(pk=document_id, uploaded_by=actor).first()
        if document is None:
            errors[name] = [f"No document {document_id}: upload the file with POST /api/documents/ first."]
            continue
        expanded[name] = document_input_value(document)
    if errors:
        raise ValidationFailed("The run input is not valid.", fields=errors)
    return expanded


def documents_from_form(
    *, actor: User, schema: dict[str, Any], files: Any, data: Any
) -> tuple[dict[str, dict[str, Any]], dict[str, list[str]]]:
    """For the Run form: each document field's input value, from its upload (stored here) or from the document
    an earlier submission of the form stored (`<field>-document`, one of `actor`'s own); and the upload errors.

    Uploads are stored before the rest of the form is checked, so a mistake in another field does not make
    the person choose the file again.
    """
    values: dict[str, dict[str, Any]] = {}
    errors: dict[str, list[str]] = {}
    for name in document_field_names(schema):
        upload = files.get(name)
        if upload is not None:
            if upload.size > MAX_BYTES:
                errors[name] = [too_big_message(upload.size, upload.name)]
                continue
            try:
                stored = document_store(
                    actor=actor, name=upload.name, data=upload.read(), content_type=upload.content_type
                )
                values[name] = document_input_value(stored)
            except ValidationFailed as refusal:
                errors[name] = [refusal.message]
            continue
        kept = str(data.get(f"{name}-document", ""))
        document = InputDocument.objects.filter(pk=int(kept), uploaded_by=actor).first() if kept.isdigit() else None
        if document is not None:
            values[name] = document_input_value(document)
    return values, errors


def input_form_posted(
    *, actor: User, schema: dict[str, Any], form_class: type[Any], files: Any, data: Any
) -> tuple[Any, bool]:
    """A run form bound to a POST (uploads stored first, see `documents_from_form`) and whether it is valid,
    with each upload's refusal under its field: the Run page and a form trigger's page take input alike."""
    documents, upload_errors = documents_from_form(actor=actor, schema=schema, files=files, data=data)
    # Stored documents stand in for their uploads: the field's value is the run input's dict.
    form = form_class(data=data, files=documents)
    valid = form.is_valid()
    for name, problems in upload_errors.items():
        form.errors.pop(name, None)
        for problem in problems:
            form.add_error(name, problem)
    return form, valid and not upload_errors


def input_document_for_run(user: AnyUser, *, run: Run, field_name: str) -> InputDocument | None:
    """The PDF `run`'s input `field_name` names, if `user` may view the run; None otherwise.

    A document is readable by whoever may view a run whose inputs name it (and by its uploader). Only PDFs:
    this serves the reviewer's page images and evidence boxes, which other formats do not have (their text
    shows as text).
    """
    value = (run.inputs or {}).get(field_name)
    document_id = value.get("document") if isinstance(value, dict) else None
    if not isinstance(document_id, int) or not user.is_authenticated:
        return None
    if not run_list_for_user(user).filter(pk=run.pk).exists():
        return None
    return InputDocument.objects.filter(pk=document_id, content_type=PDF_CONTENT_TYPE).first()


# Parents, restarts and replays followed at most this far when deciding whether a run may read a document.
_LINEAGE_DEPTH = 20


def _run_may_read(run: Run, document: InputDocument, depth: int = 0) -> bool:
    """Whether a document field of `run`'s inputs names `document`, and it reached the run legitimately: its
    uploader started the run, or the run inherited it from a run that may read it (the parent of a sub-workflow
    run, the original of a restart or replay). A document id typed into a sub-workflow's input by an expression
    names the document, but that alone does not make it this run's."""
    named = any(
        isinstance(value := (run.inputs or {}).get(name), dict) and value.get("document") == document.pk
        for name in document_field_names(run.version.input_schema)
    )
    if not named:
        return False
    if run.initiator_id is not None and run.initiator_id == document.uploaded_by_id:
        return True
    if depth >= _LINEAGE_DEPTH:
        return False
    parent = run.parent_step_run.run if run.parent_step_run is not None else None
    earlier = (parent, run.restarted_from, run.replay_of)
    return any(other is not None and _run_may_read(other, document, depth + 1) for other in earlier)


def run_input_document(*, run_id: int, document_id: int) -> InputDocument | None:
    """Document `document_id` if run `run_id` may read it (see `_run_may_read`); None otherwise, also when
    either does not exist. What the `doc.parse` step reads stored documents through."""
    run = Run.objects.select_related("version").filter(pk=run_id).first()
    document = InputDocument.objects.filter(pk=document_id).first()
    if run is None or document is None:
        return None
    return document if _run_may_read(run, document) else None


def run_input_document_for_step(run_id: int, document_id: int) -> StoredDocument | None:
    """`run_input_document` as the doc.parse step's hook wants it: the stored bytes, name and content type."""
    document = run_input_document(run_id=run_id, document_id=document_id)
    if document is None:
        return None
    return StoredDocument(name=document.name, content_type=document.content_type, data=bytes(document.data))


# --- pages as images, and where text sits on them ----------------------------------------------------------


def _cache_folder(sha256: str) -> Path:
    return Path(settings.AIOS_DATA_DIR) / "page-images" / sha256[:2]


def _cache_path(document: InputDocument, page_number: int, width: int) -> Path:
    # Keyed by content, so a cached image never goes stale and two documents with the same bytes share it.
    return _cache_folder(document.sha256) / f"{document.sha256}-{page_number}-{width}.png"


def document_page_images_forget(sha256s: Iterable[str]) -> None:
    """Remove this host's cached page images of documents with these contents (the retention purge, once their
    last stored document is gone): they show the pages, so they must not outlive the document. Another host's
    cache is its own; a missing file is no matter."""
    for sha256 in sha256s:
        for path in _cache_folder(sha256).glob(f"{sha256}-*.png"):
            path.unlink(missing_ok=True)


def document_page_png(document: InputDocument, page_number: int, *, width: int = PAGE_IMAGE_WIDTH) -> bytes:
    """Page `page_number` (from 1) of `document`, a PDF, as a PNG `width` pixels wide (ValueError for a page it
    does not have, and for any page of a document that is not a PDF).

    Cached on disk under AIOS_DATA_DIR, not in the database: the image is derived from immutable bytes and
    can be made again any time, so a cache miss on another web host costs one render and nothing more,
    while keeping megabytes of images out of the database and its backups. Written to a temporary file and
    renamed, so a reader never sees half an image when two requests render the same page.
    """
    if not is_pdf(document):
        raise ValueError(f"{document.name} is not a PDF: it has no page images")
    if not 1 <= page_number <= document.page_count:
        raise ValueError(f"page {page_number} is not in 1..{document.page_count}")
    path = _cache_path(document, page_number, width)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    with pdf_opened(bytes(document.data)) as pdf:
        page = pdf[page_number - 1]
        page_width, _ = page.get_size()
        bitmap = page.render(scale=width / page_width, may_draw_forms=False)
        image = bitmap.to_pil()
        page.close()
    buffer = BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    png = buffer.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(handle, "wb") as out:
        out.write(png)
    os.replace(temporary, path)
    return png


@dataclass
class TextBox:
    """A box around one line's part of a character range, in PDF points from the page's top-left corner as
    the page is displayed (its rotation applied)."""

    x: float
    y: float
    width: float
    height: float


@dataclass
class PageBoxes:
    """The boxes of a character range on one page (numbered from 1), with the page's displayed size in points."""

    page: int
    page_width: float
    page_height: float
    boxes: list[TextBox] = field(default_factory=list)


# Points per device unit when mapping page coordinates through PDFium: its device coordinates are integers.
_DEVICE_SCALE = 20


def _display_box(page: pdfium.PdfPage, size: tuple[float, float], box: tuple[float, float, float, float]) -> TextBox:
    width, height = (round(value * _DEVICE_SCALE) for value in size)
    left, bottom, right, top = box
    corners = []
    for page_x, page_y in ((left, top), (right, bottom)):
        device_x, device_y = ctypes.c_int(), ctypes.c_int()
        pdfium_raw.FPDF_PageToDevice(
            page.raw, 0, 0, width, height, 0, page_x, page_y, ctypes.byref(device_x), ctypes.byref(device_y)
        )
        corners.append((device_x.value / _DEVICE_SCALE, device_y.value / _DEVICE_SCALE))
    (x1, y1), (x2, y2) = corners
    return TextBox(x=min(x1, x2), y=min(y1, y2), width=abs(x2 - x1), height=abs(y2 - y1))


def _line_boxes(boxes: list[TextBox]) -> list[TextBox]:
    """Character boxes merged into one box per line: a character joins the line when it sits beside it
    (its middle within the line's height, not far to its left); otherwise it starts a new line."""
    lines: list[TextBox] = []
    for box in boxes:
        line = lines[-1] if lines else None
        middle = box.y + box.height / 2
        if line is not None and line.y <= middle <= line.y + line.height and box.x >= line.x - line.height:
            right, bottom = max(line.x + line.width, box.x + box.width), max(line.y + line.height, box.y + box.height)
            line.x, line.y = min(line.x, box.x), min(line.y, box.y)
            line.width, line.height = right - line.x, bottom - line.y
        else:
            lines.append(TextBox(box.x, box.y, box.width, box.height))
    return lines


def document_page_sizes(document: InputDocument) -> list[tuple[float, float]]:
    """Each page's displayed width and height in PDF points (its rotation applied), in page order; none for a
    document that is not a PDF."""
    if not is_pdf(document):
        return []
    with pdf_opened(bytes(document.data)) as pdf:
        return [pdf.get_page_size(index) for index in range(len(pdf))]


def document_text_boxes(document: InputDocument, start: int, end: int) -> list[PageBoxes]:
    """Where the characters `start`..`end` of `document.text` sit: per page they touch, one box per line.

    Separators between pages and characters without a shape (spaces PDFium generated) take no box. A document
    that is not a PDF has no boxes.
    """
    if not is_pdf(document):
        return []
    spans = []
    for number, (page_start, page_end) in enumerate(document.page_offsets, 1):
        low, high = max(start, page_start), min(end, page_end)
        if low < high:
            spans.append((number, low - page_start, high - page_start))
    if not spans:
        return []
    found = []
    with pdf_opened(bytes(document.data)) as pdf:
        for number, low, high in spans:
            page = pdf[number - 1]
            size = page.get_size()
            text_page = page.get_textpage()
            characters = pdf_page_characters(text_page)
            boxes = []
            for character, index in characters[low:high]:
                if character.isspace():
                    continue
                left, bottom, right, top = text_page.get_charbox(index, loose=True)
                if right > left and top > bottom:
                    boxes.append(_display_box(page, size, (left, bottom, right, top)))
            text_page.close()
            page.close()
            if boxes:
                found.append(PageBoxes(page=number, page_width=size[0], page_height=size[1], boxes=_line_boxes(boxes)))
    return found
