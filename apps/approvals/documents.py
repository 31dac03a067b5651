"""The decision view's source as a document: when an item reviews an extraction from a PDF run input, its pages
as images with a box around each field's evidence.

An item's `source_text` is a copy of what the reviewed step read. It is the document's text exactly when the
step's `source` is `{{ input.<field>.text }}` and that input is a stored document whose text is still equal
to the copy (masking personal data, for one, changes it): only then do the evidence offsets point into the
document's text, and only then are boxes drawn.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from apps.approvals.models import ApprovalRequest
from apps.approvals.selectors import AnyUser
from apps.runs.documents import (
    TextBox,
    document_page_png,
    document_page_sizes,
    document_text_boxes,
    input_document_for_run,
)
from apps.runs.models import InputDocument

_PAD = 1.5  # points
# The name tag: 8 pt bold text (see inbox.css), at most about 5.6 pt a character.
_TAG_HEIGHT, _TAG_PADDING, _TAG_CHARACTER_WIDTH = 11.0, 2.5, 5.6
_DOCUMENT_SOURCE = re.compile(r"\{\{\s*input\.([A-Za-z_][A-Za-z0-9_]*)\.text\s*\}\}")


@dataclass
class EvidenceMark:
    """One field's evidence on one page: its line boxes, and where its label goes (PDF points, top-left
    origin). `anchor` marks the field's first mark in the document: the one the "Show the evidence" link
    scrolls to."""

    field: str
    boxes: list[TextBox]
    anchor: bool
    tag: TextBox  # the dark tag behind the field's name

    @property
    def label_x(self) -> float:
        return self.tag.x + _TAG_PADDING

    @property
    def label_y(self) -> float:
        return self.tag.y + self.tag.height - 2.5  # the text's baseline inside its tag


@dataclass
class ReviewPage:
    """A page of the reviewed document, numbered from 1, with its displayed size in PDF points."""

    number: int
    width: float
    height: float
    marks: list[EvidenceMark] = field(default_factory=list)


@dataclass
class ReviewDocument:
    """The document behind an item's source text, its pages and the evidence marks on them."""

    document: InputDocument
    input_field: str
    pages: list[ReviewPage]

    @property
    def name(self) -> str:
        return self.document.name


def review_document_field(item: ApprovalRequest) -> str | None:
    """The run input field whose document is exactly the item's source text; None when the source is not one."""
    if not item.review_step_key or not item.source_text:
        return None
    try:
        config = item.run.step_definition(item.review_step_key).get("config", {})
    except KeyError:
        return None
    source = config.get("source") if isinstance(config, dict) else None
    match = _DOCUMENT_SOURCE.fullmatch(source.strip()) if isinstance(source, str) else None
    if match is None:
        return None
    value = (item.run.inputs or {}).get(match.group(1))
    if not isinstance(value, dict) or not isinstance(value.get("document"), int):
        return None
    return match.group(1) if value.get("text") == item.source_text else None


def _document_for(user: AnyUser, item: ApprovalRequest) -> tuple[InputDocument, str] | None:
    input_field = review_document_field(item)
    if input_field is None:
        return None
    document = input_document_for_run(user, run=item.run, field_name=input_field)
    # The stored text is what the run read; a different one (never expected: documents are immutable) shows
    # no boxes rather than boxes in the wrong places.
    if document is None or document.text != item.source_text:
        return None
    return document, input_field


def review_document_for_user(user: AnyUser, item: ApprovalRequest) -> ReviewDocument | None:
    """The item's source document for `user` (who may already see `item`), every page with the evidence
    marks on it, in field order; None when the item's source is not a document or `user` may not read it."""
    found = _document_for(user, item)
    if found is None:
        return None
    document, input_field = found
    pages = [
        ReviewPage(number=number, width=width, height=height)
        for number, (width, height) in enumerate(document_page_sizes(document), 1)
    ]
    anchored: set[str] = set()
    for name, span in (item.evidence or {}).items():
        start, end = (span.get("start"), span.get("end")) if isinstance(span, dict) else (None, None)
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= len(document.text)):
            continue
        for page_boxes in document_text_boxes(document, start, end):
            page = pages[page_boxes.page - 1]
            # A little air around the glyphs, so the frame does not cut through them.
            boxes = [
                TextBox(box.x - _PAD, box.y - _PAD, box.width + 2 * _PAD, box.height + 2 * _PAD)
                for box in page_boxes.boxes
            ]
            first = boxes[0]
            # The field's name on a tag above the first line (below it on a page's top line). No script may
            # measure text here (CSP), so the tag's width is estimated from the label's length.
            width = len(str(name)) * _TAG_CHARACTER_WIDTH + 2 * _TAG_PADDING
            top = first.y - _TAG_HEIGHT if first.y > _TAG_HEIGHT else first.y + first.height
            page.marks.append(
                EvidenceMark(
                    field=str(name),
                    boxes=boxes,
                    anchor=name not in anchored,
                    tag=TextBox(first.x, top, width, _TAG_HEIGHT),
                )
            )
            anchored.add(str(name))
    return ReviewDocument(document=document, input_field=input_field, pages=pages)


def review_document_page_png(user: AnyUser, item: ApprovalRequest, page_number: int) -> bytes | None:
    """Page `page_number` of the item's source document as a PNG; None when there is no such page for `user`."""
    found = _document_for(user, item)
    if found is None or not 1 <= page_number <= found[0].page_count:
        return None
    return document_page_png(found[0], page_number)
