"""Deduplication: exact (hash of normalised text) and near-duplicate (MinHash LSH, FineWeb's settings).

Both steps need the whole corpus at once (`corpus_wide`), keep the first document of each group in
input order and drop the rest with `duplicate_of` naming the URL they repeat. What they need of the
corpus is small: a signature per document (16 bytes for exact, 448 bytes of MinHash values), so the
runner keeps only the signatures in memory and spills the documents to disk until the groups are known
(`DedupStep.signatures`, then `DedupStep.roots`).

MinHash (Broder 1997): a document is the set of its word 5-grams (after `normalize_text`); each of
`buckets x hashes_per_bucket` hash functions h(x) = (a*x + b) >> 32 (multiply-shift, mod 2**64) maps
the set to its minimum, and
two documents agree on one minimum with probability equal to their Jaccard similarity. LSH groups the
minima into bands (FineWeb: 14 bands of 8): documents that agree on every value of any band become
candidates, which makes pages with Jaccard ~0.75 collide with probability ~0.9 and pages below ~0.5
rarely. Candidates are joined with union-find into clusters.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from abc import abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from llmlab.data.clean.documents import Document, Removed, StepResult
from llmlab.data.clean.steps import Step

_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
_NON_WORD = re.compile(r"[\W_]+")
_SHIFT = np.uint64(32)


def normalize_text(text: str) -> str:
    """Lower-case, numbers -> 0, punctuation -> space, accents removed, whitespace collapsed."""
    text = _NUMBER.sub("0", text.lower())
    text = _NON_WORD.sub(" ", text)
    if not text.isascii():
        text = "".join(c for c in unicodedata.normalize("NFD", text) if not unicodedata.combining(c))
    return " ".join(text.split())


def text_hash(text: str) -> str:
    return hashlib.blake2b(normalize_text(text).encode("utf-8"), digest_size=16).hexdigest()


class DedupStep(Step):
    """A corpus-wide step that groups documents by signature and keeps the first of each group."""

    kind = "dedup"
    corpus_wide = True
    reason: ClassVar[str] = "duplicate"

    @abstractmethod
    def signatures(self, batch: list[Document]) -> np.ndarray:
        """One row per document: all the step needs to know of it to find its group."""

    @abstractmethod
    def roots(self, signatures: np.ndarray) -> np.ndarray:
        """For each document (signature row), the index of the first document of its group."""

    def __call__(self, batch: list[Document]) -> StepResult:
        if not batch:
            return StepResult([])
        roots = self.roots(self.signatures(batch))
        result = StepResult([])
        for i, doc in enumerate(batch):
            if roots[i] == i:
                result.kept.append(doc)
            else:
                original = batch[int(roots[i])].url
                result.removed.append(Removed(doc.with_metadata(duplicate_of=original), self.name, self.reason))
        return result


@dataclass
class ExactDedup(DedupStep):
    """Drop documents whose normalised text equals an earlier document's."""

    name = "exact_dedup"
    reason = "exact_duplicate"

    def signatures(self, batch: list[Document]) -> np.ndarray:
        return np.array([bytes.fromhex(text_hash(d.text)) for d in batch], dtype="S16").reshape(-1, 1)

    def roots(self, signatures: np.ndarray) -> np.ndarray:
        first: dict[bytes, int] = {}
        return np.array([first.setdefault(bytes(s), i) for i, s in enumerate(signatures[:, 0])], dtype=np.int64)


def _word_hash(word: str) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")


def _word_hashes(words: list[str], cache: dict[str, int]) -> np.ndarray:
    hashes = []
    for w in words:
        h = cache.get(w)
        if h is None:
            h = cache[w] = _word_hash(w)
        hashes.append(h)
    return np.array(hashes, dtype=np.uint64)


def shingle_hashes(text: str, ngram: int, cache: dict[str, int] | None = None) -> np.ndarray:
    """64-bit hashes of the word n-grams of `normalize_text(text)` (a text shorter than n is one shingle)."""
    words = normalize_text(text).split()
    if cache is None:
        cache = {}
    if len(words) < ngram:
        words = [" ".join(words)]
        ngram = 1
    h = _word_hashes(words, cache)
    m = len(words) - ngram + 1
    mixed = np.zeros(m, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(ngram):
            # rotate each position differently so "a b" and "b a" differ, then add (wrapping 64-bit)
            r = np.uint64((17 * j) % 64)
            part = h[j : j + m]
            mixed += (part << r) | (part >> (np.uint64(64) - r)) if r else part
        mixed *= np.uint64(0x9E3779B97F4A7C15)
    return mixed


def minhash_parameters(num_hashes: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2**64 - 1, size=num_hashes, dtype=np.uint64, endpoint=True) | np.uint64(1)  # odd
    b = rng.integers(0, 2**64 - 1, size=num_hashes, dtype=np.uint64, endpoint=True)
    return a, b


def minhash_signatures(texts: list[str], num_hashes: int = 112, ngram: int = 5, seed: int = 1) -> np.ndarray:
    """(len(texts), num_hashes) uint32 MinHash signatures, computed with numpy per document."""
    a, b = minhash_parameters(num_hashes, seed)
    signatures = np.empty((len(texts), num_hashes), dtype=np.uint32)
    cache: dict[str, int] = {}
    for i, text in enumerate(texts):
        x = shingle_hashes(text, ngram, cache)
        best = np.full(num_hashes, np.iinfo(np.uint64).max, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for start in range(0, len(x), 8192):  # bound the (shingles x hashes) temporary to ~7 MB
                block = (x[start : start + 8192, None] * a[None, :] + b[None, :]) >> _SHIFT
                np.minimum(best, block.min(axis=0), out=best)
        signatures[i] = best
    return signatures


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:  # the smaller index (earlier document) becomes the root, and is the one kept
            self.parent[max(ri, rj)] = min(ri, rj)


def near_duplicate_roots(signatures: np.ndarray, buckets: int = 14, hashes_per_bucket: int = 8) -> np.ndarray:
    """For each document, the index of the first document in its LSH cluster (itself if unique)."""
    n = len(signatures)
    if signatures.shape[1] < buckets * hashes_per_bucket:
        raise ValueError("signatures are shorter than buckets * hashes_per_bucket")
    uf = _UnionFind(n)
    for band in range(buckets):
        rows = np.ascontiguousarray(signatures[:, band * hashes_per_bucket : (band + 1) * hashes_per_bucket])
        keys = rows.view(np.dtype((np.void, rows.dtype.itemsize * hashes_per_bucket))).ravel()
        order = np.argsort(keys, kind="stable")
        same = np.flatnonzero(keys[order][1:] == keys[order][:-1])
        for k in same.tolist():
            uf.union(int(order[k]), int(order[k + 1]))
    return np.array([uf.find(i) for i in range(n)], dtype=np.int64)


@dataclass
class MinHashDedup(DedupStep):
    """Near-duplicate removal with MinHash LSH; FineWeb: 5-grams, 14 buckets of 8 hashes."""

    name = "minhash_dedup"
    reason = "near_duplicate"

    ngram: int = 5
    buckets: int = 14
    hashes_per_bucket: int = 8
    seed: int = 1

    def signatures(self, batch: list[Document]) -> np.ndarray:
        return minhash_signatures([d.text for d in batch], self.buckets * self.hashes_per_bucket, self.ngram, self.seed)

    def roots(self, signatures: np.ndarray) -> np.ndarray:
        if not len(signatures):
            return np.zeros(0, dtype=np.int64)
        return near_duplicate_roots(signatures, self.buckets, self.hashes_per_bucket)
