"""BPE training, the reference way: incremental pair counts over unique pre-split pieces.

The algorithm as textbooks state it: start from bytes, count every adjacent pair, merge the most
frequent pair into a new token, repeat until the vocabulary is big enough. Done literally (`train_naive`
below) every merge recounts the whole corpus. The reference trainer gets the same merges while doing
work proportional only to the pieces a merge touches:

1. pre-split the text with the regex pattern and count the *unique* pieces (" the" x 52,000 is one
   piece with a count, not 52,000 copies);
2. count each adjacent pair once, weighted by the count of its piece, and remember which pieces
   contain it (`where`);
3. take the most frequent pair from a heap; rewrite only the pieces in `where[pair]`, moving their
   pairs' counts from the old spelling to the new one.

Tie-breaking, shared by every llmlab trainer and by rustbpe: among pairs with the highest count, the
smallest (left id, right id) wins. A merge applies left to right without overlap ("aaa" -> "aa" "a").
Counts of a pair only rise in the merge that creates its newer token and only fall afterwards, so a
heap entry whose count is out of date is simply refreshed when popped (lazy deletion).
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from typing import Callable, Iterable

import regex

from llmlab.tokenizer.bpe_encode import Pair


def count_pieces(texts: Iterable[str], pattern: str) -> Counter[str]:
    """Pre-split every text with `pattern` and count each distinct piece."""
    split = regex.compile(pattern)
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(split.findall(text))
    return counts


def merge_pair(word: list[int], pair: Pair, new_id: int) -> list[int]:
    """Replace each occurrence of `pair` in `word`, scanning left to right without overlap."""
    a, b = pair
    out, i, n = [], 0, len(word)
    while i < n:
        if i + 1 < n and word[i] == a and word[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def train_merges(
    piece_counts: dict[str, int] | dict[bytes, int],
    num_merges: int,
    on_merge: Callable[[int, Pair, int], None] | None = None,
) -> list[Pair]:
    """Learn up to `num_merges` merges from unique pieces and their counts (the reference trainer).

    Returns the merged pairs in order; merge k creates token id 256 + k. Stops early if no pair is left.
    `on_merge(k, pair, count)` is called after each merge (progress bars, tracing).
    """
    words: list[list[int]] = []
    counts: list[int] = []
    for piece, count in piece_counts.items():
        data = piece.encode("utf-8") if isinstance(piece, str) else piece
        if len(data) >= 2:  # a single byte has no pairs and never changes
            words.append(list(data))
            counts.append(count)

    pair_counts: dict[Pair, int] = defaultdict(int)
    where: dict[Pair, set[int]] = defaultdict(set)  # pair -> pieces that (may) contain it
    for w, (word, count) in enumerate(zip(words, counts)):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += count
            where[pair].add(w)
    # Max-heap on count, then min on the pair: the heap key is (-count, left, right).
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)

    merges: list[Pair] = []
    while len(merges) < num_merges and heap:
        neg_count, pair = heapq.heappop(heap)
        count = pair_counts.get(pair, 0)
        if count != -neg_count:  # out of date: the count has fallen since this entry was pushed
            if count > 0:
                heapq.heappush(heap, (-count, pair))
            continue
        new_id = 256 + len(merges)
        merges.append(pair)
        created: set[Pair] = set()
        for w in where.pop(pair):
            old = words[w]
            new = merge_pair(old, pair, new_id)
            if len(new) == len(old):
                continue  # the pair left this piece in an earlier merge
            c = counts[w]
            for p in zip(old, old[1:]):
                pair_counts[p] -= c
            for p in zip(new, new[1:]):
                pair_counts[p] += c
                where[p].add(w)
                if new_id in p:
                    created.add(p)
            words[w] = new
        del pair_counts[pair]
        for p in created:
            if pair_counts[p] > 0:
                heapq.heappush(heap, (-pair_counts[p], p))
        if on_merge is not None:
            on_merge(len(merges) - 1, pair, count)
    return merges


def train_naive(texts: Iterable[str], pattern: str, num_merges: int) -> list[Pair]:
    """The textbook loop, kept as a yardstick: recount every pair of the whole corpus for each merge.

    Same pieces, same tie-breaking and so the same merges as `train_merges`, at a cost per merge
    proportional to the corpus. Only for tests and the benchmark.
    """
    split = regex.compile(pattern)
    chunks = [list(piece.encode("utf-8")) for text in texts for piece in split.findall(text)]
    merges: list[Pair] = []
    for k in range(num_merges):
        stats: Counter[Pair] = Counter()
        for chunk in chunks:
            stats.update(zip(chunk, chunk[1:]))
        if not stats:
            break
        pair = min(stats, key=lambda p: (-stats[p], p))
        merges.append(pair)
        chunks = [merge_pair(chunk, pair, 256 + k) for chunk in chunks]
    return merges

