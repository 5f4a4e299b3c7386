"""The cleaning outputs as Parquet, written a row group at a time so memory never holds the corpus.

`documents.parquet`: text, url, language, language_score, source, fetch_time, metadata (JSON of the
rest). `removed.parquet`: every dropped document with the step and reason, plus its text or HTML.
Each file is written under a temporary name and renamed into place when the run finishes, so a run
that fails leaves the previous outputs (or none), never half a file.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator

from llmlab.data.clean.documents import Document, Removed
from llmlab.files import atomic_path

COLUMNS = ("language", "language_score", "source", "fetch_time")
ROW_GROUP_ROWS = 1024
ROW_GROUP_CHARS = 4 << 20  # a row group of big HTML pages (removed before extraction) is cut earlier


def _schema(removed: bool):
    import pyarrow as pa

    fields = [("text", pa.string()), ("url", pa.string()), ("language", pa.string()),
              ("language_score", pa.float64()), ("source", pa.string()), ("fetch_time", pa.string()),
              ("metadata", pa.string())]
    if removed:
        fields = [("url", pa.string()), ("step", pa.string()), ("reason", pa.string()), ("text", pa.string()),
                  ("html", pa.string()), *fields[2:]]
    return pa.schema(fields)


def _row(doc: Document) -> dict:
    row = {"text": doc.text, "url": doc.url, **{c: doc.metadata.get(c) for c in COLUMNS}}
    rest = {k: v for k, v in doc.metadata.items() if k not in COLUMNS}
    row["metadata"] = json.dumps(rest, ensure_ascii=False, default=str)
    return row


class ParquetSink:
    """Rows appended in batches, flushed as a row group every ROW_GROUP_ROWS rows (or ROW_GROUP_CHARS)."""

    def __init__(self, path: Path, removed: bool) -> None:
        import pyarrow.parquet as pq

        self.removed = removed
        self.schema = _schema(removed)
        self.writer = pq.ParquetWriter(path, self.schema)
        self.rows: list[dict] = []
        self.chars = 0

    def add_documents(self, docs: list[Document]) -> None:
        for doc in docs:
            self._add(_row(doc), len(doc.text))

    def add_removed(self, removed: list[Removed]) -> None:
        for r in removed:
            row = _row(r.document) | {"step": r.step, "reason": r.reason, "html": r.document.html}
            self._add(row, len(r.document.text) + len(r.document.html or ""))

    def _add(self, row: dict, chars: int) -> None:
        self.rows.append(row)
        self.chars += chars
        if len(self.rows) >= ROW_GROUP_ROWS or self.chars >= ROW_GROUP_CHARS:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa

        if self.rows:
            self.writer.write_table(pa.Table.from_pylist(self.rows, schema=self.schema))
            self.rows, self.chars = [], 0
            pa.default_memory_pool().release_unused()  # else arrow's allocator keeps the peak

    def close(self) -> None:
        self.flush()
        self.writer.close()


@contextlib.contextmanager
def output_sinks(out: Path) -> Iterator[tuple[ParquetSink, ParquetSink]]:
    """(documents, removed) sinks whose files replace `out`'s only if the block ends without an error."""
    with atomic_path(out / "documents.parquet") as kept_tmp, atomic_path(out / "removed.parquet") as removed_tmp:
        kept, removed = ParquetSink(kept_tmp, removed=False), ParquetSink(removed_tmp, removed=True)
        try:
            yield kept, removed
        finally:
            kept.close()
            removed.close()


def read_cleaned(path: str | os.PathLike) -> list[Document]:
    """Read `documents.parquet` back into documents (metadata columns merged back)."""
    import pyarrow.parquet as pq

    docs = []
    for row in pq.read_table(path).to_pylist():
        metadata = json.loads(row.pop("metadata") or "{}") | {c: row[c] for c in COLUMNS if row.get(c) is not None}
        docs.append(Document(row["url"], text=row["text"], metadata=metadata))
    return docs
