"""The record every cleaning step passes along, and what a step returns.

A `Document` starts life in a reader (raw HTML from a WARC record, or text from JSONL/Parquet/text
files) and leaves the pipeline as one row of `documents.parquet`. Steps never mutate a document in
place; they return new ones (`dataclasses.replace`), so a batch can be retried or run anywhere.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Document:
    """One page or text: `html` until extraction, `text` after it; `metadata` rides along to Parquet."""

    url: str
    text: str = ""
    html: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def replace(self, **changes: Any) -> "Document":
        return dataclasses.replace(self, **changes)

    def with_metadata(self, **values: Any) -> "Document":
        return dataclasses.replace(self, metadata={**self.metadata, **values})


@dataclass(slots=True)
class Removed:
    """A document a step dropped, with the step's name and a short machine-readable reason."""

    document: Document
    step: str
    reason: str


@dataclass(slots=True)
class StepResult:
    """What a step returns for one batch: the documents it kept and the ones it removed."""

    kept: list[Document]
    removed: list[Removed] = field(default_factory=list)
