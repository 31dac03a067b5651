"""Measuring retrieval quality on a labelled question set: the hit rate at k of each search mode.

A question is a hit at k when the article labelled as its answer is among the documents of the first k
passages that `collections_search` returns for it (the same search the search page and `rag.retrieve` run,
query embedding included). Used by the knowledge tests and by benchmark B7 on the demo's support questions
(`apps.knowledge.demo.demo_questions()`), so both report the same figure the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from apps.knowledge.models import Collection
from apps.knowledge.search import MODES, collections_search


def hit_rate_at_k(
    collections: Sequence[Collection],
    questions: Sequence[dict[str, Any]],
    *,
    k: int = 5,
    modes: Iterable[str] = MODES,
) -> dict[str, float]:
    """{mode: share of `questions` (each `{"question", "article"}`, article = a document's name) whose article
    is among the documents of the first `k` passages}, for each mode. Raises ValueError for an empty set."""
    if not questions:
        raise ValueError("the question set is empty")
    rates = {}
    for mode in modes:
        hits = 0
        for item in questions:
            found = {p["document"] for p in collections_search(collections, item["question"], mode=mode, top_k=k)}
            hits += item["article"] in found
        rates[mode] = hits / len(questions)
    return rates
