"""The textbook trade-off, measured: vocabulary size versus sequence length versus unknown tokens.

Char-level: tiny vocabulary, ~1 character per token, unknown characters are rare but lost.
Word-level: short sequences but a huge vocabulary, and every unseen word is `<unk>`.
Byte-level BPE: a vocabulary size you choose, no unknown tokens ever (every byte is a token), and
sequences that shorten as the vocabulary grows.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmlab.tokenizer import CharTokenizer, WordTokenizer, load_tokenizer, train_bpe
from llmlab.tokenizer.base import BaseTokenizer


@dataclass
class Row:
    name: str
    vocab_size: int
    tokens: int
    chars_per_token: float
    bytes_per_token: float
    unknown_rate: float
    round_trip: bool


def measure(name: str, tok: BaseTokenizer, text: str) -> Row:
    ids = tok.encode_ordinary(text)
    unk = getattr(tok, "unk_id", None)
    unknown = sum(1 for i in ids if i == unk) if unk is not None else 0
    n = max(1, len(ids))
    return Row(
        name=name,
        vocab_size=tok.vocab_size,
        tokens=len(ids),
        chars_per_token=len(text) / n,
        bytes_per_token=len(text.encode("utf-8")) / n,
        unknown_rate=unknown / n,
        round_trip=tok.decode(ids) == text,
    )


def compare(text: str, tokenizers: list[tuple[str, BaseTokenizer]]) -> list[Row]:
    return [measure(name, tok, text) for name, tok in tokenizers]


def format_table(rows: list[Row]) -> str:
    """A Markdown table of the rows."""
    lines = [
        "| tokenizer | vocab size | tokens | chars/token | bytes/token | unknown-token rate | exact round trip |",
        "|---|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.name} | {r.vocab_size:,} | {r.tokens:,} | {r.chars_per_token:.2f} | {r.bytes_per_token:.2f} "
            f"| {r.unknown_rate:.2%} | {'yes' if r.round_trip else 'no'} |"
        )
    return "\n".join(lines)


def standard_tokenizers(train_texts: list[str], bpe_sizes=(512, 2048, 8192), word_vocab: int = 8192,
                        pretrained=("gpt2", "cl100k_base")) -> list[tuple[str, BaseTokenizer]]:
    """Char, word and BPE tokenizers trained on `train_texts`, plus pretrained ones for reference."""
    out: list[tuple[str, BaseTokenizer]] = [
        ("char", CharTokenizer.train(train_texts)),
        (f"word (top {word_vocab:,})", WordTokenizer.train(train_texts, vocab_size=word_vocab)),
    ]
    for size in bpe_sizes:
        out.append((f"llmlab BPE {size:,}", train_bpe(train_texts, vocab_size=size)))
    for name in pretrained:
        out.append((name, load_tokenizer(name)))
    return out
