"""`llmlab tokenizer train | encode | decode | inspect | compare | shards | export` end to end."""

import json

import pytest

from llmlab.cli import main
from llmlab.tokenizer import load_tokenizer
from llmlab.tokenizer.corpus import shakespeare_texts
from llmlab.tokenizer.shards import read_shards


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    with open(d / "docs.jsonl", "w") as f:
        for text in shakespeare_texts()[:3]:
            f.write(json.dumps({"text": text}) + "\n")
    return d


def test_train_encode_decode_inspect_shards_export(tmp_path, corpus, capsys):
    tok_path = tmp_path / "tokenizer.json"
    assert main(["tokenizer", "train", "--input", str(corpus / "docs.jsonl"), "--vocab-size", "600",
                 "--out", str(tok_path)]) == 0
    tok = load_tokenizer(tok_path)
    assert tok.vocab_size == 600
    capsys.readouterr()

    assert main(["tokenizer", "encode", "--tokenizer", str(tok_path), "To be<|endoftext|>", "--allowed-special", "all"]) == 0
    ids = [int(x) for x in capsys.readouterr().out.split()]
    assert ids == tok.encode("To be<|endoftext|>", allowed_special="all")
    assert main(["tokenizer", "encode", "--tokenizer", str(tok_path), "<|user|>"]) == 1  # disallowed: clear error
    assert "not allowed" in capsys.readouterr().err

    assert main(["tokenizer", "decode", "--tokenizer", str(tok_path), *map(str, ids)]) == 0
    assert capsys.readouterr().out == "To be<|endoftext|>"

    assert main(["tokenizer", "inspect", "--tokenizer", str(tok_path)]) == 0
    out = capsys.readouterr().out
    assert "vocab size:     600" in out and "<|endoftext|>=595" in out and "merges:" in out

    shards = tmp_path / "shards"
    assert main(["tokenizer", "shards", "--tokenizer", str(tok_path), "--input", str(corpus / "docs.jsonl"),
                 "--out", str(shards), "--workers", "1"]) == 0
    assert read_shards(shards).meta["documents"] == 3

    for fmt, name in (("hf", "hf.json"), ("tiktoken", "x.tiktoken"), ("llmlab", "copy.json")):
        assert main(["tokenizer", "export", "--tokenizer", str(tok_path), "--format", fmt, "--out", str(tmp_path / name)]) == 0
    assert load_tokenizer(tmp_path / "hf.json").mergeable_ranks == tok.mergeable_ranks
    assert load_tokenizer(tmp_path / "copy.json").sha256 == tok.sha256


def test_train_char_and_word(tmp_path, corpus):
    for kind in ("char", "word"):
        out = tmp_path / f"{kind}.json"
        assert main(["tokenizer", "train", "--kind", kind, "--input", str(corpus / "docs.jsonl"), "--vocab-size", "300",
                     "--out", str(out)]) == 0
        assert load_tokenizer(out).kind == kind


def test_compare_prints_the_trade_off_table(tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("\n".join(shakespeare_texts()[:2]))
    assert main(["tokenizer", "compare", "--text", str(text), "--bpe-sizes", "300,1000", "--word-vocab", "2000"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line.split("|") for line in out.splitlines() if line.startswith("| ") and "---" not in line}
    assert {"char", "word (top 2,000)", "llmlab BPE 300", "llmlab BPE 1,000", "gpt2", "cl100k_base"} <= set(rows)
    chars_per_token = {k: float(v[4]) for k, v in rows.items() if k != "tokenizer"}
    assert chars_per_token["char"] == 1.0
    assert chars_per_token["llmlab BPE 300"] < chars_per_token["llmlab BPE 1,000"] < chars_per_token["word (top 2,000)"]
    assert rows["word (top 2,000)"][6].strip() != "0.00%"  # unseen words are <unk>
    assert rows["cl100k_base"][6].strip() == "0.00%"


def test_missing_tokenizer_is_a_clear_error(tmp_path, capsys):
    assert main(["tokenizer", "encode", "--tokenizer", str(tmp_path / "nope.json"), "x"]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_disallowed_special_token_error_names_the_cli_flag(tmp_path, capsys):
    # The library's hint is Python (allowed_special=...); on the command line it must be the flag.
    assert main(["tokenizer", "encode", "--tokenizer", "gpt2", "Hi<|endoftext|>"]) == 1
    err = capsys.readouterr().err
    assert "not allowed" in err and "--allowed-special" in err and "allowed_special=" not in err
    assert main(["tokenizer", "encode", "--tokenizer", "gpt2", "Hi<|endoftext|>", "--allowed-special", "all"]) == 0
