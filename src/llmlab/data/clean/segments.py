"""Running steps over batches: the building blocks every executor (local processes, Ray) shares.

A recipe's step list is cut into segments at corpus-wide steps (deduplication). A per-document segment
runs on any batch anywhere (`run_steps`); a deduplication step needs every signature first, then
splits each batch into kept documents and duplicates with `drop_duplicates`. Executors only decide
where these run, so they keep the same documents.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable, Iterator

import numpy as np

from llmlab.data.clean.dedup import DedupStep
from llmlab.data.clean.documents import Document, Removed
from llmlab.data.clean.stats import StepStats, doc_chars
from llmlab.data.clean.steps import Step

# What running a segment over one batch gives: kept documents, removed ones, one StepStats per step.
Output = tuple[list[Document], list[Removed], list[StepStats]]


def batches(docs: Iterable[Document], size: int) -> Iterator[list[Document]]:
    """`docs` in lists of `size` (the last one shorter)."""
    batch: list[Document] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def run_steps(steps: list[Step], batch: list[Document]) -> Output:
    """Apply `steps` in order to one batch."""
    removed: list[Removed] = []
    stats = []
    for step in steps:
        s = StepStats(step.name, step.kind, docs_in=len(batch), chars_in=sum(map(doc_chars, batch)))
        start = time.perf_counter()
        result = step(batch)
        s.seconds = time.perf_counter() - start
        batch = result.kept
        s.docs_out, s.chars_out = len(batch), sum(map(doc_chars, batch))
        s.reasons.update(r.reason for r in result.removed)
        removed += result.removed
        stats.append(s)
    return batch, removed, stats


def split_segments(steps: list[Step]) -> list[list[Step]]:
    """Runs of per-document steps, each corpus-wide step alone: [[a, b], [dedup], [c]]."""
    segments: list[list[Step]] = []
    for step in steps:
        if step.corpus_wide or not segments or segments[-1][0].corpus_wide:
            segments.append([step])
        else:
            segments[-1].append(step)
    return segments


def drop_duplicates(
    step: DedupStep, batch: list[Document], roots: np.ndarray, start: int, url_of: Callable[[int], str], seconds: float = 0.0
) -> Output:
    """Split `batch`, whose first document is number `start` of the corpus, by `roots` (the corpus-wide
    `step.roots`): a document that is its own root is kept, the others are removed as duplicates of
    their root's URL. The earliest document of a group is its root, so both executors keep the same one."""
    kept, removed = [], []
    for index, doc in enumerate(batch, start):
        root = int(roots[index])
        if root == index:
            kept.append(doc)
        else:
            removed.append(Removed(doc.with_metadata(duplicate_of=url_of(root)), step.name, step.reason))
    stats = StepStats(step.name, step.kind, docs_in=len(batch), chars_in=sum(map(doc_chars, batch)),
                      docs_out=len(kept), chars_out=sum(map(doc_chars, kept)), seconds=seconds)
    stats.reasons.update(r.reason for r in removed)
    return kept, removed, [stats]
