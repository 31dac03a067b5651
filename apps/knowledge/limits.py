"""What a document upload may be: the formats and size the parser reads (apps.knowledge.parsing), said once
for the services, the pages and the API."""

from __future__ import annotations

from apps.knowledge import parsing

MAX_UPLOAD_BYTES = parsing.MAX_DOCUMENT_BYTES


def upload_refusal(*, name: str, content_type: str | None, data: bytes) -> str | None:
    """Why this upload is refused (too large, empty, or not a format AIOS reads), or None. Checks the bytes'
    format as the parser will, so a file refused here would never have been read."""
    if len(data) > MAX_UPLOAD_BYTES:
        return parsing.too_big_message(name, len(data))
    if not data:
        return f'"{name}" is empty.'
    try:
        parsing.detect_format(data, name, content_type)
    except parsing.DocumentError as error:
        return error.message
    return None


def limits_sentence() -> str:
    """The limits as the upload form states them."""
    return f"{parsing.supported_formats_sentence()}; at most {MAX_UPLOAD_BYTES // 2**20} MB each."


def accept_attribute() -> str:
    """For the file input's `accept` attribute."""
    return parsing.accept_attribute()
