"""Byte-level BPE `Tokenizer`: ranks, pre-split pattern and special tokens; encodes through tiktoken.

A byte-level BPE vocabulary is a table `mergeable_ranks: token bytes -> id`, tiktoken's
representation. The 256 single bytes are always in it, so any text encodes without an unknown token.
The id doubles as the merge priority: to encode a piece, start from its bytes and repeatedly merge the
adjacent pair whose concatenation has the lowest id (see `bpe_encode.py` for that loop in pure
Python). A tokenizer trained by llmlab numbers the bytes 0..255, the merges 256.. in the order they
were learned and the special tokens after them; GPT-2 and cl100k_base keep their own numbering.

Encoding goes through a `tiktoken.Encoding` built from these ranks, so llmlab encodes as fast as
tiktoken; `llmlab.tokenizer.bpe_encode` reproduces the same ids in pure Python.
"""

from __future__ import annotations

from functools import cached_property
from typing import Iterable

import tiktoken

from llmlab.errors import InputError
from llmlab.tokenizer.base import BaseTokenizer, header
from llmlab.tokenizer.bytelevel import bytes_to_text, text_to_bytes
from llmlab.tokenizer.patterns import DEFAULT_PATTERN


class Tokenizer(BaseTokenizer):
    """Byte-level BPE with a regex pre-split pattern and special tokens (tiktoken-compatible).

    Build one by training (`llmlab.tokenizer.train_bpe`), loading (`load_tokenizer`), or from parts:
    `Tokenizer(mergeable_ranks, pattern, special_tokens)`, `Tokenizer.from_merges(merges, ...)`, or
    `Tokenizer.from_byte_level_vocab(vocab, merges, special_tokens, pattern)` for Hugging Face / GGUF
    vocabularies written with GPT-2's byte-to-character table.
    """

    kind = "bpe"

    def __init__(
        self,
        mergeable_ranks: dict[bytes, int],
        pattern: str = DEFAULT_PATTERN,
        special_tokens: dict[str, int] | None = None,
        name: str = "llmlab",
    ) -> None:
        self.mergeable_ranks = dict(mergeable_ranks)
        self.pattern = pattern
        self.special_tokens = dict(special_tokens or {})
        self.name = name
        missing = [b for b in range(256) if bytes([b]) not in self.mergeable_ranks]
        if missing:
            raise InputError(
                f"byte-level BPE vocabulary lacks {len(missing)} of the 256 single-byte tokens "
                f"(e.g. byte {missing[0]:#04x}), so some text could not be encoded",
                hint="a byte-level vocabulary must contain every byte as a token",
            )
        self._decoder: dict[int, bytes] = {i: t for t, i in self.mergeable_ranks.items()}
        if len(self._decoder) != len(self.mergeable_ranks):
            raise InputError("byte-level BPE vocabulary gives the same id to two different tokens")
        for text, i in self.special_tokens.items():
            if i in self._decoder:
                raise InputError(
                    f"special token {text!r} has id {i}, which an ordinary token already uses",
                    hint="give special tokens ids after the ordinary vocabulary",
                )
            self._decoder[i] = text.encode("utf-8")
        if len(set(self.special_tokens.values())) != len(self.special_tokens):
            raise InputError("two special tokens share one id")

    # ---- construction from other representations ----------------------------------------------
    @classmethod
    def from_merges(
        cls,
        merges: Iterable[tuple[int, int]],
        pattern: str = DEFAULT_PATTERN,
        special_tokens: dict[str, int] | None = None,
        name: str = "llmlab",
    ) -> "Tokenizer":
        """llmlab numbering: byte b is id b, merge k (pair of ids) creates id 256 + k."""
        from llmlab.tokenizer.bpe_fast import vocab_from_merges

        vocab = vocab_from_merges(list(merges))
        return cls({t: i for i, t in enumerate(vocab)}, pattern, special_tokens, name)

    @classmethod
    def from_byte_level_vocab(
        cls,
        vocab: dict[str, int],
        merges: Iterable[tuple[str, str] | str] | None = None,
        special_tokens: dict[str, int] | None = None,
        pattern: str = DEFAULT_PATTERN,
        name: str = "imported",
    ) -> "Tokenizer":
        """From a GPT-2-style byte-level vocabulary ("Ġthe" -> id), as in HF `tokenizer.json` or GGUF.

        Entries of `vocab` that are special tokens (in `special_tokens`) or not written in the
        byte-level alphabet (added tokens such as "<|im_start|>") are left out of the ranks; pass them
        in `special_tokens` to keep them. If `merges` is given (pairs, or "a b" strings in priority
        order), it is checked against the ids: tiktoken-style encoding merges by id, so the id of each
        merge's result must grow with the merge's position, as it does for GPT-2 and models trained
        the usual way. A vocabulary where it does not cannot be encoded exactly by rank and is refused.
        """
        special_tokens = dict(special_tokens or {})
        ranks: dict[bytes, int] = {}
        for text, i in vocab.items():
            if text in special_tokens:
                continue
            try:
                ranks[text_to_bytes(text)] = int(i)
            except KeyError:
                continue  # an added token outside the byte alphabet; only kept if given as special
        if merges is not None:
            last = -1
            for k, m in enumerate(merges):
                left, right = m.split(" ", 1) if isinstance(m, str) else m
                merged = vocab.get(left + right)
                if merged is None:
                    raise InputError(f"merge {k} ({left!r}, {right!r}) makes a token that is not in the vocabulary")
                if merged <= last:
                    raise InputError(
                        f"merge {k} ({left!r} + {right!r}) has id {merged}, not after the previous merge's "
                        f"id {last}: this vocabulary's merge order differs from its id order",
                        hint="llmlab encodes by rank (tiktoken's rule) and needs ids in merge order",
                    )
                last = merged
        return cls(ranks, pattern, special_tokens, name)

    # ---- the tokenizer interface ---------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return max(self._decoder) + 1

    @cached_property
    def encoding(self) -> tiktoken.Encoding:
        """A `tiktoken.Encoding` with exactly these ranks, pattern and special tokens."""
        return tiktoken.Encoding(
            name=self.name,
            pat_str=self.pattern,
            mergeable_ranks=self.mergeable_ranks,
            special_tokens=self.special_tokens,
        )

    def encode_ordinary(self, text: str) -> list[int]:
        return self.encoding.encode_ordinary(text)

    def encode(self, text, allowed_special=frozenset(), disallowed_special="all") -> list[int]:
        allowed = self._allowed(allowed_special)
        self._check_disallowed(text, allowed, disallowed_special)
        if not allowed:
            return self.encoding.encode_ordinary(text)
        return self.encoding.encode(text, allowed_special=allowed, disallowed_special=())

    def encode_ordinary_batch(self, texts: list[str], num_threads: int = 8) -> list[list[int]]:
        return self.encoding.encode_ordinary_batch(texts, num_threads=num_threads)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        decoder = self._decoder
        try:
            return b"".join([decoder[i] for i in ids])
        except KeyError as e:
            raise InputError(f"token id {e.args[0]} is not in this tokenizer's vocabulary (size {self.vocab_size})") from None

    def token_bytes(self, token_id: int) -> bytes:
        return self.decode_bytes([token_id])

    # ---- merges, derived from the ranks --------------------------------------------------------
    @cached_property
    def merges(self) -> list[tuple[int, int]]:
        """The (left id, right id) pair that creates each multi-byte token, in rank order."""
        from llmlab.tokenizer.bpe_encode import recover_merges

        try:
            return recover_merges(self.mergeable_ranks)
        except ValueError as e:
            raise InputError(str(e), hint="this vocabulary is not a BPE merge table") from None

    # ---- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        tokens: list[str | None] = [None] * self.vocab_size
        for token, i in self.mergeable_ranks.items():
            tokens[i] = bytes_to_text(token)
        return {
            **header(self.kind),
            "name": self.name,
            "pattern": self.pattern,
            "special_tokens": self.special_tokens,
            "tokens": tokens,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Tokenizer":
        tokens = d["tokens"]
        ranks = {}
        for i, t in enumerate(tokens):
            if t is None:
                continue
            try:
                ranks[text_to_bytes(t)] = i
            except (KeyError, TypeError):
                raise InputError(f"token {i} ({t!r}) is not written in GPT-2's byte-level alphabet") from None
        return cls(ranks, d["pattern"], {k: int(v) for k, v in d["special_tokens"].items()}, d.get("name", "llmlab"))
