"""The development server's tokenizer: deterministic, dependency-free, and honest about what it is.

It is not a model's tokenizer. It cuts text into word-sized pieces that keep their leading whitespace
(`"Hello world"` -> `["Hello", " world"]`), so joining the pieces gives back the exact text, token
counts grow with the text the way real ones do, and streamed tokens read naturally in a browser.
Ids come from a stable hash, so the same piece always has the same id in every process.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

VOCAB_SIZE = 32000
# Llama-style special ids. Ordinary pieces never hash onto them (see `token_id`).
UNK_ID = 0
BOS_ID = 1
EOS_ID = 2
EOS_TEXT = "</s>"
FIRST_ORDINARY_ID = 3

# Words (with their leading whitespace), runs of punctuation (same), and trailing whitespace. Every
# character falls in exactly one class, so the pieces always cover the whole text.
_PIECE = re.compile(r"\s*\w+|\s*[^\w\s]+|\s+")


@dataclass(frozen=True, slots=True)
class Piece:
    """One token of an input text, with character offsets into that text."""

    id: int
    text: str
    start: int
    stop: int


def _digest(text: str, salt: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=salt).digest(), "big")


def split(text: str) -> list[str]:
    """The pieces of `text`; `"".join(split(text)) == text` always holds."""
    return _PIECE.findall(text)


def token_id(piece: str) -> int:
    """A stable id in `[3, VOCAB_SIZE)` for an ordinary piece."""
    return FIRST_ORDINARY_ID + _digest(piece, b"aios-id") % (VOCAB_SIZE - FIRST_ORDINARY_ID)


def token_logprob(piece: str, position: int) -> float:
    """A deterministic, strictly negative log-probability for a generated piece.

    Rounded to 4 decimals so it prints identically as an f32 (what TGI serialises) and as a Python float.
    """
    spread = _digest(f"{position}:{piece}", b"aios-lp") % 2000
    return -round(0.0101 + spread / 1000.0, 4)


def jitter(piece: str, position: int) -> float:
    """A deterministic value in `[-1, 1]` for a generated piece, to vary scripted log-probabilities."""
    return (_digest(f"{position}:{piece}", b"aios-jitter") % 2001) / 1000.0 - 1.0


def tokenize(text: str) -> list[Piece]:
    """The pieces of `text` with ids and character offsets (what `/tokenize` returns)."""
    pieces: list[Piece] = []
    offset = 0
    for match in _PIECE.finditer(text):
        piece = match.group(0)
        pieces.append(Piece(id=token_id(piece), text=piece, start=offset, stop=offset + len(piece)))
        offset += len(piece)
    return pieces


def count(text: str) -> int:
    """How many tokens `text` is, without building the pieces."""
    return sum(1 for _ in _PIECE.finditer(text))
