"""Documents to text (apps.knowledge.parsing): every format with its traps, format detection by content first,
and every refusal with the message a person reads. No database: parsing is pure.

The sample documents come from tests.support.documents: PDFs written byte by byte (one really encrypted with a
password), Word documents written with python-docx, the rest as text with the traps of each format.
"""

from __future__ import annotations

import codecs
import io
import math
import zipfile

import pypdfium2 as pdfium
import pytest

from apps.knowledge import parsing
from apps.knowledge.parsing import (
    MAX_DOCUMENT_BYTES,
    MAX_TEXT_CHARACTERS,
    PAGE_SEPARATOR,
    DocumentError,
    Page,
    ParsedDocument,
    Section,
    clean_text,
    detect_format,
    parse_document,
)
from apps.steps.guardrails import sanitise_output
from tests.support.documents import (
    SAMPLE_CSV,
    SAMPLE_DOCX_BLOCKS,
    SAMPLE_HTML,
    SAMPLE_MARKDOWN,
    SAMPLE_TEXT,
    docx_bomb,
    docx_of,
    pdf_of,
)

CLAIM_PAGES = (
    ["Claimant: Daniel Park. Policy POL-48230.", "My bicycle was stolen from our locked garage."],
    ["Police report", "The bicycle cost EUR 640.00 last spring."],
)


def refused(data: bytes, filename: str, **kwargs: object) -> str:
    with pytest.raises(DocumentError) as error:
        parse_document(data, filename=filename, **kwargs)  # type: ignore[arg-type]
    assert str(error.value) == error.value.message
    return error.value.message


def sections_of(parsed: ParsedDocument) -> list[tuple[str, int, str]]:
    """Each section as (heading, level, its text's first line), checking that its text starts with its heading
    (or, for a PDF bookmark whose title is not on the page, with the page)."""
    found = []
    for section in parsed.sections:
        body = parsed.text[section.start : section.end]
        found.append((section.heading, section.level, body.split("\n", 1)[0]))
    return found


# --- PDF -----------------------------------------------------------------------------------------------------


def test_a_pdf_reads_page_by_page_with_its_bookmarks_as_sections():
    data = pdf_of(*CLAIM_PAGES, outline=[("Claimant", 0), ("Police report", 1)])
    parsed = parse_document(data, filename="claim.pdf", content_type="application/pdf")
    assert parsed.format == "pdf"
    page_texts = ["\n".join(lines) for lines in CLAIM_PAGES]
    assert parsed.text == PAGE_SEPARATOR.join(page_texts)
    assert [parsed.text[page.start : page.end] for page in parsed.pages] == page_texts
    assert [page.number for page in parsed.pages] == [1, 2]
    # A bookmark's section starts where its title stands on its page and runs to the next bookmark.
    assert parsed.sections == [
        Section("Claimant", 1, 0, parsed.pages[1].start),
        Section("Police report", 1, parsed.pages[1].start, len(parsed.text)),
    ]


def test_a_pdf_without_bookmarks_has_no_sections_and_a_bookmark_whose_title_is_not_on_its_page_starts_it():
    assert parse_document(pdf_of(*CLAIM_PAGES), filename="claim.pdf").sections == []
    parsed = parse_document(pdf_of(*CLAIM_PAGES, outline=[("Costs", 1)]), filename="claim.pdf")
    assert parsed.sections == [Section("Costs", 1, parsed.pages[1].start, len(parsed.text))]


def test_an_encrypted_pdf_is_refused_naming_it_though_it_opens_with_its_password():
    data = pdf_of(*CLAIM_PAGES, password="s3cret")
    # The sample is really encrypted: with its password PDFium reads the text; without it, nothing.
    with parsing.PDFIUM_LOCK:
        document = pdfium.PdfDocument(data, password="s3cret")
        try:
            assert "POL-48230" in document[0].get_textpage().get_text_range()
        finally:
            document.close()
    assert b"POL-48230" not in data
    assert refused(data, "C:\\claims\\claim.pdf") == (
        '"claim.pdf" is protected by a password: save it without the password and upload it again.'
    )
    assert refused(pdf_of(*CLAIM_PAGES, encrypt=True), "claim.pdf").startswith('"claim.pdf" is protected by a password')


def test_a_scan_a_damaged_pdf_and_too_many_pages_are_refused():
    assert refused(pdf_of(["x"], drawing_only=True), "scan.pdf") == (
        '"scan.pdf" has no text: it looks scanned, and AIOS does not read scans yet.'
    )
    assert refused(b"%PDF-1.7\n1 0 obj garbage", "broken.pdf") == (
        '"broken.pdf" is not a PDF that can be read: it may be damaged.'
    )
    assert refused(pdf_of(*[["a page"]] * 201), "long.pdf") == (
        '"long.pdf" has 201 pages: AIOS reads documents of at most 200 pages.'
    )
    assert len(parse_document(pdf_of(*[["a page"]] * 200), filename="ok.pdf").pages) == 200


# --- DOCX ----------------------------------------------------------------------------------------------------


def test_a_word_document_reads_its_headings_as_sections_and_its_tables_as_rows():
    parsed = parse_document(docx_of(*SAMPLE_DOCX_BLOCKS), filename="policy.docx")
    assert parsed.format == "docx"
    assert parsed.text == (
        "Expense policy\n\n"
        "This policy applies to every employee.\n\n"
        "Travel\n\nBook the cheapest reasonable fare.\n\n"
        "Hotels\n\nUp to EUR 150 a night.\n\n"
        "Item | Limit | Approver\nMeals | EUR 60, per day | Manager\nTaxi | EUR 40 | None\n\n"
        "Equipment\n\nLaptops are ordered by IT."
    )
    assert parsed.pages == [Page(1, 0, len(parsed.text))]
    assert sections_of(parsed) == [
        ("Expense policy", 0, "Expense policy"),
        ("Travel", 1, "Travel"),
        ("Hotels", 2, "Hotels"),
        ("Equipment", 1, "Equipment"),
    ]
    travel, hotels = parsed.sections[1], parsed.sections[2]
    # A section runs to the next heading of its level or above: Travel holds Hotels and the table.
    assert parsed.text[travel.start : travel.end].endswith("Taxi | EUR 40 | None\n\n")
    assert hotels.end == travel.end == parsed.sections[3].start
    assert parsed.sections[0].end == len(parsed.text)


def test_a_word_zip_bomb_is_refused_before_it_is_unpacked():
    bomb = docx_bomb(150)
    assert len(bomb) < 1024 * 1024  # a small upload...
    unpacked = sum(entry.file_size for entry in zipfile.ZipFile(io.BytesIO(bomb)).infolist())
    assert unpacked > 150 * 2**20  # ...that would fill 150 MB and more
    assert refused(bomb, "bomb.docx") == (
        f'"bomb.docx" would unpack to {math.ceil(unpacked / 2**20)} MB: '
        "AIOS reads Word documents that unpack to at most 100 MB."
    )


def test_other_zip_files_and_old_office_files_are_refused_by_what_they_are():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("xl/workbook.xml", "<workbook/>")
    assert refused(buffer.getvalue(), "figures.docx") == (
        '"figures.docx" is an Excel workbook: save it as CSV and upload that.'
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes.txt", "hello")
    assert refused(buffer.getvalue(), "notes.zip").startswith('"notes.zip" is a ZIP archive, not a document')
    ole = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 512
    assert refused(ole, "old.doc") == (
        '"old.doc" is an older Office file or one protected by a password: '
        "save it as .docx without a password and upload it again."
    )
    damaged = docx_of(("paragraph", "x"))[:-200]
    assert "damaged" in refused(damaged, "cut.docx")


# --- HTML ----------------------------------------------------------------------------------------------------


def test_html_keeps_the_visible_text_and_drops_code_navigation_and_hidden_text():
    parsed = parse_document(SAMPLE_HTML.encode(), filename="returns.html")
    assert parsed.format == "html"
    assert parsed.text == (
        "Returns & refunds\n\n"
        "Returns\n\n"
        "Items can be returned within 30\u00a0days of delivery.\n\n"
        "How to return\n\n"
        "- Open your order.\n- Choose \u201cReturn\u201d.\n\n"
        "Item | Window\nShoes | 30 days\n\n"
        "Refunds\n\n"
        "Refunds take 5\u20137 business days.\nQuestions? Write to us.\n\n"
        "  line one\n  line two"
    )
    for hidden in ("IGNORE", "Ignore all previous", "steal", "Home", "12345", "color"):
        assert hidden not in parsed.text
    assert sections_of(parsed) == [
        ("Returns & refunds", 0, "Returns & refunds"),
        ("Returns", 1, "Returns"),
        ("How to return", 2, "How to return"),
        ("Refunds", 2, "Refunds"),
    ]


def test_an_html_title_that_repeats_the_first_heading_is_kept_once_and_charsets_are_honoured():
    page = (
        "<html><head><title>Prices</title></head><body><h1>Prices</h1><p>Caf\xe9 cr\xe8me: 3 \u20ac</p></body></html>"
    )
    parsed = parse_document(page.encode("utf-8"), filename="prices.htm")
    assert parsed.text == "Prices\n\nCaf\xe9 cr\xe8me: 3 \u20ac"
    assert parsed.sections == [Section("Prices", 1, 0, len(parsed.text))]
    latin = page.replace("<head>", '<head><meta charset="iso-8859-15">').encode("iso-8859-15")
    assert parse_document(latin, filename="prices.html").text == parsed.text
    xhtml = '<?xml version="1.0" encoding="utf-8"?>\n' + page
    assert parse_document(xhtml.encode(), filename="prices.xhtml").text == parsed.text
    assert refused(b"<html><body><script>x()</script></body></html>", "empty.html") == (
        '"empty.html" has no text to read.'
    )
    # Past 256 nested elements the HTML parser gives up on the rest: refused, rather than text lost unseen.
    deep = b"<p>start</p>" + b"<div>" * 300 + b"deep" + b"</div>" * 300 + b"<p>end</p>"
    assert refused(deep, "deep.html") == '"deep.html" nests its elements too deeply (more than 256 levels) to be read.'
    fine = b"<p>start</p>" + b"<div>" * 200 + b"deep" + b"</div>" * 200 + b"<p>end</p>"
    assert parse_document(fine, filename="fine.html").text == "start\n\ndeep\n\nend"


# --- Markdown and text ---------------------------------------------------------------------------------------


def test_markdown_is_read_as_it_is_and_its_headings_outside_code_fences_are_sections():
    parsed = parse_document(SAMPLE_MARKDOWN.encode(), filename="handbook.md")
    assert parsed.format == "markdown"
    assert parsed.text == SAMPLE_MARKDOWN.strip("\n")
    assert sections_of(parsed) == [
        ("Support handbook", 1, "# Support handbook"),
        ("Escalations", 2, "Escalations"),
        ("Refunds", 2, "## Refunds ##"),
        ("Exceptions", 3, "### Exceptions"),
    ]
    escalations, refunds = parsed.sections[1], parsed.sections[2]
    assert escalations.end == refunds.start
    assert "Fake" in parsed.text[escalations.start : escalations.end]  # "Fake\n====" sits in a ~~~ fence
    assert parsed.sections[0].end == refunds.end == parsed.sections[3].end == len(parsed.text)


def test_plain_text_in_utf8_utf16_or_windows_1252_reads_the_same_with_newlines_normalised_and_nul_removed():
    expected = "Claim POL-48230\nThe bicycle cost EUR 640.00.\nR\xe9paration: non."
    for data in (
        SAMPLE_TEXT.encode("utf-8"),
        codecs.BOM_UTF8 + SAMPLE_TEXT.encode("utf-8"),
        SAMPLE_TEXT.encode("utf-16"),  # with its byte-order mark
        codecs.BOM_UTF16_BE + SAMPLE_TEXT.encode("utf-16-be"),
        SAMPLE_TEXT.replace("\x00", "").encode("cp1252"),
    ):
        parsed = parse_document(data, filename="claim.txt")
        assert (parsed.text, parsed.format, parsed.sections) == (expected, "text", [])
        assert parsed.pages == [Page(1, 0, len(expected))]


def test_binary_data_and_broken_utf16_are_not_text():
    assert refused(bytes(range(256)) * 40, "data.txt") == (
        '"data.txt" is not text AIOS can read: save it as UTF-8 and upload it again.'
    )
    assert refused("claim".encode("utf-16-le"), "claim.txt") == (
        '"claim.txt" is not text AIOS can read: save it as UTF-8 and upload it again.'
    )
    assert refused(b"\x01\x02\x03\x04abc\x05\x06\x07\x08" * 100, "blob.txt") == (
        '"blob.txt" is not a text file: it looks like a program or binary data.'
    )
    assert refused(codecs.BOM_UTF16_LE + b"\x00\xd8", "odd.txt") == (
        '"odd.txt" is not valid UTF-16 text: save it as UTF-8 and upload it again.'
    )


def test_cleaning_removes_exactly_what_model_steps_remove():
    # Document text must be a fixed point of the model steps' own cleaning, or evidence offsets would drift.
    mismatched = [hex(code) for code in range(0x110000) if clean_text(chr(code)) != sanitise_output(chr(code))]
    assert mismatched == []
    dirty = "a\u200bb\u202ec\x00d\r\ne\rf\u0065\u0301\U000e0041"
    assert clean_text(dirty) == sanitise_output(dirty) == "abcd\ne\nf\xe9"


# --- CSV -----------------------------------------------------------------------------------------------------


def test_a_csv_table_reads_one_line_per_row_with_each_cell_named_by_its_column():
    parsed = parse_document(SAMPLE_CSV.encode(), filename="products.csv")
    assert parsed.format == "csv"
    assert parsed.text == (
        "Columns: sku; name; price; description\n\n"
        'sku: SKU-1; name: Trail shoe, men; price: 89.90; description: Light, grippy; "fast"\n'
        "sku: SKU-2; name: Rain jacket; price: 120.00\n"
        "sku: SKU-3; name: Socks, 3 pairs; price: 12.50; description: Wool blend"
    )


def test_a_csv_delimiter_is_sniffed_and_extra_cells_get_a_column_name():
    semicolons = 'Artikel;Preis;Notiz\nSchuh;89,90;"leicht; schnell"\nJacke;120,00;;extra\n'
    parsed = parse_document(semicolons.encode("cp1252"), filename="preise.csv", content_type="text/csv")
    assert parsed.text.split("\n")[2:] == [
        "Artikel: Schuh; Preis: 89,90; Notiz: leicht; schnell",
        "Artikel: Jacke; Preis: 120,00; column 4: extra",
    ]
    tabs = "a\tb\n1,5\t2\n"
    assert parse_document(tabs.encode(), filename="t.tsv").text.endswith("a: 1,5; b: 2")


# --- detection and limits ------------------------------------------------------------------------------------


def test_the_format_is_decided_by_content_first_then_name_then_content_type():
    pdf = pdf_of(["Hello"])
    assert detect_format(pdf, "misnamed.txt", "text/plain") == "pdf"
    assert detect_format(docx_of(("paragraph", "x")), "upload", "application/octet-stream") == "docx"
    assert detect_format(b"# Title", "notes.md", None) == "markdown"
    assert detect_format(b"# Title", "notes", "text/markdown; charset=utf-8") == "markdown"
    assert detect_format(b"a,b\n1,2", "upload.CSV", None) == "csv"
    assert detect_format(b"  <!DOCTYPE html><p>x", "page", None) == "html"
    assert detect_format(b"just words", "README", None) == "text"
    assert detect_format(b"just words", "page.html", "text/plain") == "html"  # the name before the claimed type
    with pytest.raises(DocumentError, match=r'^"report.docx" is not a Word document: its name ends in \.docx'):
        detect_format(b"plain words", "report.docx", None)
    with pytest.raises(DocumentError, match=r'^"upload" is not a PDF\.$'):
        detect_format(b"plain words", "upload", "application/pdf")
    with pytest.raises(DocumentError, match=r'^"tool.exe" is not a document AIOS reads: upload a PDF, Word'):
        detect_format(b"MZ\x90\x00", "tool.exe", "application/octet-stream")
    with pytest.raises(DocumentError, match="is an image"):
        detect_format(b"\x89PNG\r\n\x1a\n....", "scan.pdf", "application/pdf")


def test_a_fixed_format_reads_text_as_that_format_but_never_bytes_as_what_they_are_not():
    assert parse_document(b"a;b\n1;2", filename="x.txt", format="csv").text.endswith("a: 1; b: 2")
    assert parse_document(b"<h1>T</h1>", filename="x.txt", format="text").text == "<h1>T</h1>"
    assert refused(b"plain", "x.txt", format="pdf") == '"x.txt" is not a PDF.'
    assert refused(pdf_of(["Hello"]), "x.pdf", format="text") == '"x.pdf" is not plain text.'
    assert refused(b"x", "x.txt", format="rtf").startswith('"rtf" is not a document format AIOS reads')


def test_size_and_length_limits_are_refused_with_the_limit():
    assert refused(b"a" * (MAX_DOCUMENT_BYTES + 1), "big.txt") == (
        '"big.txt" is 20.1 MB: AIOS reads documents of at most 20 MB.'
    )
    assert refused(b"", "empty.txt") == '"empty.txt" is empty.'
    assert refused(b"\n \n\t\n", "blank.md") == '"blank.md" has no text to read.'
    long_text = b"word " * (MAX_TEXT_CHARACTERS // 5 + 1)
    message = f'"long.txt" has more than {MAX_TEXT_CHARACTERS:,} characters of text'
    assert refused(long_text, "long.txt").startswith(message)
    # A table's text grows with its column names: the limit holds for what it becomes, not what it was.
    wide = b"a_rather_long_column_name,another_long_column_name\n" + b"1,2\n" * 300_000
    assert len(wide) < MAX_TEXT_CHARACTERS
    assert refused(wide, "wide.csv").startswith('"wide.csv" has more than')


def test_names_in_messages_lose_folders_and_control_characters_and_stay_short():
    assert refused(b"", "/tmp/uploads/\x1b[31mred.txt") == '"[31mred.txt" is empty.'
    long_name = "n" * 200 + ".txt"
    assert refused(b"", long_name) == f'"{"n" * 77}..." is empty.'
    assert refused(b"", "") == "The document is empty."
