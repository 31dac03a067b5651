"""Deterministic stand-in sentence embeddings (hashed bag of words and character trigrams).

Not semantic, but stable and locality-preserving: texts that share words and word fragments get a high
cosine similarity, unrelated texts a low one, and the same text the same vector in every process. That
is what retrieval tests and demos need from a development server; a real model (e.g. MiniLM, also 384
dimensions) replaces it without any change to callers.
"""

from __future__ import annotations

import hashlib
import math
import re

_WORD = re.compile(r"\w+", re.UNICODE)
_WORD_WEIGHT = 1.0
_TRIGRAM_WEIGHT = 0.35


def _bucket(feature: str, dimensions: int) -> tuple[int, float]:
    digest = int.from_bytes(hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest(), "big")
    # The sign bit spreads collisions so they cancel out on average instead of piling up.
    return digest % dimensions, (1.0 if (digest >> 63) & 1 else -1.0)


def embed(text: str, dimensions: int = 384, *, normalize: bool = True) -> list[float]:
    """The embedding of `text`; unit length when `normalize` (TEI's default)."""
    vector = [0.0] * dimensions
    for word in _WORD.findall(text.lower()):
        index, sign = _bucket("w:" + word, dimensions)
        vector[index] += sign * _WORD_WEIGHT
        padded = f"<{word}>"
        for start in range(len(padded) - 2):
            index, sign = _bucket("c:" + padded[start : start + 3], dimensions)
            vector[index] += sign * _TRIGRAM_WEIGHT
    norm = math.sqrt(sum(x * x for x in vector))
    if norm == 0.0:
        # Empty or symbol-only text: a fixed unit vector rather than NaNs.
        vector[0] = 1.0
        return vector
    if normalize:
        return [x / norm for x in vector]
    return vector


def cosine(a: list[float], b: list[float]) -> float:
    """Cosine similarity, for tests and diagnostics."""
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0
