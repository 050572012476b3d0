"""BM25 product search (``bm25s``) over each product's title + attributes + type + category.

The index is built once per catalogue (``index_for`` caches it by the catalogue object's identity, and
catalogues themselves are cached by :func:`envs.shop.load_world`); query results are memoised (LRU).
"""
from __future__ import annotations

import re
from collections import OrderedDict

import bm25s
import numpy as np

from envs.shop.catalogue import Catalogue

MAX_QUERY_CHARS = 300  # longer queries are cut (hostile inputs stay cheap)
_WORD = re.compile(r"[a-z0-9]+(?:\.[0-9]+)?")
_STOP = frozenset("a an and are as at be by for from i in is it me my of on or that the this to with "
                  "would like need want looking find am lower than price dollars".split())


def tokenize(text: str) -> list[str]:
    """Lower-cased words and decimals ("5.0"), English stop words and goal boilerplate removed."""
    return [w for w in _WORD.findall(text.lower()) if w not in _STOP]


class SearchIndex:
    """``search(query, k)`` -> product indices with a positive BM25 score, best first (ties by index)."""

    def __init__(self, catalogue: Catalogue, cache_size: int = 4096):
        self.catalogue = catalogue
        self._bm25 = bm25s.BM25()
        corpus = [tokenize(p.search_text or p.title) or ["_empty_"] for p in catalogue.products]
        self._bm25.index(corpus, show_progress=False)
        self._vocab = self._bm25.vocab_dict
        self._cache: OrderedDict[tuple[str, int], list[int]] = OrderedDict()
        self._cache_size = cache_size

    def search(self, query: str, k: int = 50) -> list[int]:
        tokens = [t for t in tokenize(query[:MAX_QUERY_CHARS]) if t in self._vocab]
        key = (" ".join(tokens), k)
        if key in self._cache:
            self._cache.move_to_end(key)
            return list(self._cache[key])
        hits: list[int] = []
        if tokens:
            n = min(k, len(self.catalogue.products))
            docs, scores = self._bm25.retrieve([tokens], k=n, show_progress=False, n_threads=1)
            docs, scores = np.asarray(docs[0]), np.asarray(scores[0])
            order = np.lexsort((docs, -scores))  # best score first, ties by product index: deterministic
            hits = [int(docs[j]) for j in order if scores[j] > 0]
        self._cache[key] = hits
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return list(hits)


_INDEXES: dict[int, tuple[Catalogue, SearchIndex]] = {}


def index_for(catalogue: Catalogue) -> SearchIndex:
    """The (cached) index of ``catalogue``."""
    hit = _INDEXES.get(id(catalogue))
    if hit is None or hit[0] is not catalogue:
        hit = (catalogue, SearchIndex(catalogue))
        _INDEXES[id(catalogue)] = hit
    return hit[1]
