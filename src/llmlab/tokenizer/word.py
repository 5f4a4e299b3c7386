"""Word-level tokenizer: one token per word (with its leading space), `<unk>` for words not seen.

Short sequences, but the vocabulary grows with the text (Zipf's law: there is always another rare
word), so a capped vocabulary leaves names, typos and inflections as `<unk>`, and the model cannot see
that "run" and "running" share a stem. Splitting keeps spaces with the word after them, so a text made
only of known words decodes back exactly.
"""

from __future__ import annotations

import regex

from llmlab.tokenizer.vocab import VocabTokenizer

# A word with its leading space, a run of punctuation with its leading space, or whitespace.
WORD_PATTERN = r" ?\p{L}[\p{L}\p{M}'’]*| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?= \S)|\s+"


class WordTokenizer(VocabTokenizer):
    kind = "word"

    def __init__(self, units, special_tokens=("<|endoftext|>",), pattern: str = WORD_PATTERN) -> None:
        super().__init__(units, special_tokens)
        self.pattern = pattern
        self._split = regex.compile(pattern)

    def split(self, text: str) -> list[str]:
        return self._split.findall(text)

    def to_dict(self) -> dict:
        return {**super().to_dict(), "pattern": self.pattern}

    @classmethod
    def from_dict(cls, d: dict) -> "WordTokenizer":
        return cls._check_specials(cls(d["tokens"], cls._special_order(d), d.get("pattern", WORD_PATTERN)), d)
