"""Cutting a parsed document into passages ("chunks") of a token budget, with overlap, along its sections.

Token counts are an approximation: the runtime has no tokenizer package (the embedding server tokenizes). A run
of letters counts one token per five letters, rounded up; a run of digits one per two digits; every other
symbol one. Measured against all-MiniLM-L6-v2's WordPiece tokenizer on English product documentation, this is
a median 1.12 times the real count and never below 0.99 times it, so a passage sized by it stays inside the
model's 256-token input with the default budget (180) and room for its heading.

Passages never cross a section boundary: each section's text is cut on its own, and each passage carries its
heading path ("Billing › Refunds"), which is embedded with it and searched (weighted above the text) by full
text. Within a section, sentences are packed greedily up to the budget; the sentences at the end of one passage
that fit in the overlap budget open the next one. A sentence longer than the budget is cut by words.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

HEADING_SEPARATOR = " › "

_PIECE = re.compile(r"[^\W\d_]+|\d+|[^\w\s]|_", re.UNICODE)
_SENTENCE_END = re.compile(r"(?<=[.!?:;])\s+|\n\s*\n|\n(?=\s*(?:[-*•]|\d+[.)])\s)")
_WORD = re.compile(r"\S+")


def count_tokens(text: str) -> int:
    """The approximate token count of `text` (see the module docstring)."""
    total = 0
    for match in _PIECE.finditer(text):
        piece = match.group()
        if piece[0].isalpha():
            total += math.ceil(len(piece) / 5)
        elif piece[0].isdigit():
            total += math.ceil(len(piece) / 2)
        else:
            total += 1
    return total


@dataclass(frozen=True)
class Passage:
    """One chunk as cut: its text, character span in the document's text, page and heading path."""

    text: str
    start: int
    end: int
    heading: str
    page: int | None
    token_count: int

    @property
    def embedding_text(self) -> str:
        """What is embedded: the heading path, then the passage, so a passage knows where it sits."""
        return f"{self.heading}\n{self.text}" if self.heading else self.text


def _attr(item: Any, name: str) -> Any:
    return item[name] if isinstance(item, dict) else getattr(item, name)


def _spans(length: int, sections: Sequence[Any]) -> list[tuple[int, int, str]]:
    """(start, end, heading path) spans that tile the text, one per section start (and the text before the
    first section). Nested sections end where the next section starts, whatever its level: each span's path
    is the stack of the headings above it."""
    ordered = sorted(sections, key=lambda section: (_attr(section, "start"), _attr(section, "level")))
    boundaries: list[tuple[int, str]] = [(0, "")]
    stack: list[tuple[int, str]] = []
    for section in ordered:
        level, heading = int(_attr(section, "level")), " ".join(str(_attr(section, "heading")).split())
        start = max(0, min(length, int(_attr(section, "start"))))
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, heading))
        path = HEADING_SEPARATOR.join(h for _, h in stack if h)
        if boundaries and boundaries[-1][0] == start:
            boundaries[-1] = (start, path)
        else:
            boundaries.append((start, path))
    spans = []
    for index, (start, path) in enumerate(boundaries):
        end = boundaries[index + 1][0] if index + 1 < len(boundaries) else length
        if end > start:
            spans.append((start, end, path))
    return spans


def _units(text: str, start: int, end: int, budget: int) -> Iterator[tuple[int, int, int]]:
    """(start, end, tokens) of the sentences in text[start:end], trimmed; sentences over `budget` cut by words."""
    position = start
    boundaries = [m for m in _SENTENCE_END.finditer(text, start, end)]
    for stop in [*(m.start() for m in boundaries), end]:
        piece_start, piece_end = position, stop
        position = stop
        while piece_start < piece_end and text[piece_start].isspace():
            piece_start += 1
        while piece_end > piece_start and text[piece_end - 1].isspace():
            piece_end -= 1
        if piece_start >= piece_end:
            continue
        tokens = count_tokens(text[piece_start:piece_end])
        if tokens <= budget:
            yield piece_start, piece_end, tokens
            continue
        # A sentence longer than a passage: cut it by words.
        words_start, words_tokens, last_end = None, 0, piece_start
        for word in _WORD.finditer(text, piece_start, piece_end):
            cost = count_tokens(word.group())
            if words_start is not None and words_tokens + cost > budget:
                yield words_start, last_end, words_tokens
                words_start, words_tokens = None, 0
            if words_start is None:
                words_start = word.start()
            if cost > budget:
                # One unbroken "word" over the budget (a long code or URL): cut by characters.
                chars = max(1, len(word.group()) * budget // cost)
                for offset in range(word.start(), word.end(), chars):
                    stop_at = min(word.end(), offset + chars)
                    yield offset, stop_at, count_tokens(text[offset:stop_at])
                words_start, words_tokens = None, 0
                last_end = word.end()
                continue
            words_tokens += cost
            last_end = word.end()
        if words_start is not None:
            yield words_start, last_end, words_tokens


def _passage(
    text: str,
    window: list[tuple[int, int, int]],
    window_tokens: int,
    heading: str,
    heading_tokens: int,
    page_at: Callable[[int], int | None],
) -> Passage:
    first, last = window[0][0], window[-1][1]
    return Passage(
        text=text[first:last],
        start=first,
        end=last,
        heading=heading,
        page=page_at(first),
        token_count=window_tokens + heading_tokens,
    )


def chunk_text(
    text: str,
    *,
    sections: Sequence[Any] = (),
    pages: Sequence[Any] = (),
    chunk_tokens: int,
    overlap_tokens: int,
) -> list[Passage]:
    """The passages of `text` (see the module docstring). `sections` and `pages` are the parser's
    (heading, level, start, end) and (number, start, end) items (objects or dicts), character offsets into
    `text`. `overlap_tokens` must be below `chunk_tokens`."""
    if overlap_tokens >= chunk_tokens:
        raise ValueError("the overlap must be smaller than the passage size")
    page_starts = sorted((int(_attr(page, "start")), int(_attr(page, "number"))) for page in pages)
    starts = [start for start, _ in page_starts]

    def page_at(offset: int) -> int | None:
        index = bisect.bisect_right(starts, offset) - 1
        return page_starts[index][1] if index >= 0 else (page_starts[0][1] if page_starts else None)

    passages: list[Passage] = []
    for span_start, span_end, heading in _spans(len(text), sections):
        heading_tokens = count_tokens(heading)
        # The heading is embedded with every passage, so it takes its share of the budget (at least half is text).
        budget = max(chunk_tokens // 2, chunk_tokens - heading_tokens)
        overlap = min(overlap_tokens, budget - 1)
        window: list[tuple[int, int, int]] = []
        window_tokens = 0

        for unit in _units(text, span_start, span_end, budget):
            if window and window_tokens + unit[2] > budget:
                passages.append(_passage(text, window, window_tokens, heading, heading_tokens, page_at))
                # Carry the trailing units that fit in the overlap into the next passage.
                carried: list[tuple[int, int, int]] = []
                carried_tokens = 0
                for previous in reversed(window):
                    if carried_tokens + previous[2] > overlap or carried_tokens + previous[2] + unit[2] > budget:
                        break
                    carried.insert(0, previous)
                    carried_tokens += previous[2]
                window, window_tokens = carried, carried_tokens
            window.append(unit)
            window_tokens += unit[2]
        if window:
            passages.append(_passage(text, window, window_tokens, heading, heading_tokens, page_at))
    return passages
