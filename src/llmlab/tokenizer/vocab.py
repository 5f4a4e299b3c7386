"""Tokenizers with a fixed list of strings as vocabulary (char-level, word-level) and an `<unk>` token.

Training keeps the most frequent units, so text outside the vocabulary becomes `<unk>` and does not
survive a round trip. Ids: the units in the order stored, then `<unk>`, then the other special tokens.
"""

from __future__ import annotations

from abc import abstractmethod
from collections import Counter
from typing import Iterable

from llmlab.errors import ConfigError, InputError
from llmlab.tokenizer.base import BaseTokenizer, header

UNK = "<unk>"


class VocabTokenizer(BaseTokenizer):
    """Shared by `CharTokenizer` and `WordTokenizer`; a subclass defines `split(text)`."""

    kind = "vocab"

    def __init__(self, units: list[str], special_tokens: Iterable[str] = ("<|endoftext|>",)) -> None:
        if len(set(units)) != len(units) or not all(isinstance(u, str) and u for u in units):
            raise InputError(f"a {self.kind} vocabulary must list distinct non-empty strings")
        self.units = list(units)
        self._index = {u: i for i, u in enumerate(self.units)}
        names = [UNK] + [t for t in special_tokens if t != UNK]
        self.special_tokens = {t: len(self.units) + i for i, t in enumerate(names)}
        self.unk_id = self.special_tokens[UNK]
        self._strings = self.units + names

    @abstractmethod
    def split(self, text: str) -> list[str]:
        """Cut text into the units the vocabulary lists."""

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int | None = None,
              special_tokens: Iterable[str] = ("<|endoftext|>",), **kwargs):
        """Keep the most frequent units so that the vocabulary, special tokens included, has at most
        `vocab_size` ids (None: every unit seen). Ties go to the unit that sorts first."""
        specials = [UNK] + [t for t in special_tokens if t != UNK]
        probe = cls([], special_tokens, **kwargs)
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(probe.split(text))
        ranked = sorted(counts, key=lambda u: (-counts[u], u))
        if vocab_size is not None:
            if vocab_size <= len(specials):
                raise ConfigError(f"vocab_size {vocab_size} leaves no room beside {len(specials)} special tokens")
            ranked = ranked[: vocab_size - len(specials)]
        return cls(sorted(ranked), special_tokens, **kwargs)

    @property
    def vocab_size(self) -> int:
        return len(self._strings)

    def encode_ordinary(self, text: str) -> list[int]:
        index, unk = self._index, self.unk_id
        return [index.get(u, unk) for u in self.split(text)]

    def decode(self, ids: Iterable[int]) -> str:
        strings = self._strings
        try:
            return "".join([strings[i] for i in ids])
        except (IndexError, TypeError):
            bad = next(i for i in ids if not (isinstance(i, int) and 0 <= i < len(strings)))
            raise InputError(f"token id {bad} is not in this tokenizer's vocabulary (size {self.vocab_size})") from None

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return self.decode(ids).encode("utf-8")

    def unknown_rate(self, text: str) -> float:
        """Fraction of the units of `text` that are not in the vocabulary."""
        units = self.split(text)
        return sum(u not in self._index for u in units) / max(1, len(units))

    def to_dict(self) -> dict:
        return {**header(self.kind), "tokens": self.units, "special_tokens": self.special_tokens, "unk_token": UNK}

    @classmethod
    def _check_specials(cls, tok: "VocabTokenizer", d: dict) -> "VocabTokenizer":
        if tok.special_tokens != {k: int(v) for k, v in d["special_tokens"].items()}:
            raise InputError(f"the special token ids in this {cls.kind} tokenizer file do not follow its tokens")
        return tok

    @staticmethod
    def _special_order(d: dict) -> list[str]:
        return [t for t, _ in sorted(d["special_tokens"].items(), key=lambda kv: kv[1]) if t != UNK]
