"""Token shards: written in parallel, read back memory-mapped, validated on the way in."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llmlab.errors import CheckpointError, ConfigError, InputError
from llmlab.tokenizer import CharTokenizer, load_tokenizer, train_bpe
from llmlab.tokenizer.corpus import shakespeare_texts
from llmlab.tokenizer.shards import iter_documents, read_shards, write_shards


@pytest.fixture(scope="module")
def tok():
    return train_bpe(shakespeare_texts()[:2], vocab_size=512)


@pytest.fixture(scope="module")
def docs():
    lines = [l for l in "\n".join(shakespeare_texts()[2:4]).split("\n\n") if l.strip()]
    return lines[:1200]


def _stream(shards):
    return np.concatenate([np.asarray(a) for a in shards.arrays])


def test_documents_are_preceded_by_eos_and_decode_back(tmp_path, tok, docs):
    meta = write_shards(docs, tok, tmp_path, workers=1, progress=False)
    shards = read_shards(tmp_path)
    stream = _stream(shards)
    assert meta == shards.meta and meta["format"] == "llmlab-shards-v1"
    assert meta["dtype"] == "uint16" and stream.dtype == np.uint16
    assert meta["documents"] == len(docs) and meta["tokens"] == len(stream)
    assert meta["tokenizer_sha256"] == tok.sha256 and meta["eos_id"] == tok.eos_id == stream[0]
    starts = np.flatnonzero(stream == tok.eos_id)
    assert len(starts) == len(docs)
    pieces = np.split(stream, starts[1:])
    assert [tok.decode(p[1:].tolist()) for p in pieces] == docs
    assert load_tokenizer(tmp_path / "tokenizer.json").sha256 == tok.sha256


def test_parallel_equals_serial_and_documents_never_straddle_shards(tmp_path, tok, docs):
    serial = write_shards(docs, tok, tmp_path / "a", workers=1, shard_tokens=20_000, progress=False)
    parallel = write_shards(docs, tok, tmp_path / "b", workers=2, shard_tokens=20_000, progress=False)
    assert serial == parallel and len(serial["shards"]) > 2
    a, b = read_shards(tmp_path / "a"), read_shards(tmp_path / "b")
    for x, y in zip(a.arrays, b.arrays):
        assert np.array_equal(x, y)
        assert x[0] == tok.eos_id  # each shard starts with a whole document
    assert sum(s["documents"] for s in serial["shards"]) == len(docs)


def test_special_strings_inside_documents_are_plain_text(tmp_path, tok):
    write_shards(["a <|endoftext|> b"], tok, tmp_path, workers=1, progress=False)
    stream = _stream(read_shards(tmp_path))
    assert list(stream).count(tok.eos_id) == 1


def test_uint32_for_large_vocabularies(tmp_path):
    cl100k = load_tokenizer("cl100k_base")
    meta = write_shards(["hello world", "second document"], cl100k, tmp_path, workers=1, progress=False)
    assert meta["dtype"] == "uint32"
    stream = _stream(read_shards(tmp_path))
    assert stream.dtype == np.uint32 and stream[0] == 100257
    assert cl100k.decode(stream.tolist()) == "<|endoftext|>hello world<|endoftext|>second document"
    with pytest.raises(ConfigError):
        write_shards(["x"], cl100k, tmp_path / "c", dtype="uint16", progress=False)


def test_inputs_text_jsonl_and_parquet(tmp_path, tok):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("first document")
    (tmp_path / "in" / "b.jsonl").write_text('{"text": "second"}\n\n{"text": "third", "url": "x"}\n')
    pq.write_table(pa.table({"text": ["fourth", None, "fifth"], "url": ["u", "v", "w"]}), tmp_path / "in" / "c.parquet")
    assert list(iter_documents([tmp_path / "in"])) == ["first document", "second", "third", "fourth", "fifth"]
    (tmp_path / "bad.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(InputError, match="bad.jsonl:1"):
        list(iter_documents([tmp_path / "bad.jsonl"]))
    with pytest.raises(InputError, match="no column"):
        list(iter_documents([tmp_path / "in" / "c.parquet"], text_field="content"))
    with pytest.raises(InputError, match="does not exist"):
        list(iter_documents([tmp_path / "missing.txt"]))


def test_reader_reports_missing_truncated_and_malformed_shards(tmp_path, tok, docs):
    with pytest.raises(CheckpointError, match="meta.json is missing"):
        read_shards(tmp_path / "nothing")
    write_shards(docs[:50], tok, tmp_path, workers=1, progress=False)
    shard = tmp_path / "shard_00000.bin"
    data = shard.read_bytes()
    shard.write_bytes(data[:-10])
    with pytest.raises(CheckpointError, match="truncated"):
        read_shards(tmp_path)
    shard.unlink()
    with pytest.raises(CheckpointError, match="missing"):
        read_shards(tmp_path)
    meta = tmp_path / "meta.json"
    meta.write_text(meta.read_text()[:40])
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_shards(tmp_path)
    meta.write_text(json.dumps({"format": "llmlab-shards-v1"}))
    with pytest.raises(CheckpointError, match="lacks"):
        read_shards(tmp_path)


def test_tokenizer_without_eos_is_refused(tmp_path):
    char = CharTokenizer.train(["abc"], special_tokens=[])
    with pytest.raises(ConfigError, match="endoftext"):
        write_shards(["abc"], char, tmp_path, progress=False)
