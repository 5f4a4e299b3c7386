"""Searching an index: BM25 and dense nearest neighbours, fused by reciprocal rank.

Reciprocal rank fusion (Cormack et al., 2009) scores a chunk by sum(1 / (60 + rank)) over the rankings
that contain it. It needs no calibration between BM25 scores and cosine similarities, and a chunk that
both rankings place high beats one that only one of them likes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import numpy as np

from llmlab.errors import ConfigError, InputError
from llmlab.retrieve.bm25 import Bm25
from llmlab.retrieve.embeddings import Embedder
from llmlab.retrieve.store import BM25_DIR, Store

RRF_K = 60
Mode = Literal["hybrid", "bm25", "dense"]
MODES = ("hybrid", "bm25", "dense")


@dataclass(frozen=True)
class Passage:
    """One retrieved chunk. `score` is the ranking's own (RRF, BM25 or cosine); ranks count from 1."""

    text: str
    title: str
    url: str
    score: float
    chunk_id: str
    bm25_rank: int | None = None
    dense_rank: int | None = None


def reciprocal_rank_fusion(rankings: list[list[int]], k: int = RRF_K) -> list[tuple[int, float]]:
    """Items of several best-first rankings, ordered by their summed 1 / (k + rank)."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda pair: -pair[1])


class Index:
    """A retrieval index opened for search; `Index.open(dir)` then `index.search(query, k)`."""

    def __init__(self, store: Store, bm25: Bm25, embedder: Embedder | None = None) -> None:
        self.store = store
        self.bm25 = bm25
        self._embedder = embedder
        self._vectors: tuple[np.ndarray, np.ndarray] | None = None
        self.size = len(bm25.rowids)

    @classmethod
    def open(cls, path: str | os.PathLike, embedder: Embedder | None = None) -> "Index":
        """Open the index in `path`; the embedding model loads at the first dense search unless given."""
        store = Store(path)
        if store.count() == 0:
            raise InputError(f"{path}: the index holds no chunks",
                             hint="index a documents.parquet whose rows have text")
        bm25 = Bm25.load(store.dir / BM25_DIR, store.generation) or Bm25.build(store.texts())
        if embedder is not None and str(embedder.dim) != store.meta.get("dim"):
            raise InputError(f"{path}: vectors have {store.meta.get('dim')} dimensions, the embedder gives {embedder.dim}")
        indexed = store.meta.get("dtype")
        if embedder is not None and indexed and embedder.dtype != indexed:
            raise InputError(f"{path}: the chunks were embedded in {indexed}, the query embedder computes in "
                             f"{embedder.dtype}", hint=f"give an Embedder(dtype='{indexed}')")
        return cls(store, bm25, embedder)

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:  # queries are embedded as the chunks were (indexes before dtype was recorded: auto)
            self._embedder = Embedder(dtype=self.store.meta.get("dtype", "auto"))
        return self._embedder

    def nearest(self, query: str, k: int) -> list[tuple[int, float]]:
        """(row id, cosine similarity) of the k chunks whose embeddings are nearest the query's."""
        if self._vectors is None:
            self._vectors = self.store.vectors()
        rowids, matrix = self._vectors
        scores = matrix @ self.embedder.embed([query])[0]
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(int(rowids[i]), float(scores[i])) for i in top]

    def search(self, query: str, k: int = 5, mode: Mode = "hybrid", candidates: int = 50) -> list[Passage]:
        """The k best passages for `query`, best first."""
        if mode not in MODES:
            raise ConfigError(f"unknown search mode {mode!r} (choose from {', '.join(MODES)})")
        if k < 1 or not query.strip():
            return []
        depth = max(k, candidates)
        sparse = self.bm25.search(query, depth) if mode != "dense" else []
        dense = self.nearest(query, depth) if mode != "bm25" else []
        bm25_rank = {rowid: r for r, (rowid, _) in enumerate(sparse, start=1)}
        dense_rank = {rowid: r for r, (rowid, _) in enumerate(dense, start=1)}
        if mode == "hybrid":
            ranked = reciprocal_rank_fusion([[r for r, _ in sparse], [r for r, _ in dense]])
        else:
            ranked = sparse or dense
        ranked = ranked[:k]
        rows = self.store.rows([rowid for rowid, _ in ranked])
        return [Passage(text=rows[rowid][3], title=rows[rowid][2], url=rows[rowid][1], score=score,
                        chunk_id=rows[rowid][0], bm25_rank=bm25_rank.get(rowid), dense_rank=dense_rank.get(rowid))
                for rowid, score in ranked if rowid in rows]

    def close(self) -> None:
        self.store.close()
