"""Where documents wait while a deduplication step reads every signature: an Arrow IPC stream on disk.

Deduplication can drop nothing until it has seen the whole corpus, so each batch goes to a temporary
file as one Arrow record batch and comes back, one batch at a time and in the order written, once the
groups are known: memory holds a batch, whatever the corpus size. URL, text and HTML are Arrow
strings (HTML may be null). Metadata travels as JSON text, as in the resume checkpoint and in
`documents.parquet`: a value JSON has no type for comes back as its `str`, which is what the output
holds for it anyway.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Iterator

from llmlab.data.clean.documents import Document


def _schema():
    import pyarrow as pa

    # large_string: one batch of big pages may pass the 2 GB a plain string column can address.
    return pa.schema([("url", pa.large_string()), ("text", pa.large_string()), ("html", pa.large_string()),
                      ("metadata", pa.large_string())])


class Spill:
    """Batches of documents appended to an unnamed temporary file in `folder`, read back in order."""

    def __init__(self, folder: str | Path) -> None:
        import pyarrow as pa

        self.schema = _schema()
        self.file = tempfile.TemporaryFile(dir=folder)
        self.writer = pa.ipc.new_stream(self.file, self.schema)
        self.writing = True

    def write(self, batch: list[Document]) -> None:
        import pyarrow as pa

        columns = {
            "url": [d.url for d in batch], "text": [d.text for d in batch], "html": [d.html for d in batch],
            "metadata": [json.dumps(d.metadata, ensure_ascii=False, default=str) for d in batch],
        }
        self.writer.write_batch(pa.RecordBatch.from_pydict(columns, schema=self.schema))

    def batches(self) -> Iterator[list[Document]]:
        """The written batches, one at a time, in the order they were written (ends the writing)."""
        import pyarrow as pa

        self._end_writing()
        self.file.seek(0)
        for record_batch in pa.ipc.open_stream(self.file):
            columns = record_batch.to_pydict()
            yield [
                Document(url, text=text, html=html, metadata=json.loads(metadata))
                for url, text, html, metadata in zip(columns["url"], columns["text"], columns["html"], columns["metadata"])
            ]

    def _end_writing(self) -> None:
        if self.writing:
            self.writer.close()  # writes the stream's end marker
            self.writing = False

    def close(self) -> None:
        self._end_writing()
        self.file.close()

    def __enter__(self) -> "Spill":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
