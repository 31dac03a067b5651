"""Documents to text: PDF, Word (DOCX), HTML, Markdown, plain text and CSV, read into one plain text with its
pages and sections as character offsets into that text.

`parse_document(data, filename=..., content_type=...)` is the one entry point. It decides the format by the
bytes first (a PDF header, a Word document's ZIP structure) and by the name and content type after that, so a
file's name can never make the reader treat bytes as something they are not: a `.pdf` that holds no PDF is an
error, not plain text. Every refusal is a `DocumentError` whose message names the document and says what is
wrong in words a business user can act on; run input uploads, the `doc.parse` step and knowledge ingestion
show it as it is.

The text is cleaned character by character as model steps clean their source (no control characters but
line feed and tab, no invisible or bidi-control characters, NFC; see `clean_text`), so text handed to a model
step is not changed by it again, and offsets into it (an extraction's evidence, a section) stay true. NUL
characters never survive: the database refuses them.

Sections: a heading opens one, and it ends where the next heading of the same or a higher level (a smaller
number) starts, or at the end of the text. Levels count from 1 (`<h1>`, "Heading 1", `#`); a document's own
title (an HTML `<title>`, a Word "Title" paragraph) is level 0, so its section spans the document.

No database access, no network: this module reads bytes and returns text. It is safe on untrusted input
within its limits (MAX_DOCUMENT_BYTES, MAX_PAGES, MAX_TEXT_CHARACTERS, MAX_UNPACKED_BYTES for a DOCX's
compressed parts), and never executes anything a document contains.

PDFium (through pypdfium2) is not thread-safe: every use in the product holds `PDFIUM_LOCK` (take it with
`pdf_opened`), including the page rendering in apps.runs.documents.
"""

from __future__ import annotations

import codecs
import csv
import math
import re
import threading
import unicodedata
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO, StringIO
from pathlib import PurePosixPath
from typing import Any

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_raw

MAX_DOCUMENT_BYTES = 20 * 1024 * 1024
MAX_PAGES = 200
# About 1,000 dense pages. A document's text travels in run inputs and step outputs (JSON rows) and into
# prompts; beyond this it is more than any step should carry in one piece.
MAX_TEXT_CHARACTERS = 2_000_000
# A DOCX is a ZIP archive: its parts may unpack to far more than the upload's size (a "zip bomb"). The sizes
# the archive declares are checked before anything is unpacked, and Python's zipfile never returns more than
# an entry declares, so a lying header cannot get past this either.
MAX_UNPACKED_BYTES = 100 * 1024 * 1024
MAX_ARCHIVE_ENTRIES = 5_000

# Between a PDF's pages in the text: blank lines, not a form feed, because model steps drop control characters
# from their source, and the source must stay the document's text for evidence offsets to point into it.
PAGE_SEPARATOR = "\n\n\n"

PDFIUM_LOCK = threading.Lock()


class DocumentError(Exception):
    """A document that cannot be read; `message` names the document and says what is wrong and what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Page:
    """Page `number` (from 1) is `text[start:end]`."""

    number: int
    start: int
    end: int


@dataclass(frozen=True)
class Section:
    """A heading and the text it governs: `text[start:end]` begins with the heading itself."""

    heading: str
    level: int
    start: int
    end: int


@dataclass(frozen=True)
class ParsedDocument:
    """A document's text, its format (a key of SUPPORTED_FORMATS), and its pages and sections as offsets into
    `text`. Pages cover the text in order; only a PDF has more than one."""

    text: str
    format: str
    pages: list[Page]
    sections: list[Section]


@dataclass(frozen=True)
class DocumentFormat:
    """A format AIOS reads: its name for people's sentences ("a PDF"), the file name endings and the content
    types that name it (the first content type is the one the product stores)."""

    label: str
    extensions: tuple[str, ...]
    content_types: tuple[str, ...]


SUPPORTED_FORMATS: dict[str, DocumentFormat] = {
    "pdf": DocumentFormat("a PDF", (".pdf",), ("application/pdf",)),
    "docx": DocumentFormat(
        "a Word document",
        (".docx",),
        ("application/vnd.openxmlformats-officedocument.wordprocessingml.document",),
    ),
    "html": DocumentFormat("an HTML page", (".html", ".htm", ".xhtml"), ("text/html", "application/xhtml+xml")),
    "markdown": DocumentFormat("Markdown text", (".md", ".markdown"), ("text/markdown", "text/x-markdown")),
    "text": DocumentFormat("plain text", (".txt", ".text"), ("text/plain",)),
    "csv": DocumentFormat(
        "a CSV table", (".csv", ".tsv"), ("text/csv", "application/csv", "text/tab-separated-values")
    ),
}
BINARY_FORMATS = ("pdf", "docx")
TEXT_FORMATS = ("html", "markdown", "text", "csv")


def accept_attribute() -> str:
    """Every supported content type and file name ending, for a file input's `accept` attribute."""
    values: list[str] = []
    for spec in SUPPORTED_FORMATS.values():
        values.extend(spec.content_types)
        values.extend(spec.extensions)
    return ",".join(values)


def supported_formats_sentence() -> str:
    """The formats AIOS reads, for messages: "PDF, Word (.docx), HTML, Markdown, text or CSV"."""
    return "PDF, Word (.docx), HTML, Markdown, plain text or CSV"


def content_type_of(format_name: str) -> str:
    """The content type the product stores for a document of `format_name`."""
    return SUPPORTED_FORMATS[format_name].content_types[0]


def too_big_message(name: str, size: int) -> str:
    """Why a file of `size` bytes is refused (rounded up, so it never reads as the limit itself)."""
    megabytes = math.ceil(size / 1024 / 102.4) / 10
    return f"{_quoted(name)} is {megabytes:.1f} MB: AIOS reads documents of at most {MAX_DOCUMENT_BYTES // 2**20} MB."


# --- cleaning ------------------------------------------------------------------------------------------------

# The characters model steps remove from text (apps.steps.guardrails.sanitise_output, which this module may not
# import: the step library sits above it). tests/knowledge/test_parsing.py checks, code point by code point,
# that both remove the same ones.
_REMOVED_RANGES: list[tuple[int, int]] = [
    (0x00, 0x08),  # C0 controls but tab and line feed
    (0x0B, 0x1F),
    (0x7F, 0x9F),  # DEL and C1 controls
    (0x200B, 0x200F),  # zero-width characters and direction marks
    (0x202A, 0x202E),  # bidi embeddings and overrides
    (0x2060, 0x2064),  # word joiner, invisible operators
    (0x2066, 0x2069),  # bidi isolates
    (0x061C, 0x061C),  # Arabic letter mark
    (0xFEFF, 0xFEFF),  # zero-width no-break space (byte-order mark)
    (0xFFF9, 0xFFFB),  # interlinear annotation
    (0xE0000, 0xE007F),  # tag characters
    (0xD800, 0xDFFF),  # lone surrogates: they cannot be encoded, so storing them would fail
]
_REMOVED = re.compile(
    "[" + "".join(f"{re.escape(chr(low))}-{re.escape(chr(high))}" for low, high in _REMOVED_RANGES) + "]"
)


def clean_text(text: str) -> str:
    """`text` with line breaks as "\\n", without the characters model steps remove, NFC-normalised."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return unicodedata.normalize("NFC", _REMOVED.sub("", text))


# --- names and formats ---------------------------------------------------------------------------------------


def _display_name(filename: str) -> str:
    """The file's own name (no folders), without control characters, at most 80 characters, for messages."""
    name = PurePosixPath(filename.replace("\\", "/")).name
    name = _REMOVED.sub("", name).strip() or "the document"
    return name if len(name) <= 80 else name[:77] + "..."


def _quoted(filename: str) -> str:
    name = _display_name(filename)
    return name if name == "the document" else f'"{name}"'


def _capitalised(filename: str) -> str:
    quoted = _quoted(filename)
    return quoted[0].upper() + quoted[1:]


def _extension(filename: str) -> str:
    return PurePosixPath(filename.replace("\\", "/")).suffix.lower()


def _format_by_extension(filename: str) -> str | None:
    extension = _extension(filename)
    return next((name for name, spec in SUPPORTED_FORMATS.items() if extension and extension in spec.extensions), None)


def _format_by_content_type(content_type: str | None) -> str | None:
    if not content_type:
        return None
    base = content_type.split(";", 1)[0].strip().lower()
    return next((name for name, spec in SUPPORTED_FORMATS.items() if base in spec.content_types), None)


_OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_ZIP_MAGIC = b"PK\x03\x04"
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*")
_TEXT_BOMS = (codecs.BOM_UTF8, codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def _is_pdf(data: bytes) -> bool:
    # PDF readers accept a header anywhere in the first 1,024 bytes; PDFium does too.
    return b"%PDF-" in data[:1024]


def _content_format(data: bytes, filename: str) -> str | None:
    """The binary format the bytes are ("pdf", "docx"), None when they may be text; DocumentError when they
    are a binary file AIOS does not read."""
    if _is_pdf(data):
        return "pdf"
    if data.startswith(_ZIP_MAGIC) or data.startswith(b"PK\x05\x06"):
        try:
            with zipfile.ZipFile(BytesIO(data)) as archive:
                names = set(archive.namelist())
        except (zipfile.BadZipFile, ValueError, EOFError):
            raise DocumentError(
                f"{_capitalised(filename)} is a damaged ZIP archive, not a document AIOS can read."
            ) from None
        if "word/document.xml" in names:
            return "docx"
        if "xl/workbook.xml" in names:
            raise DocumentError(f"{_capitalised(filename)} is an Excel workbook: save it as CSV and upload that.")
        if "ppt/presentation.xml" in names:
            raise DocumentError(
                f"{_capitalised(filename)} is a PowerPoint presentation: save it as PDF and upload that."
            )
        raise DocumentError(
            f"{_capitalised(filename)} is a ZIP archive, not a document: upload a {supported_formats_sentence()} file."
        )
    if data.startswith(_OLE2_MAGIC):
        # Word 97-2003 documents, and Office files protected by a password (which Office wraps the same way).
        raise DocumentError(
            f"{_capitalised(filename)} is an older Office file or one protected by a password: "
            "save it as .docx without a password and upload it again."
        )
    if data.startswith(_IMAGE_MAGIC):
        raise DocumentError(f"{_capitalised(filename)} is an image: AIOS reads documents with text, not images.")
    return None


def detect_format(data: bytes, filename: str, content_type: str | None = None) -> str:
    """The format of a document (a key of SUPPORTED_FORMATS): by its bytes first (a PDF header, a Word
    document's ZIP structure), then by its name's ending, then by its content type.

    DocumentError when the bytes are a binary file AIOS does not read, when the name promises a binary format
    the bytes are not (a .pdf that is no PDF), or when a text file's name and content type name no format
    AIOS reads. A file without an ending or content type that holds text is plain text (HTML when it starts
    like an HTML page).
    """
    by_content = _content_format(data, filename)
    by_name = _format_by_extension(filename)
    by_type = _format_by_content_type(content_type)
    if by_content is not None:
        return by_content
    claimed = by_name or by_type
    if claimed in BINARY_FORMATS:
        label = SUPPORTED_FORMATS[claimed].label
        raise DocumentError(
            f"{_capitalised(filename)} is not {label}"
            + (f": its name ends in {_extension(filename)}, but it holds something else." if by_name else ".")
        )
    if claimed is not None:
        return claimed
    if _extension(filename) and _extension(filename) != ".":
        raise DocumentError(
            f"{_capitalised(filename)} is not a document AIOS reads: upload a {supported_formats_sentence()} file."
        )
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        return "html"
    return "text"


# --- building text with offsets ------------------------------------------------------------------------------


_HTML_WHITESPACE = re.compile(r"[ \t\n\f\r]+")


class _TextBuilder:
    """Text assembled piece by piece, with line structure kept tidy (no trailing spaces, at most one blank
    line in a row) and headings recorded at their offsets. Pieces must already be clean (`clean_text`)."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.parts: list[str] = []
        self.length = 0
        self.headings: list[tuple[str, int, int]] = []  # (heading, level, start)

    def _tail(self, count: int) -> str:
        tail = ""
        for part in reversed(self.parts):
            tail = part + tail
            if len(tail) >= count:
                break
        return tail[-count:]

    def append(self, text: str) -> None:
        if not text:
            return
        self.parts.append(text)
        self.length += len(text)
        if self.length > MAX_TEXT_CHARACTERS:
            raise _too_long(self.filename)

    def _trim_trailing_spaces(self) -> None:
        while self.parts:
            last = self.parts[-1]
            trimmed = last.rstrip(" \t")
            self.length -= len(last) - len(trimmed)
            if trimmed:
                self.parts[-1] = trimmed
                return
            self.parts.pop()

    def line_break(self) -> None:
        """End the current line, if one is open."""
        self._trim_trailing_spaces()
        if self.length and self._tail(1) != "\n":
            self.append("\n")

    def blank_line(self) -> None:
        """Leave a blank line after the current text (none at the very start)."""
        self._trim_trailing_spaces()
        if not self.length:
            return
        tail = self._tail(2)
        self.append("\n" * (2 - (len(tail) - len(tail.rstrip("\n")))))

    def words(self, text: str) -> None:
        """Inline text whose white space collapses (as a browser shows HTML): runs of spaces and line breaks
        become one space, and no line starts with one."""
        # HTML's white space is ASCII only: a no-break space (&nbsp;) is a character to keep.
        collapsed = _HTML_WHITESPACE.sub(" ", text)
        if not collapsed:
            return
        if collapsed.startswith(" ") and (not self.length or self._tail(1) in (" ", "\n")):
            collapsed = collapsed[1:]
        self.append(collapsed)

    def heading(self, level: int, start: int) -> None:
        """Record a heading whose text runs from `start` to the current end."""
        heading = re.sub(r"\s+", " ", self.text_since(start)).strip()
        if heading:
            self.headings.append((heading, level, start))

    def text_since(self, start: int) -> str:
        return self._tail(self.length - start) if self.length > start else ""

    def finish(self, format_name: str) -> ParsedDocument:
        self._trim_trailing_spaces()
        text = "".join(self.parts).rstrip()
        return _finished(self.filename, format_name, text, [Page(1, 0, len(text))], self.headings)


def _too_long(filename: str) -> DocumentError:
    return DocumentError(
        f"{_capitalised(filename)} has more than {MAX_TEXT_CHARACTERS:,} characters of text: "
        "AIOS reads documents up to that length; split it into smaller documents."
    )


def _sections(headings: Iterable[tuple[str, int, int]], length: int) -> list[Section]:
    """Sections from (heading, level, start) in text order: each ends where the next heading of the same or a
    higher level starts."""
    ordered = sorted(headings, key=lambda item: item[2])
    ends = [length] * len(ordered)
    open_sections: list[int] = []  # indexes of sections not yet ended, their levels increasing
    for index, (_, level, start) in enumerate(ordered):
        while open_sections and ordered[open_sections[-1]][1] >= level:
            ends[open_sections.pop()] = start
        open_sections.append(index)
    return [
        Section(heading=heading, level=level, start=start, end=max(start, min(end, length)))
        for (heading, level, start), end in zip(ordered, ends, strict=True)
    ]


def _finished(
    filename: str, format_name: str, text: str, pages: list[Page], headings: Iterable[tuple[str, int, int]]
) -> ParsedDocument:
    if not text.strip():
        raise DocumentError(f"{_capitalised(filename)} has no text to read.")
    if len(text) > MAX_TEXT_CHARACTERS:
        raise _too_long(filename)
    return ParsedDocument(text=text, format=format_name, pages=pages, sections=_sections(headings, len(text)))


# --- PDF -----------------------------------------------------------------------------------------------------


@contextmanager
def pdf_opened(data: bytes) -> Iterator[pdfium.PdfDocument]:
    """The PDF open under PDFIUM_LOCK, closed on exit. PdfiumError escapes to the caller."""
    with PDFIUM_LOCK:
        document = pdfium.PdfDocument(data)
        try:
            yield document
        finally:
            document.close()


def pdf_page_characters(text_page: pdfium.PdfTextPage) -> list[tuple[str, int]]:
    """The page's text as (character, PDFium character index) pairs. Call it holding PDFIUM_LOCK.

    Read one character at a time, not with `get_text_range`, so every character of the text keeps the index of
    the PDFium character it came from (evidence boxes need it). Each character is cleaned as model steps clean
    their source (`clean_text`), so an extraction's source text is the document's text character for character
    and its evidence offsets hold. PDFium ends generated lines with "\\r\\n": the "\\r" goes. Surrogate pairs are
    joined. Trailing white space goes: a trailing line break would not survive rendering into a prompt.
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
            cleaned = clean_text(chr(code))
            if len(cleaned) == 1:
                characters.append((cleaned, index))
        index += width
    while characters and characters[-1][0].isspace():
        characters.pop()
    return characters


def _pdf_outline(document: pdfium.PdfDocument) -> list[tuple[str, int, int]]:
    """The PDF's bookmarks as (title, level from 1, page index)."""
    found = []
    try:
        for item in document.get_toc(max_depth=6):
            title = re.sub(r"\s+", " ", clean_text(item.get_title() or "")).strip()
            page_index = item.get_dest().get_index() if item.get_dest() is not None else None
            if title and page_index is not None:
                found.append((title, item.level + 1, page_index))
    except pdfium.PdfiumError:
        return []  # a damaged outline costs the sections, not the text
    return found


def _parse_pdf(data: bytes, filename: str) -> ParsedDocument:
    try:
        with pdf_opened(data) as document:
            page_count = len(document)
            if page_count > MAX_PAGES:
                raise DocumentError(
                    f"{_capitalised(filename)} has {page_count} pages: "
                    f"AIOS reads documents of at most {MAX_PAGES} pages."
                )
            texts, total = [], 0
            for number in range(page_count):
                page = document[number]
                text_page = page.get_textpage()
                texts.append("".join(character for character, _ in pdf_page_characters(text_page)))
                text_page.close()
                page.close()
                total += len(texts[-1]) + len(PAGE_SEPARATOR)
                if total > MAX_TEXT_CHARACTERS + len(PAGE_SEPARATOR):
                    raise _too_long(filename)
            outline = _pdf_outline(document)
    except pdfium.PdfiumError as error:
        if getattr(error, "err_code", None) in (pdfium_raw.FPDF_ERR_PASSWORD, pdfium_raw.FPDF_ERR_SECURITY):
            raise DocumentError(
                f"{_capitalised(filename)} is protected by a password: "
                "save it without the password and upload it again."
            ) from None
        raise DocumentError(f"{_capitalised(filename)} is not a PDF that can be read: it may be damaged.") from None
    if not any(text.strip() for text in texts):
        raise DocumentError(
            f"{_capitalised(filename)} has no text: it looks scanned, and AIOS does not read scans yet."
        )
    pages, position = [], 0
    for number, text in enumerate(texts, 1):
        pages.append(Page(number, position, position + len(text)))
        position += len(text) + len(PAGE_SEPARATOR)
    text = PAGE_SEPARATOR.join(texts)
    headings = []
    for title, level, page_index in outline:
        if not 0 <= page_index < len(pages):
            continue
        page = pages[page_index]
        # A bookmark names a page, not a place on it: the section starts where its title appears on that page,
        # else at the top of the page.
        found = text.find(title, page.start, page.end)
        headings.append((title, level, found if found >= 0 else page.start))
    return _finished(filename, "pdf", text, pages, headings)


# --- DOCX ----------------------------------------------------------------------------------------------------

_HEADING_STYLE = re.compile(r"heading ([1-9])", re.IGNORECASE)


def _check_archive(data: bytes, filename: str) -> None:
    """Refuse a ZIP archive that would unpack to too much, before anything is unpacked."""
    try:
        with zipfile.ZipFile(BytesIO(data)) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, ValueError, EOFError):
        raise DocumentError(f"{_capitalised(filename)} is a damaged Word document: open and save it again.") from None
    if len(entries) > MAX_ARCHIVE_ENTRIES:
        raise DocumentError(f"{_capitalised(filename)} has too many parts ({len(entries):,}) to be a Word document.")
    unpacked = sum(entry.file_size for entry in entries)
    if unpacked > MAX_UNPACKED_BYTES:
        raise DocumentError(
            f"{_capitalised(filename)} would unpack to {math.ceil(unpacked / 2**20):,} MB: "
            f"AIOS reads Word documents that unpack to at most {MAX_UNPACKED_BYTES // 2**20} MB."
        )


def _heading_level(paragraph: Any) -> int | None:
    """The heading level a paragraph's style gives it (Title 0, Heading n is n), following the styles it is
    based on, so a custom style built on "Heading 2" is a heading too."""
    style = paragraph.style
    for _ in range(5):
        if style is None:
            return None
        name = (style.name or "").strip()
        if name.lower() == "title":
            return 0
        match = _HEADING_STYLE.fullmatch(name)
        if match:
            return int(match.group(1))
        style = style.base_style
    return None


def _parse_docx(data: bytes, filename: str) -> ParsedDocument:
    """A Word document's body: paragraphs in order, headings from their styles, tables as rows of cells
    separated by " | ". One page: a DOCX has no fixed pages (Word lays them out when it shows the document).
    Headers, footers, footnotes, comments and text boxes are not read."""
    _check_archive(data, filename)
    import docx  # imported here: loading python-docx costs start-up time every other format does not need
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    try:
        document = docx.Document(BytesIO(data))
    except Exception:  # python-docx raises KeyError, ValueError, lxml errors... for damaged or odd packages
        raise DocumentError(
            f"{_capitalised(filename)} is not a Word document that can be read: it may be damaged."
        ) from None
    builder = _TextBuilder(filename)
    # Resolving a paragraph's style walks the whole style sheet each time: once per style is enough.
    levels: dict[str | None, int | None] = {}
    try:
        for block in document.iter_inner_content():
            if isinstance(block, Paragraph):
                text = clean_text(block.text).strip()
                if not text:
                    continue
                style_id = block._p.style
                if style_id not in levels:
                    levels[style_id] = _heading_level(block)
                level = levels[style_id]
                builder.blank_line()
                start = builder.length
                builder.append(text)
                if level is not None:
                    builder.heading(level, start)
            elif isinstance(block, Table):
                builder.blank_line()
                for row in block.rows:
                    cells, seen = [], set()
                    for cell in row.cells:
                        # A merged cell appears once per grid column it spans: read it once.
                        if id(cell._tc) in seen:
                            continue
                        seen.add(id(cell._tc))
                        cells.append(re.sub(r"\s*\n\s*", " ", clean_text(cell.text)).strip())
                    if any(cells):
                        builder.line_break()
                        builder.append(" | ".join(cells))
    except DocumentError:
        raise
    except Exception:
        raise DocumentError(
            f"{_capitalised(filename)} is not a Word document that can be read: it may be damaged."
        ) from None
    return builder.finish("docx")


# --- text decoding -------------------------------------------------------------------------------------------


def _decode(data: bytes, filename: str) -> str:
    """Bytes as text: UTF-8 (with or without a byte-order mark), UTF-16 or UTF-32 with a byte-order mark, else
    Windows-1252 (what older Windows programs save). Bytes that are none of these, or that decode to mostly
    control characters (a binary file), are a DocumentError."""
    for bom, encoding in (
        (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF32_LE, "utf-32"),
        (codecs.BOM_UTF32_BE, "utf-32"),
        (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"),
    ):
        if data.startswith(bom):
            try:
                return data.decode(encoding)
            except UnicodeDecodeError:
                raise DocumentError(
                    f"{_capitalised(filename)} is not valid {encoding.upper().replace('-SIG', '')} text: "
                    "save it as UTF-8 and upload it again."
                ) from None
    head = data[:8192]
    if head.count(b"\x00") > len(head) // 10:
        # Text in UTF-16 without a byte-order mark, or binary data: either way, not text to guess at.
        raise DocumentError(
            f"{_capitalised(filename)} is not text AIOS can read: save it as UTF-8 and upload it again."
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        if b"\x00" in head:
            raise DocumentError(
                f"{_capitalised(filename)} is not text AIOS can read: save it as UTF-8 and upload it again."
            ) from None
        try:
            text = data.decode("cp1252")
        except UnicodeDecodeError:
            raise DocumentError(
                f"{_capitalised(filename)} is not text AIOS can read: save it as UTF-8 and upload it again."
            ) from None
    sample = text[:8192]
    controls = sum(1 for character in sample if ord(character) < 32 and character not in "\t\n\r\f")
    if sample and controls > len(sample) // 10:
        raise DocumentError(f"{_capitalised(filename)} is not a text file: it looks like a program or binary data.")
    return text


# --- HTML ----------------------------------------------------------------------------------------------------


def _tags(names: str) -> frozenset[str]:
    return frozenset(names.split())


# Never read: code, styling, navigation, the page's head (its title is read on its own), embedded objects and
# form controls. Elements hidden from the reader are dropped too: text a person never sees is the classic hiding
# place for instructions aimed at a model.
_HTML_SKIPPED = _tags(
    "script style noscript template nav head svg math iframe object embed canvas select datalist button input textarea"
)
_HTML_PARAGRAPHS = _tags("p h1 h2 h3 h4 h5 h6 blockquote pre table ul ol dl figure hr address section article")
_HTML_LINES = _tags(
    "div main header footer aside li dt dd tr caption figcaption form fieldset legend details summary tbody thead tfoot"
)
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.IGNORECASE)
_META_CHARSET = re.compile(rb"""<meta[^>]{0,200}?charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]{1,40})""", re.IGNORECASE)
_XML_DECLARATION = re.compile(r"^\s*<\?xml[^>]{0,200}\?>")


def _decode_html(data: bytes, filename: str) -> str:
    if data.startswith(_TEXT_BOMS):
        return _decode(data, filename)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    match = _META_CHARSET.search(data[:4096])
    if match:
        try:
            return data.decode(match.group(1).decode("ascii"), errors="replace")
        except LookupError:
            pass  # a charset Python does not know: fall back as for plain text
    return _decode(data, filename)


def _hidden(element: Any) -> bool:
    if element.get("hidden") is not None or (element.get("aria-hidden") or "").lower() == "true":
        return True
    return bool(_HIDDEN_STYLE.search(element.get("style") or ""))


def _parse_html(data: bytes, filename: str) -> ParsedDocument:
    """An HTML page's visible text: headings h1-h6 are sections, block elements end lines, list items start
    with "- ", table cells are separated by " | ", entities are decoded, and the page's title comes first
    (level-0 section) unless the first heading says the same. Parsed with lxml's HTML parser, which fetches
    nothing, runs nothing and keeps no comments."""
    import lxml.html
    from lxml import etree

    markup = _XML_DECLARATION.sub("", _decode_html(data, filename), count=1)
    if not markup.strip():
        raise DocumentError(f"{_capitalised(filename)} has no text to read.")
    parser = lxml.html.HTMLParser(remove_comments=True, remove_pis=True, no_network=True)
    try:
        root = lxml.html.document_fromstring(markup, parser=parser)
    except (etree.ParserError, ValueError):
        raise DocumentError(f"{_capitalised(filename)} is not an HTML page that can be read.") from None
    if any(error.type_name == "ERR_RESOURCE_LIMIT" for error in parser.error_log):
        # libxml2 stops at 256 nested elements and drops the rest: refuse rather than lose text unseen.
        raise DocumentError(
            f"{_capitalised(filename)} nests its elements too deeply (more than 256 levels) to be read."
        )
    title_element = root.find("./head/title")
    title = re.sub(r"\s+", " ", clean_text(title_element.text_content())).strip() if title_element is not None else ""
    builder = _TextBuilder(filename)
    if title:
        builder.append(title)
        builder.heading(0, 0)
    heading_starts: dict[int, int] = {}
    in_pre = 0
    in_row_cells: list[bool] = []
    walker = etree.iterwalk(root, events=("start", "end"))
    for event, element in walker:
        tag = element.tag if isinstance(element.tag, str) else ""
        tag = tag.lower().rsplit("}", 1)[-1]
        if event == "start":
            if tag in _HTML_SKIPPED or _hidden(element):
                walker.skip_subtree()
                element.set("data-aios-skipped", "1")  # the end event comes all the same; only its tail counts
                continue
            if tag in _HTML_PARAGRAPHS:
                builder.blank_line()
            elif tag in _HTML_LINES or tag == "br":
                builder.line_break()
            if tag == "tr":
                in_row_cells.append(False)
            elif tag in ("td", "th"):
                if in_row_cells and in_row_cells[-1]:
                    builder.append(" | ")
                if in_row_cells:
                    in_row_cells[-1] = True
            elif tag == "li":
                builder.append("- ")
            elif tag == "pre":
                in_pre += 1
            if tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
                heading_starts[id(element)] = builder.length
            if element.text:
                _html_text(builder, element.text, in_pre)
        else:
            skipped = element.get("data-aios-skipped") == "1"
            if not skipped:
                if tag in ("h1", "h2", "h3", "h4", "h5", "h6") and id(element) in heading_starts:
                    builder.heading(int(tag[1]), heading_starts.pop(id(element)))
                if tag == "pre":
                    in_pre -= 1
                if tag == "tr" and in_row_cells:
                    in_row_cells.pop()
                if tag in _HTML_PARAGRAPHS:
                    builder.blank_line()
                elif tag in _HTML_LINES:
                    builder.line_break()
            if element.tail:
                _html_text(builder, element.tail, in_pre)
    parsed = builder.finish("html")
    if title and len(parsed.sections) > 1 and parsed.sections[1].heading == title:
        # The title repeats the first heading: keep it once.
        return _without_title(parsed, filename)
    return parsed


def _without_title(parsed: ParsedDocument, filename: str) -> ParsedDocument:
    first = parsed.sections[1].start
    text = parsed.text[first:]
    headings = [(section.heading, section.level, section.start - first) for section in parsed.sections[1:]]
    return _finished(filename, "html", text, [Page(1, 0, len(text))], headings)


def _html_text(builder: _TextBuilder, text: str, in_pre: int) -> None:
    text = clean_text(text)
    if in_pre:
        builder.append(text)
    else:
        builder.words(text)


# --- Markdown and plain text ---------------------------------------------------------------------------------

_ATX_HEADING = re.compile(r" {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*")
_SETEXT_UNDERLINE = re.compile(r" {0,3}(=+|-+)[ \t]*")
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})(.*)")


def _markdown_headings(text: str) -> list[tuple[str, int, int]]:
    """ATX (`# Title`) and Setext (a line underlined with `===` or `---`) headings, outside fenced code."""
    headings: list[tuple[str, int, int]] = []
    fence: str | None = None
    previous: tuple[str, int] | None = None  # the previous line, if it could be a Setext heading's text
    position = 0
    for line in text.split("\n"):
        start, position = position, position + len(line) + 1
        opening = _FENCE.fullmatch(line)
        if fence is not None:
            if (
                opening
                and opening.group(1)[0] == fence[0]
                and len(opening.group(1)) >= len(fence)
                and not opening.group(2).strip()
            ):
                fence = None
            previous = None
            continue
        if opening and not (opening.group(1)[0] == "`" and "`" in opening.group(2)):
            fence = opening.group(1)
            previous = None
            continue
        atx = _ATX_HEADING.fullmatch(line)
        if atx:
            heading = (atx.group(2) or "").strip()
            if heading:
                headings.append((heading, len(atx.group(1)), start))
            previous = None
            continue
        underline = _SETEXT_UNDERLINE.fullmatch(line)
        if underline and previous is not None:
            headings.append((previous[0], 1 if underline.group(1)[0] == "=" else 2, previous[1]))
            previous = None
            continue
        stripped = line.strip()
        # A Setext heading's text is a paragraph line: not blank, not indented code, not a list item or quote.
        if stripped and not line.startswith("    ") and not re.match(r"\s{0,3}([-*+>]|\d{1,9}[.)])(\s|$)", line):
            previous = (stripped, start)
        else:
            previous = None
    return headings


def _parse_plain(data: bytes, filename: str, format_name: str) -> ParsedDocument:
    """Plain text and Markdown as they are (Markdown is readable as it stands), newlines normalised; Markdown
    headings are sections."""
    text = clean_text(_decode(data, filename)).strip("\n")
    text = "\n".join(line.rstrip() for line in text.split("\n")) if format_name == "text" else text
    headings = _markdown_headings(text) if format_name == "markdown" else []
    return _finished(filename, format_name, text, [Page(1, 0, len(text))], headings)


# --- CSV -----------------------------------------------------------------------------------------------------


def _csv_delimiter(text: str) -> str:
    """The delimiter the table uses, sniffed from its start: comma unless a semicolon, tab or bar fits better.
    Only the delimiter is sniffed: quoting is RFC 4180's (double quotes, doubled inside), which every
    spreadsheet writes, and the sniffer's guesses about quoting are wrong more often than the rule is."""
    try:
        return csv.Sniffer().sniff(text[:65536], delimiters=",;\t|").delimiter
    except csv.Error:
        return ","


def _parse_csv(data: bytes, filename: str) -> ParsedDocument:
    """A table as one line per row, each cell named by its column: "Columns: a; b" first, then lines like
    "a: 1; b: x". Read that way, a row keeps its meaning wherever a chunker cuts the text and a model never has
    to count commas. The first row is the header (a column without a name is "column n"); empty cells are left
    out; line breaks inside a cell become spaces. The delimiter (comma, semicolon, tab or bar) is sniffed from
    the start of the file (a .tsv file uses tabs); quoting follows RFC 4180."""
    text = clean_text(_decode(data, filename))
    delimiter = "\t" if _extension(filename) == ".tsv" else _csv_delimiter(text)
    # Unlimited field size: the file's own size limit is the bound, and a long cell is not an error.
    csv.field_size_limit(MAX_DOCUMENT_BYTES)
    rows = csv.reader(StringIO(text), csv.excel, delimiter=delimiter)
    builder = _TextBuilder(filename)
    try:
        header = next(rows, None)
        if header is None:
            raise DocumentError(f"{_capitalised(filename)} has no text to read.")
        columns = [re.sub(r"\s+", " ", name).strip() or f"column {index}" for index, name in enumerate(header, 1)]
        builder.append("Columns: " + "; ".join(columns))
        builder.blank_line()
        for row in rows:
            cells = []
            for index, value in enumerate(row):
                value = re.sub(r"\s+", " ", value).strip()
                if value:
                    name = columns[index] if index < len(columns) else f"column {index + 1}"
                    cells.append(f"{name}: {value}")
            if cells:
                builder.line_break()
                builder.append("; ".join(cells))
    except csv.Error as error:
        raise DocumentError(f"{_capitalised(filename)} is not a CSV table that can be read: {error}.") from None
    return builder.finish("csv")


# --- the entry point -----------------------------------------------------------------------------------------

_PARSERS = {
    "pdf": _parse_pdf,
    "docx": _parse_docx,
    "html": _parse_html,
    "csv": _parse_csv,
}


def parse_document(
    data: bytes, *, filename: str, content_type: str | None = None, format: str = "auto"
) -> ParsedDocument:
    """The text, pages and sections of a document (see the module docstring); DocumentError naming the
    document when it cannot be read. `format` "auto" detects it (`detect_format`); a key of SUPPORTED_FORMATS
    reads the bytes as that format, though a PDF or Word document is still only read as itself, and text is
    never read as a PDF or Word document."""
    if len(data) > MAX_DOCUMENT_BYTES:
        raise DocumentError(too_big_message(filename, len(data)))
    if not data:
        raise DocumentError(f"{_capitalised(filename)} is empty.")
    if format == "auto":
        format_name = detect_format(data, filename, content_type)
    elif format in SUPPORTED_FORMATS:
        actual = _content_format(data, filename)
        if actual != format and (actual is not None or format in BINARY_FORMATS):
            label = SUPPORTED_FORMATS[format].label
            raise DocumentError(f"{_capitalised(filename)} is not {label}.")
        format_name = format
    else:
        raise DocumentError(
            f'"{format}" is not a document format AIOS reads: use one of {", ".join(SUPPORTED_FORMATS)}.'
        )
    parser = _PARSERS.get(format_name)
    if parser is not None:
        return parser(data, filename)
    return _parse_plain(data, filename, format_name)
