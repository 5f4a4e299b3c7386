"""BPE training: the reference trainer, the textbook recount loop and the fast path learn the same merges."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmlab.errors import ConfigError
from llmlab.tokenizer import Tokenizer, train_bpe
from llmlab.tokenizer.bpe_fast import merges_from_vocab, train_vocab_fast, vocab_from_merges
from llmlab.tokenizer.bpe_train import count_pieces, merge_pair, train_merges, train_naive
from llmlab.tokenizer.corpus import pydoc_texts, shakespeare_texts, unicode_sample
from llmlab.tokenizer.patterns import GPT2_PATTERN, GPT4_PATTERN


def reference(texts, pattern, n):
    return train_merges(count_pieces(texts, pattern), n)


def fast(texts, pattern, n):
    return merges_from_vocab(train_vocab_fast(texts, pattern, n))


def test_merge_pair_is_left_to_right_without_overlap():
    assert merge_pair([1, 1, 1], (1, 1), 9) == [9, 1]
    assert merge_pair([1, 1, 1, 1], (1, 1), 9) == [9, 9]
    assert merge_pair([1, 2, 1, 2, 3], (1, 2), 9) == [9, 9, 3]


def test_textbook_example():
    # "aaabdaaabac" (Wikipedia's BPE example): "aa" is the most frequent pair, then "aa"+"a" ties
    # with "ab"... the smallest pair wins ties.
    merges = reference(["aaabdaaabac"], r".+", 3)
    assert merges == train_naive(["aaabdaaabac"], r".+", 3)
    assert merges[0] == (ord("a"), ord("a"))


def test_reference_matches_naive_on_real_text():
    text = shakespeare_texts()[0][:12_000] + unicode_sample()
    assert reference([text], GPT4_PATTERN, 200) == train_naive([text], GPT4_PATTERN, 200)


def test_fast_matches_reference_on_real_text():
    texts = shakespeare_texts()[:6] + pydoc_texts()[:40] + [unicode_sample()]
    for pattern, n in ((GPT4_PATTERN, 1500), (GPT2_PATTERN, 400)):
        assert fast(texts, pattern, n) == reference(texts, pattern, n)


@pytest.mark.slow
def test_fast_matches_reference_on_full_corpus_at_8192():
    texts = shakespeare_texts(folio=True) + pydoc_texts() + [unicode_sample()]
    assert fast(texts, GPT4_PATTERN, 8192 - 256) == reference(texts, GPT4_PATTERN, 8192 - 256)


def test_ties_are_broken_towards_the_smallest_pair():
    # Every pair occurs exactly once, so all counts tie: merges must come in (left id, right id) order.
    texts = ["zy xw vu ts ba dc"]
    expected = sorted((ord(w[0]), ord(w[1])) for w in texts[0].split())
    for trainer in (reference, fast):
        assert trainer(texts, r"\S+|\s+", 6) == expected


@settings(max_examples=60, deadline=None)
@given(
    texts=st.lists(st.text(alphabet="ab c\nd1'é", max_size=40), min_size=1, max_size=6),
    n=st.integers(min_value=1, max_value=40),
)
def test_all_trainers_agree_on_tie_heavy_inputs(texts, n):
    # A tiny alphabet makes equal counts (ties) the rule rather than the exception.
    expected = train_naive(texts, GPT4_PATTERN, n)
    assert reference(texts, GPT4_PATTERN, n) == expected
    assert fast(texts, GPT4_PATTERN, n) == expected


def test_merges_survive_the_round_trip_through_ranks():
    merges = reference(shakespeare_texts()[:1], GPT4_PATTERN, 500)
    assert merges_from_vocab(vocab_from_merges(merges)) == merges
    assert Tokenizer.from_merges(merges).merges == merges


def test_train_bpe_layout_and_methods_agree():
    texts = shakespeare_texts()[:2]
    tok = train_bpe(texts, vocab_size=600)
    assert tok.vocab_size == 600
    assert list(tok.special_tokens) == ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
    assert tok.eos_id == 595 and max(tok.special_tokens.values()) == 599
    assert all(tok.mergeable_ranks[bytes([b])] == b for b in range(256))
    ref = train_bpe(texts, vocab_size=600, method="reference")
    assert ref.sha256 == tok.sha256
    text = texts[1][:5000]
    assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode(text)) < len(text.encode()) / 2  # it learned to compress


def test_train_bpe_stops_early_when_pairs_run_out():
    tok = train_bpe(["abab"], vocab_size=1000, special_tokens=["<|endoftext|>"])
    assert tok.vocab_size < 1000
    assert tok.eos_id == tok.vocab_size - 1


def test_train_bpe_rejects_bad_settings():
    with pytest.raises(ConfigError):
        train_bpe(["text"], vocab_size=200)
    with pytest.raises(ConfigError):
        train_bpe(["text"], vocab_size=300, method="magic")
