"""BM25 retrieval over a passage corpus (``bm25s``), formatted as Search-R1's ``<information>`` block."""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import bm25s
import numpy as np


def format_passage(passage: dict) -> str:
    """One line of text for a passage ``{"title", "text"}`` or ``{"contents"}``."""
    if passage.get("text"):
        text = passage["text"]
        title = passage.get("title") or ""
        if title and not text.startswith(title) and not text.startswith(f"The {title}"):
            text = f"{title}. {text}"
    else:
        text = passage.get("contents", "")
    return " ".join(str(text).split())


def format_information(docs: Sequence[str]) -> str:
    """``<information>Doc 1: …\\nDoc 2: …</information>``."""
    body = "\n".join(f"Doc {i + 1}: {doc}" for i, doc in enumerate(docs))
    return f"<information>{body}</information>"


class BM25Retriever:
    """Top-k BM25 passages for a query (English stop words removed, no stemming).

    Args:
        passages: the corpus (dicts with ``title`` + ``text`` or ``contents``).
        top_k: passages returned per query.
        cache_size: recent queries remembered (GRPO groups repeat the same searches).
    """

    def __init__(self, passages: Sequence[dict], top_k: int = 3, cache_size: int = 4096):
        if not passages:
            raise ValueError("passages: expected a non-empty corpus")
        if not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k: expected a positive int, got {top_k!r}")
        self.docs = [format_passage(p) for p in passages]
        self.top_k = min(top_k, len(self.docs))
        self._model = bm25s.BM25()
        # Index the title with the text (as FlashRAG's '"Title"\ntext' contents do): a passage about an
        # entity outranks the passages that merely mention it.
        indexed = [f"{p.get('title') or ''} {doc}" for p, doc in zip(passages, self.docs)]
        self._model.index(bm25s.tokenize(indexed, return_ids=False, show_progress=False), show_progress=False)
        self._cache: OrderedDict[str, tuple[int, ...]] = OrderedDict()
        self._cache_size = cache_size

    def search(self, query: str) -> tuple[int, ...]:
        """Indices of the top-k passages (best first; ties by lower index; empty query → none)."""
        key = " ".join(query.lower().split())
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        tokens = bm25s.tokenize([key], return_ids=False, show_progress=False)[0] if key else []
        if tokens:
            scores = self._model.get_scores(tokens)  # (n_docs,)
            order = np.argsort(-scores, kind="stable")[: self.top_k]  # ties → lower index first
            hits = tuple(int(i) for i in order if scores[i] > 0)
        else:
            hits = ()
        self._cache[key] = hits
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return hits

    def information(self, query: str) -> str:
        """The observation for a search: the top-k passages inside ``<information>…</information>``."""
        hits = self.search(query)
        if not hits:
            return "<information>No results.</information>"
        return format_information([self.docs[i] for i in hits])

