"""The fast BPE training path: llmlab drives rustbpe's Rust merge loop and checks it stays identical.

rustbpe (the trainer of nanochat) runs the same algorithm as `bpe_train.train_merges`: unique
pre-split pieces with counts, incremental pair counts, a max-heap with lazy refresh, merges applied
left to right, ties broken towards the smallest (left id, right id) pair, merge k -> id 256 + k. It
pre-splits each text in parallel (rayon, one text per task) with fancy-regex using the pattern we give
it, in the fastest equivalent form llmlab knows (`patterns.fast_equivalent`: the same split, no
possessive quantifiers). The tests check that its merges equal the reference trainer's on real text and on inputs built to
tie, so the two paths are interchangeable; this module only adapts the interface.

rustbpe counts pieces in 32-bit integers: corpora with more than ~2 billion occurrences of one piece
need the reference trainer.
"""

from __future__ import annotations

from typing import Iterable

from llmlab.tokenizer.bpe_encode import Pair, recover_merges
from llmlab.tokenizer.bpe_train import count_pieces, train_merges
from llmlab.tokenizer.patterns import fast_equivalent


def train_vocab_fast(texts: Iterable[str], pattern: str, num_merges: int) -> list[bytes]:
    """Learn up to `num_merges` merges with rustbpe; returns the bytes of every token, by id.

    `merges_from_vocab` turns the result into the pair list that `bpe_train.train_merges` returns.
    """
    try:
        import rustbpe
    except ImportError:  # not installed: the reference trainer gives the same merges, only slower
        return vocab_from_merges(train_merges(count_pieces(texts, pattern), num_merges))
    trainer = rustbpe.Tokenizer()
    trainer.train_from_iterator(iter(texts), 256 + num_merges, pattern=fast_equivalent(pattern))
    return [token for token, _ in sorted(trainer.get_mergeable_ranks(), key=lambda kv: kv[1])]


def vocab_from_merges(merges: list[Pair]) -> list[bytes]:
    """The bytes of every token, by id, for merges numbered from 256 in order (the inverse of `merges_from_vocab`)."""
    vocab = [bytes([b]) for b in range(256)]
    for left, right in merges:
        vocab.append(vocab[left] + vocab[right])
    return vocab


def merges_from_vocab(vocab: list[bytes]) -> list[Pair]:
    """The merge pairs behind a vocabulary numbered bytes 0..255, merges 256.. in learned order."""
    return recover_merges({token: i for i, token in enumerate(vocab)})
