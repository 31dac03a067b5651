"""Documents as run inputs: a PDF is stored once with the text read from it, a run's input names it as
`{"document": id, "name", "sha256", "pages", "text"}` (so prompts read `{{ input.<field>.text }}`), and a
reviewer sees its pages as images with boxes around any character range of that text.

PDFium (through pypdfium2) reads the files. It is not thread-safe, so every use holds `_PDFIUM`; the ASGI
server runs sync views on threads and a worker may render while another stores.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
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
from apps.runs.models import InputDocument, Run
from apps.runs.selectors import AnyUser, run_list_for_user
from apps.steps.guardrails import sanitise_output
from apps.workflows.input_schema import document_field_names

MAX_BYTES = 20 * 1024 * 1024
MAX_PAGES = 200
PAGE_IMAGE_WIDTH = 1000
PDF_MAGIC = b"%PDF-"

_PDFIUM = threading.Lock()


def too_big_message(size: int) -> str:
    """Why a file of `size` bytes is refused (rounded up, so it never reads as the limit itself)."""
    return f"This file is {math.ceil(size / 1024 / 102.4) / 10:.1f} MB: AIOS reads PDFs of at most 20 MB."


def _refuse(message: str, field_name: str = "file") -> ValidationFailed:
    return ValidationFailed(message, fields={field_name: [message]})


@contextmanager
def _opened(data: bytes) -> Iterator[pdfium.PdfDocument]:
    """The PDF open under the PDFium lock, closed on exit."""
    with _PDFIUM:
        document = pdfium.PdfDocument(data)
        try:
            yield document
        finally:
            document.close()


def _page_characters(text_page: pdfium.PdfTextPage) -> list[tuple[str, int]]:
    """The page's text as (character, PDFium character index) pairs.

    Read one character at a time, not with `get_text_range`, so every character of the stored text keeps
    the index of the PDFium character it came from (the evidence boxes need it). Each character is cleaned
    as model steps clean their source (`sanitise_output`: no control or invisible characters, NFC), so an
    extraction's source text is the document's text character for character and its evidence offsets hold
    here. PDFium ends generated lines with "\r\n": the "\r" goes. Surrogate pairs are joined.
    """
    characters: list[tuple[str, int]] = []
    count = text_page.count_chars()
    index = 0
    while index < count:
        code, width = pdfium_raw.FPDFText_GetUnicode(text_page.raw, index), 1
        if 0xD800 <= code < 0xDC00 and index + 1 < count:
            low = pdfium_raw.FPDFText_GetUnicode(text_page.raw, index + 1)
            if 0xDC00 <= low < 0xE000:
                code, width = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00), 2
        if code != 0x0D and code < 0x110000:
            cleaned = sanitise_output(chr(code))
            if len(cleaned) == 1:
                characters.append((cleaned, index))
        index += width
    while characters and characters[-1][0].isspace():
        characters.pop()  # a trailing line break would not survive rendering into a prompt
    return characters


def _read_text(data: bytes) -> tuple[str, list[list[int]]]:
    """The document's text with its pages joined by PAGE_SEPARATOR, and each page's [start, end)."""
    try:
        with _opened(data) as document:
            pages = len(document)
            if pages > MAX_PAGES:
                raise _refuse(f"This PDF has {pages} pages: AIOS reads documents of at most {MAX_PAGES} pages.")
            texts = []
            for number in range(pages):
                page = document[number]
                text_page = page.get_textpage()
                texts.append("".join(character for character, _ in _page_characters(text_page)))
                text_page.close()
                page.close()
    except pdfium.PdfiumError as error:
        if getattr(error, "err_code", None) == pdfium_raw.FPDF_ERR_PASSWORD:
            raise _refuse(
                "This PDF is protected by a password: save it without the password and upload it again."
            ) from None
        raise _refuse("This file is not a PDF that can be read: it may be damaged.") from None
    if not any(text.strip() for text in texts):
        raise _refuse("This PDF has no text: it looks scanned, and AIOS does not read scans yet.")
    offsets, position = [], 0
    for text in texts:
        offsets.append([position, position + len(text)])
        position += len(text) + len(InputDocument.PAGE_SEPARATOR)
    return InputDocument.PAGE_SEPARATOR.join(texts), offsets


@transaction.atomic
def document_store(*, actor: User, name: str, data: bytes) -> InputDocument:
    """Store an uploaded PDF and the text of its pages; the stored row if `actor` uploaded these bytes before.

    Refuses (ValidationFailed on "file") a file that is not a PDF, is larger than 20 MB or longer than 200
    pages, needs a password, or has no text layer (a scan).
    """
    if len(data) > MAX_BYTES:
        raise _refuse(too_big_message(len(data)))
    if not data.lstrip(b"\r\n\t ")[:5] == PDF_MAGIC:
        raise _refuse("This file is not a PDF: choose a file that ends in .pdf.")
    digest = hashlib.sha256(data).hexdigest()
    existing = InputDocument.objects.filter(uploaded_by=actor, sha256=digest).first()
    if existing is not None:
        return existing
    text, offsets = _read_text(data)
    name = Path(name.replace("\\", "/")).name.strip()[:255] or "document.pdf"
    try:
        with transaction.atomic():
            document = InputDocument.objects.create(
                name=name,
                content_type="application/pdf",
                size=len(data),
                sha256=digest,
                data=data,
                page_count=len(offsets),
                text=text,
                page_offsets=offsets,
                uploaded_by=actor,
            )
    except IntegrityError:
        # The same person uploaded the same file twice at once: the other request stored it.
        return InputDocument.objects.get(uploaded_by=actor, sha256=digest)
    audit_record(
        actor=actor,
        verb="document.stored",
        target=document,
        data={"name": name, "sha256": digest, "pages": document.page_count, "size": document.size},
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
            errors[name] = [f"No document {document_id}: upload the PDF with POST /api/documents/ first."]
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
                errors[name] = [too_big_message(upload.size)]
                continue
            try:
                values[name] = document_input_value(document_store(actor=actor, name=upload.name, data=upload.read()))
            except ValidationFailed as refusal:
                errors[name] = [refusal.message]
            continue
        kept = str(data.get(f"{name}-document", ""))
        document = InputDocument.objects.filter(pk=int(kept), uploaded_by=actor).first() if kept.isdigit() else None
        if document is not None:
            values[name] = document_input_value(document)
    return values, errors


def input_document_for_run(user: AnyUser, *, run: Run, field_name: str) -> InputDocument | None:
    """The document `run`'s input `field_name` names, if `user` may view the run; None otherwise.

    A document is readable by whoever may view a run whose inputs name it (and by its uploader).
    """
    value = (run.inputs or {}).get(field_name)
    document_id = value.get("document") if isinstance(value, dict) else None
    if not isinstance(document_id, int) or not user.is_authenticated:
        return None
    if not run_list_for_user(user).filter(pk=run.pk).exists():
        return None
    return InputDocument.objects.filter(pk=document_id).first()


# --- pages as images, and where text sits on them ----------------------------------------------------------


def _cache_path(document: InputDocument, page_number: int, width: int) -> Path:
    # Keyed by content, so a cached image never goes stale and two documents with the same bytes share it.
    folder = Path(settings.AIOS_DATA_DIR) / "page-images" / document.sha256[:2]
    return folder / f"{document.sha256}-{page_number}-{width}.png"


def document_page_png(document: InputDocument, page_number: int, *, width: int = PAGE_IMAGE_WIDTH) -> bytes:
    """Page `page_number` (from 1) of `document` as a PNG `width` pixels wide.

    Cached on disk under AIOS_DATA_DIR, not in the database: the image is derived from immutable bytes and
    can be made again any time, so a cache miss on another web host costs one render and nothing more,
    while keeping megabytes of images out of the database and its backups. Written to a temporary file and
    renamed, so a reader never sees half an image when two requests render the same page.
    """
    if not 1 <= page_number <= document.page_count:
        raise ValueError(f"page {page_number} is not in 1..{document.page_count}")
    path = _cache_path(document, page_number, width)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    with _opened(bytes(document.data)) as pdf:
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
    """Each page's displayed width and height in PDF points (its rotation applied), in page order."""
    with _opened(bytes(document.data)) as pdf:
        return [pdf.get_page_size(index) for index in range(len(pdf))]


def document_text_boxes(document: InputDocument, start: int, end: int) -> list[PageBoxes]:
    """Where the characters `start`..`end` of `document.text` sit: per page they touch, one box per line.

    Separators between pages and characters without a shape (spaces PDFium generated) take no box.
    """
    spans = []
    for number, (page_start, page_end) in enumerate(document.page_offsets, 1):
        low, high = max(start, page_start), min(end, page_end)
        if low < high:
            spans.append((number, low - page_start, high - page_start))
    if not spans:
        return []
    found = []
    with _opened(bytes(document.data)) as pdf:
        for number, low, high in spans:
            page = pdf[number - 1]
            size = page.get_size()
            text_page = page.get_textpage()
            characters = _page_characters(text_page)
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
