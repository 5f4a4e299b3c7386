"""What every llmlab tokenizer shares: special tokens, tiktoken-style `allowed_special`, save/load.

A tokenizer maps text to a list of integer ids and back. Subclasses (`Tokenizer` for byte-level BPE,
`CharTokenizer`, `WordTokenizer`) implement `encode_ordinary`, `decode_bytes` and `to_dict`; this
module handles special tokens the way tiktoken does:

- `encode(text)` raises `DisallowedSpecialError` if `text` contains the text of a special token
  (e.g. a user typed "<|endoftext|>"), so a document cannot forge a control token by accident;
- `encode(text, allowed_special={"<|endoftext|>"})` or `allowed_special="all"` turns those strings
  into their special ids;
- `encode_ordinary(text)` treats every special string as plain text.

The on-disk format is one JSON file (see docs/tokenizer.md); `sha256` hashes its canonical content, so
token shards and checkpoints can record exactly which tokenizer made them.
"""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from functools import cached_property, lru_cache
from typing import AbstractSet, Collection, Literal

import regex

from llmlab.errors import InputError
from llmlab.files import write_json

FORMAT = "llmlab-tokenizer"
FORMAT_VERSION = 1
EOS_TOKEN = "<|endoftext|>"
# Special tokens of a tokenizer trained by llmlab; the chat template uses the last four.
DEFAULT_SPECIAL_TOKENS = ("<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>")

AllowedSpecial = AbstractSet[str] | Collection[str] | Literal["all"]


class DisallowedSpecialError(InputError, ValueError):
    """The text contains the string of special token `token`, which the caller did not allow.

    The hint speaks Python (`allowed_special=`); a front end with other words for it (the CLI's
    `--allowed-special`) passes its own `hint`."""

    def __init__(self, token: str, hint: str | None = None) -> None:
        super().__init__(
            f"the text contains the special token {token!r}, which is not allowed here",
            hint=hint or (
                "pass allowed_special={%r} (or \"all\") to encode it as a special token, or use "
                "encode_ordinary() to encode it as plain text" % token
            ),
        )
        self.token = token


@lru_cache(maxsize=64)
def _special_regex(tokens: frozenset[str]) -> regex.Pattern:
    # Longest first, so "<|end|>" never wins over a longer token that starts the same way.
    alternatives = sorted(tokens, key=len, reverse=True)
    return regex.compile("|".join(regex.escape(t) for t in alternatives))


class BaseTokenizer(ABC):
    """Shared behaviour of llmlab tokenizers. Subclasses set `special_tokens` in `__init__`."""

    kind: str = "base"
    special_tokens: dict[str, int]

    # ---- what subclasses provide -------------------------------------------------------------
    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids, i.e. one more than the largest id (the size of a model's embedding)."""

    @abstractmethod
    def encode_ordinary(self, text: str) -> list[int]:
        """Encode `text`, treating special-token strings as ordinary text."""

    @abstractmethod
    def decode_bytes(self, ids: list[int]) -> bytes:
        """The bytes the ids stand for (special tokens as their UTF-8 text)."""

    @abstractmethod
    def to_dict(self) -> dict:
        """The JSON-serialisable content of the tokenizer file (see docs/tokenizer.md)."""

    # ---- shared behaviour --------------------------------------------------------------------
    @property
    def eos_id(self) -> int | None:
        """Id of `<|endoftext|>` (the document delimiter), or None if the tokenizer has none."""
        return self.special_tokens.get(EOS_TOKEN)

    def decode(self, ids: list[int]) -> str:
        """Text for `ids`; bytes that are not valid UTF-8 (a cut multi-byte character) become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def encode(
        self,
        text: str,
        allowed_special: AllowedSpecial = frozenset(),
        disallowed_special: AllowedSpecial = "all",
    ) -> list[int]:
        """Encode `text` with tiktoken's special-token semantics (see the module docstring)."""
        allowed = self._allowed(allowed_special)
        self._check_disallowed(text, allowed, disallowed_special)
        if not allowed:
            return self.encode_ordinary(text)
        ids: list[int] = []
        start = 0
        for m in _special_regex(frozenset(allowed)).finditer(text):
            if m.start() > start:
                ids.extend(self.encode_ordinary(text[start : m.start()]))
            ids.append(self.special_tokens[m.group()])
            start = m.end()
        if start < len(text):
            ids.extend(self.encode_ordinary(text[start:]))
        return ids

    def _allowed(self, allowed_special: AllowedSpecial) -> set[str]:
        if allowed_special == "all":
            return set(self.special_tokens)
        allowed = set(allowed_special)
        unknown = allowed - set(self.special_tokens)
        if unknown:
            raise InputError(
                f"allowed_special names tokens this tokenizer does not have: {sorted(unknown)}",
                hint=f"its special tokens are {sorted(self.special_tokens)}",
            )
        return allowed

    def _check_disallowed(self, text: str, allowed: set[str], disallowed_special: AllowedSpecial) -> None:
        if disallowed_special == "all":
            disallowed = set(self.special_tokens) - allowed
        else:
            disallowed = set(disallowed_special)
        if not disallowed:
            return
        m = _special_regex(frozenset(disallowed)).search(text)
        if m:
            raise DisallowedSpecialError(m.group())

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one token (a special token as its UTF-8 text)."""
        return self.decode_bytes([token_id])

    @cached_property
    def sha256(self) -> str:
        """Hash of the canonical JSON content: equal hashes mean the same ids for every text.

        Computed once: a tokenizer is not meant to change after construction."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def save(self, path: str | os.PathLike) -> None:
        """Write the tokenizer as llmlab JSON (atomically)."""
        write_json(path, self.to_dict(), indent=1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, special_tokens={len(self.special_tokens)})"


def header(kind: str) -> dict:
    return {"format": FORMAT, "version": FORMAT_VERSION, "type": kind}


def default_special_tokens(first_id: int, names: tuple[str, ...] | list[str] = DEFAULT_SPECIAL_TOKENS) -> dict[str, int]:
    """Special tokens numbered from `first_id` in the given order."""
    return {name: first_id + i for i, name in enumerate(names)}
