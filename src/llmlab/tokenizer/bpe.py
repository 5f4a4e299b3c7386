"""Byte-level BPE `Tokenizer`: ranks, pre-split pattern and special tokens; encodes through tiktoken.

A byte-level BPE vocabulary is a table `mergeable_ranks: token bytes -> id`, tiktoken's
representation. The 256 single bytes are always in it, so any text encodes without an unknown token.
The id doubles as the merge priority: to encode a piece, start from its bytes and repeatedly merge the
adjacent pair whose concatenation has the lowest id (see `bpe_encode.py` for that loop in pure
Python). A tokenizer trained by llmlab numbers the bytes 0..255, the merges 256.. in the order they
were learned and the special tokens after them; GPT-2 and cl100k_base keep their own numbering.

Encoding goes through a `tiktoken.Encoding` built from these ranks, so llmlab encodes as fast as
tiktoken; `llmlab.tokenizer.bpe_encode` reproduces the same ids in pure Python.

`train_bpe` makes a `Tokenizer` from text with either trainer (`bpe_fast` or `bpe_train`): the
modules import one way, bpe_encode -> bpe_train -> bpe_fast -> bpe.
"""

from __future__ import annotations

from functools import cached_property
from typing import Iterable

import regex
import tiktoken

from llmlab.errors import ConfigError, InputError
from llmlab.tokenizer.base import DEFAULT_SPECIAL_TOKENS, BaseTokenizer, default_special_tokens, header
from llmlab.tokenizer.bpe_encode import Pair, recover_merges, replace_surrogates
from llmlab.tokenizer.bpe_fast import train_vocab_fast, vocab_from_merges
from llmlab.tokenizer.bpe_train import count_pieces, train_merges
from llmlab.tokenizer.bytelevel import bytes_to_text, text_to_bytes
from llmlab.tokenizer.patterns import DEFAULT_PATTERN, fast_equivalent


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
        missing_bytes: str = "error",
    ) -> None:
        """`missing_bytes`: what to do if some of the 256 single bytes are not tokens (as in
        vocabularies trained by Hugging Face on text that never held them): "error", or "drop" such
        bytes from the encoding like Hugging Face does."""
        self.mergeable_ranks = dict(mergeable_ranks)
        self.pattern = pattern
        self.special_tokens = dict(special_tokens or {})
        self.name = name
        self.missing_bytes = [b for b in range(256) if bytes([b]) not in self.mergeable_ranks]
        if self.missing_bytes and missing_bytes != "drop":
            raise InputError(
                f"byte-level BPE vocabulary lacks {len(self.missing_bytes)} of the 256 single-byte tokens "
                f"(e.g. byte {self.missing_bytes[0]:#04x}), so some text could not be encoded",
                hint="a byte-level vocabulary must contain every byte as a token "
                '(or pass missing_bytes="drop" to leave such bytes out, as Hugging Face does)',
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
        # Characters whose UTF-8 holds a byte the vocabulary lacks: text with them takes `_encode_dropping`.
        self._dropped_chars = _chars_with_bytes(self.missing_bytes) if self.missing_bytes else None

    # ---- construction from other representations ----------------------------------------------
    @classmethod
    def from_merges(
        cls,
        merges: Iterable[Pair],
        pattern: str = DEFAULT_PATTERN,
        special_tokens: dict[str, int] | None = None,
        name: str = "llmlab",
    ) -> "Tokenizer":
        """llmlab numbering: byte b is id b, merge k (pair of ids) creates id 256 + k."""
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
        missing_bytes: str = "error",
    ) -> "Tokenizer":
        """From a GPT-2-style byte-level vocabulary ("Ġthe" -> id), as in HF `tokenizer.json` or GGUF.

        Entries of `vocab` that are special tokens (in `special_tokens`) or not written in the
        byte-level alphabet (added tokens such as "<|im_start|>") are left out of the ranks; pass them
        in `special_tokens` to keep them. If `merges` is given (pairs, or "a b" strings in priority
        order), it is checked against the ids: tiktoken-style encoding merges by id, so the id of each
        merge's result must grow with the merge's position, as it does for GPT-2 and models trained
        the usual way. A vocabulary where it does not cannot be encoded exactly by rank and is refused.
        `missing_bytes="drop"` accepts vocabularies without some single bytes (see `__init__`).

        This is the constructor for tokenizers stored elsewhere, e.g. SmolLM2's in its GGUF file:
        `tokenizer.ggml.tokens` (id order) give `vocab`, `tokenizer.ggml.merges` the merges, tokens of
        non-normal `token_type` the special tokens, and `llmlab.tokenizer.hf.GPT2_DIGITS_PATTERN` the
        pattern for `tokenizer.ggml.pre == "smollm"`.
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
        return cls(ranks, pattern, special_tokens, name, missing_bytes)

    # ---- the tokenizer interface ---------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return max(self._decoder) + 1

    @cached_property
    def encoding(self) -> tiktoken.Encoding:
        """A `tiktoken.Encoding` with exactly these ranks, pattern and special tokens.

        The pattern is handed over in its fastest equivalent form (see `patterns.fast_equivalent`).
        """
        return tiktoken.Encoding(
            name=self.name,
            pat_str=fast_equivalent(self.pattern),
            mergeable_ranks=self.mergeable_ranks,
            special_tokens=self.special_tokens,
        )

    def encode_ordinary(self, text: str) -> list[int]:
        if self._dropped_chars is not None and self._dropped_chars.search(text):
            return self._encode_dropping(text)
        return self.encoding.encode_ordinary(text)

    def encode(self, text, allowed_special=frozenset(), disallowed_special="all") -> list[int]:
        if self._dropped_chars is not None and self._dropped_chars.search(text):
            return super().encode(text, allowed_special, disallowed_special)  # via encode_ordinary
        allowed = self._allowed(allowed_special)
        self._check_disallowed(text, allowed, disallowed_special)
        if not allowed:
            return self.encoding.encode_ordinary(text)
        return self.encoding.encode(text, allowed_special=allowed, disallowed_special=())

    def encode_ordinary_batch(self, texts: list[str], num_threads: int = 8) -> list[list[int]]:
        if self._dropped_chars is not None:
            return [self.encode_ordinary(t) for t in texts]
        return self.encoding.encode_ordinary_batch(texts, num_threads=num_threads)

    def _encode_dropping(self, text: str) -> list[int]:
        # Hugging Face's rule for bytes outside the vocabulary: pre-split the text as usual, remove
        # those bytes from each piece, then BPE what is left of the piece.
        missing = set(self.missing_bytes)
        ids: list[int] = []
        for piece in regex.findall(self.pattern, replace_surrogates(text)):
            data = piece.encode("utf-8")
            if self._dropped_chars.search(piece):
                data = bytes(b for b in data if b not in missing)
            if data:
                ids.extend(self.encoding._encode_single_piece(data))
        return ids

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        decoder = self._decoder
        try:
            return b"".join([decoder[i] for i in ids])
        except KeyError as e:
            raise InputError(f"token id {e.args[0]} is not in this tokenizer's vocabulary (size {self.vocab_size})") from None

    # ---- merges, derived from the ranks --------------------------------------------------------
    @cached_property
    def merges(self) -> list[Pair]:
        """The (left id, right id) pair that creates each multi-byte token, in rank order."""
        try:
            return recover_merges(self.mergeable_ranks)
        except ValueError as e:
            raise InputError(str(e), hint="this vocabulary is not a BPE merge table") from None

    # ---- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        tokens: list[str | None] = [None] * self.vocab_size
        for token, i in self.mergeable_ranks.items():
            tokens[i] = bytes_to_text(token)
        d = {
            **header(self.kind),
            "name": self.name,
            "pattern": self.pattern,
            "special_tokens": self.special_tokens,
            "tokens": tokens,
        }
        if self.missing_bytes:
            d["missing_bytes"] = "drop"
        return d

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
        specials = {k: int(v) for k, v in d["special_tokens"].items()}
        return cls(ranks, d["pattern"], specials, d.get("name", "llmlab"), d.get("missing_bytes", "error"))


def _chars_with_bytes(missing: list[int]):
    """A regex matching the characters whose UTF-8 encoding contains one of the `missing` bytes."""
    ranges = []
    for b in missing:
        if b < 0x80:
            ranges.append((b, b))
        elif 0x80 <= b <= 0xBF:  # a continuation byte: occurs inside many characters
            ranges.append((0x80, 0x10FFFF))
        elif 0xC2 <= b <= 0xDF:  # lead byte of 2-byte sequences
            ranges.append(((b & 0x1F) << 6, ((b & 0x1F) << 6) | 0x3F))
        elif 0xE0 <= b <= 0xEF:
            ranges.append(((b & 0x0F) << 12, ((b & 0x0F) << 12) | 0xFFF))
        elif 0xF0 <= b <= 0xF4:
            ranges.append(((b & 0x07) << 18, min(0x10FFFF, ((b & 0x07) << 18) | 0x3FFFF)))
        # 0xC0, 0xC1 and 0xF5..0xFF never occur in UTF-8
    if not ranges:
        return None
    body = "".join(f"\\U{lo:08x}-\\U{hi:08x}" for lo, hi in ranges)
    return regex.compile(f"[{body}]")


def train_bpe(
    texts: Iterable[str],
    vocab_size: int,
    pattern: str | None = None,
    special_tokens: Iterable[str] | None = None,
    method: str = "fast",
    name: str = "llmlab",
    progress: bool = False,
) -> Tokenizer:
    """Train a byte-level BPE `Tokenizer` whose vocabulary, special tokens included, has `vocab_size` ids.

    Ids: bytes 0..255, then the merges in the order learned, then the special tokens (default
    `<|endoftext|>`, `<|system|>`, `<|user|>`, `<|assistant|>`, `<|end|>`). `method` is "fast"
    (`bpe_fast`, rustbpe's Rust merge loop; identical merges) or "reference" (`bpe_train.train_merges`).
    Each text is pre-split on its own: pass documents, not one concatenated string, if documents
    should not share pieces across their boundaries.
    """
    pattern = pattern or DEFAULT_PATTERN
    specials = list(DEFAULT_SPECIAL_TOKENS if special_tokens is None else special_tokens)
    num_merges = vocab_size - 256 - len(specials)
    if num_merges < 0:
        raise ConfigError(
            f"vocab_size {vocab_size} is too small: 256 byte tokens and {len(specials)} special tokens need "
            f"at least {256 + len(specials)}",
            hint="pass a larger --vocab-size",
        )
    if method == "fast":
        vocab = train_vocab_fast(texts, pattern, num_merges)
    elif method == "reference":
        piece_counts = count_pieces(texts, pattern)
        if progress:
            from llmlab.progress import Progress

            with Progress(total=num_merges, desc="bpe merges", unit="merge") as bar:
                merges = train_merges(piece_counts, num_merges, on_merge=lambda k, p, c: bar.update(1))
        else:
            merges = train_merges(piece_counts, num_merges)
        vocab = vocab_from_merges(merges)
    else:
        raise ConfigError(f"unknown BPE training method {method!r}", hint='use "fast" or "reference"')
    if len(set(vocab)) != len(vocab):  # cannot happen in BPE (a merged pair never reappears); checked anyway
        raise RuntimeError("BPE training produced the same token twice")
    ranks = {token: i for i, token in enumerate(vocab)}
    return Tokenizer(ranks, pattern, default_special_tokens(len(vocab), specials), name=name)
