"""What a cleaning step is: a named, configurable, pure function over a batch of documents.

A step holds only its configuration (and models it loads lazily), never state carried between
batches, so the runner can hand any batch to any worker process, and another engine (Ray Data's
`map_batches`, a datatrove `PipelineStep`) can wrap the same object unchanged. Steps that must see the
whole corpus at once (deduplication) say so with `corpus_wide = True`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from llmlab.data.clean.documents import Document, Removed, StepResult


class Step(ABC):
    """Base class: subclasses set `name` and implement `__call__` (or `process`, for `DocumentStep`)."""

    name: ClassVar[str] = "step"
    # "extract", "filter", "quality", "dedup" or "format": the report groups steps by kind, and
    # `compare_recipes` re-runs only the quality ones.
    kind: ClassVar[str] = "filter"
    corpus_wide: ClassVar[bool] = False

    @abstractmethod
    def __call__(self, batch: list[Document]) -> StepResult:
        """Kept and removed documents of `batch`, with the reason for each removal."""


class DocumentStep(Step):
    """A step that decides about each document on its own.

    `process` returns the (possibly rewritten) document to keep it, or a reason string to drop it.
    """

    @abstractmethod
    def process(self, doc: Document) -> Document | str:
        """The document to keep (possibly rewritten), or why it is dropped."""

    def __call__(self, batch: list[Document]) -> StepResult:
        kept: list[Document] = []
        removed: list[Removed] = []
        for doc in batch:
            out = self.process(doc)
            if isinstance(out, str):
                removed.append(Removed(doc, self.name, out))
            else:
                kept.append(out)
        return StepResult(kept, removed)
