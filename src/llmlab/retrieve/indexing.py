"""Building or updating an index from documents (the clean stage's `documents.parquet`).

Re-running on a grown table embeds only chunks whose id (a hash of URL and text) the index lacks, and
drops chunks that are no longer in the table, so the index mirrors the table it was last built from.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from llmlab.errors import InputError
from llmlab.progress import Progress
from llmlab.retrieve.bm25 import Bm25
from llmlab.retrieve.chunking import DEFAULT_OVERLAP, DEFAULT_PIECES, Chunk, check_chunking, chunk_document
from llmlab.retrieve.embeddings import Embedder
from llmlab.retrieve.store import BM25_DIR, Store, replace_directory

Documents = str | os.PathLike | Iterable[Mapping[str, Any]]


def read_documents(path: str | os.PathLike) -> Iterator[dict]:
    """Rows of a Parquet table with a `text` column (and `url`, `title`, `metadata` when present), a row group at a time."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    try:
        table = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise InputError(f"{path}: not a readable Parquet file ({e})") from e
    names = table.schema_arrow.names
    if "text" not in names:
        raise InputError(f"{path}: no 'text' column (columns: {', '.join(names)})",
                         hint="index the clean stage's documents.parquet")
    columns = [c for c in ("text", "url", "title", "metadata") if c in names]
    row = 0
    for batch in table.iter_batches(batch_size=1024, columns=columns):
        for record in batch.to_pylist():
            row += 1
            if not record.get("url"):
                record["url"] = f"{path.name}#row{row}"
            if not record.get("title") and record.get("metadata"):
                try:
                    record["title"] = json.loads(record["metadata"]).get("title")
                except (ValueError, AttributeError):
                    pass
            yield record


def _chunks(documents: Iterable[Mapping[str, Any]], word_pieces: Any, size: int,
            overlap: int) -> tuple[list[Chunk], int, int]:
    """Unique chunks of all documents, the number of documents used and of those skipped for lack of text."""
    chunks: dict[str, Chunk] = {}
    used = skipped = 0
    for doc in documents:
        text = doc.get("text")
        if not isinstance(text, str) or not text.strip():
            skipped += 1
            continue
        used += 1
        for chunk in chunk_document(text, str(doc.get("url") or f"doc{used}"), word_pieces, doc.get("title"),
                                    size, overlap):
            chunks.setdefault(chunk.chunk_id, chunk)
    return list(chunks.values()), used, skipped


def build_index(documents: Documents, out_dir: str | os.PathLike, embedder: Embedder | None = None,
                chunk_size: int = DEFAULT_PIECES, chunk_overlap: int = DEFAULT_OVERLAP, batch_size: int = 256,
                rebuild: bool = False, show_progress: bool | None = None) -> dict[str, Any]:
    """Build or update the index in `out_dir` from a Parquet path or an iterable of {text, url, title} rows.

    Chunks hold at most `chunk_size` of the embedding model's word pieces, `chunk_overlap` shared with
    the one before. An index made with other settings (chunking, model, embedding dtype) is refused, or
    with `rebuild` made again.
    Returns the counts and speeds: documents, skipped_documents, chunks, new_chunks, removed_chunks,
    embed_seconds, embed_chunks_per_s, bm25_seconds, bm25_chunks_per_s.
    """
    check_chunking(chunk_size, chunk_overlap)  # before the model loads
    rows = read_documents(documents) if isinstance(documents, (str, os.PathLike)) else documents
    embedder = embedder or Embedder()
    chunks, used, skipped = _chunks(rows, embedder.word_pieces, chunk_size, chunk_overlap)
    if not chunks:
        raise InputError(f"no document has text to index ({skipped} without text)")
    store = Store(out_dir, create=True)
    try:
        # The dtype is a setting too: vectors of one chunk differ slightly between float32 and bfloat16,
        # so an index never mixes the two.
        rebuilt = store.initialise({"model": embedder.name, "dim": embedder.dim, "dtype": embedder.dtype,
                                    "chunk_unit": "word pieces", "chunk_size": chunk_size,
                                    "chunk_overlap": chunk_overlap}, rebuild=rebuild)
        have = store.chunk_ids()
        wanted = {c.chunk_id for c in chunks}
        # Longest first, so each batch holds chunks of similar length and little compute goes to padding.
        new = sorted((c for c in chunks if c.chunk_id not in have), key=lambda c: -len(c.text))
        started = time.perf_counter()
        with Progress(total=len(new), desc="embed chunks", unit="chunk", disable=None if show_progress is None else not show_progress) as bar:
            for start in range(0, len(new), batch_size):
                batch = new[start:start + batch_size]
                store.add(batch, embedder.embed([c.text for c in batch]))
                bar.update(len(batch))
        embed_seconds = time.perf_counter() - started
        removed = store.remove(have - wanted)
        if new or removed or not (store.dir / BM25_DIR).exists():
            store.bump_generation()
        started = time.perf_counter()
        bm25 = Bm25.build(store.texts())
        bm25_seconds = time.perf_counter() - started
        replace_directory(lambda tmp: bm25.save(tmp, store.generation), store.dir / BM25_DIR)
        total = store.count()
    finally:
        store.close()
    return {
        "documents": used, "skipped_documents": skipped, "chunks": total, "new_chunks": len(new),
        "kept_chunks": len(chunks) - len(new), "removed_chunks": removed, "rebuilt": rebuilt,
        "embed_seconds": round(embed_seconds, 3),
        "embed_chunks_per_s": round(len(new) / embed_seconds, 1) if new and embed_seconds > 0 else None,
        "bm25_seconds": round(bm25_seconds, 3),
        "bm25_chunks_per_s": round(total / bm25_seconds, 1) if bm25_seconds > 0 else None,
        "model": embedder.name, "dtype": embedder.dtype, "chunk_size": chunk_size, "chunk_overlap": chunk_overlap,
    }
