"""Character-level tokenizer: one token per Unicode character, `<unk>` for characters not seen.

The smallest vocabulary (a few hundred ids for English text) and the longest sequences: about one
token per character, so a model sees words only as spellings and its context window holds little text.
"""

from __future__ import annotations

from llmlab.tokenizer.vocab import VocabTokenizer


class CharTokenizer(VocabTokenizer):
    kind = "char"

    def split(self, text: str) -> list[str]:
        return list(text)

    @classmethod
    def from_dict(cls, d: dict) -> "CharTokenizer":
        return cls._check_specials(cls(d["tokens"], cls._special_order(d)), d)
