"""The reference BPE encoder in pure Python: the same ids as tiktoken, slowly and readably.

Encoding a text:
1. cut it at allowed special tokens (each becomes its id);
2. pre-split each stretch with the tokenizer's regex pattern into pieces;
3. a piece that is itself a token becomes that token (tiktoken's shortcut, kept for exact parity);
4. otherwise start from the piece's bytes and repeatedly merge the adjacent pair whose concatenation
   has the lowest rank, the leftmost such pair on ties, until no adjacent pair is in the vocabulary.

A Python string can hold surrogates, which have no UTF-8 bytes. Like tiktoken, the text is mended
first (`replace_surrogates`): a surrogate pair becomes its character, a lone surrogate U+FFFD.

`llmlab.tokenizer.Tokenizer.encode` runs the same algorithm in tiktoken's Rust; the tests check that
both give identical ids on megabytes of real text.

Step 2 uses the `regex` module's Unicode tables, and tiktoken's Rust regex has its own. They can be on
different Unicode versions (regex 2026.11: 17.0; tiktoken 0.14: 16.0). A code point assigned between
the two (e.g. U+18D09, a Tangut letter since 17.0) is then a letter to one and not to the other, and
a text containing one can split, and encode, differently.
"""

from __future__ import annotations

import regex

from llmlab.tokenizer.base import _special_regex

Pair = tuple[int, int]  # the (left id, right id) a merge joins


def replace_surrogates(text: str) -> str:
    """`text` as tiktoken encodes it: surrogate pairs joined into their character, lone ones as U+FFFD."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def bpe_merge(piece: bytes, ranks: dict[bytes, int], max_rank: int | None = None) -> list[int]:
    """BPE one piece: merge the lowest-ranked adjacent pair until none is left (ranks < max_rank only)."""
    parts = [piece[i : i + 1] for i in range(len(piece))]
    while len(parts) > 1:
        best_rank, best_i = None, -1
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and (max_rank is None or rank < max_rank) and (best_rank is None or rank < best_rank):
                best_rank, best_i = rank, i
        if best_rank is None:
            break
        parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return [ranks[p] for p in parts]


def recover_merges(ranks: dict[bytes, int]) -> list[Pair]:
    """The (left id, right id) pair behind each multi-byte token, in rank order.

    BPE-encoding a token's bytes with only the tokens ranked below it leaves exactly the two parts it
    was merged from, because training and encoding apply merges in the same order (the idea of
    minbpe's `recover_merges`). Raises ValueError for a table that is not a BPE merge table.
    """
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) == 1:
            continue
        parts = bpe_merge(token, ranks, max_rank=rank)
        if len(parts) != 2:
            raise ValueError(f"token {token!r} (id {rank}) is not a merge of two lower-ranked tokens")
        merges.append((parts[0], parts[1]))
    return merges


class ReferenceEncoder:
    """Pure-Python encoder for a byte-level BPE `Tokenizer` (caches the ids of repeated pieces)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ranks = tokenizer.mergeable_ranks
        self.missing = set(tokenizer.missing_bytes)  # bytes the vocabulary lacks are dropped (HF's rule)
        self.split = regex.compile(tokenizer.pattern)
        self._cache: dict[str, list[int]] = {}

    def encode_ordinary(self, text: str) -> list[int]:
        ids: list[int] = []
        cache, ranks = self._cache, self.ranks
        for piece in self.split.findall(replace_surrogates(text)):
            cached = cache.get(piece)
            if cached is None:
                data = piece.encode("utf-8")
                if self.missing:
                    data = bytes(b for b in data if b not in self.missing)
                rank = ranks.get(data)
                cached = [rank] if rank is not None else bpe_merge(data, ranks) if data else []
                if len(cache) < 1_000_000:
                    cache[piece] = cached
            ids.extend(cached)
        return ids

    def encode(self, text: str, allowed_special=frozenset(), disallowed_special="all") -> list[int]:
        tok = self.tokenizer
        allowed = tok._allowed(allowed_special)
        tok._check_disallowed(text, allowed, disallowed_special)
        if not allowed:
            return self.encode_ordinary(text)
        ids: list[int] = []
        start = 0
        for m in _special_regex(frozenset(allowed)).finditer(text):
            ids.extend(self.encode_ordinary(text[start : m.start()]))
            ids.append(tok.special_tokens[m.group()])
            start = m.end()
        ids.extend(self.encode_ordinary(text[start:]))
        return ids
