"""Main-text extraction from HTML: trafilatura as FineWeb ran it, or resiliparse when speed matters.

FineWeb called `trafilatura.extract(html, favor_precision=True, include_comments=False)`. We add
`deduplicate=False`: trafilatura's deduplication keeps a process-wide cache of seen text, so with it a
page's output depends on which pages came before it. resiliparse's `extract_plain_text` is an order of
magnitude faster and keeps more code-like text (useful for documentation sites). Its `main_content`
heuristic, though, drops lists on documentation pages (a page of 35 environment variables came out
with none of them, but with its navigation bar), so the documentation recipe extracts the whole page
and skips the boilerplate by CSS selector instead (`skip_elements`, `DOC_BOILERPLATE`).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from dataclasses import dataclass, field
from typing import Iterator

from llmlab.data.clean.documents import Document
from llmlab.data.clean.steps import DocumentStep
from llmlab.errors import ConfigError

EXTRACTORS = ("trafilatura", "resiliparse")
# Navigation, headers and footers of documentation sites: HTML5 landmarks, Sphinx (sidebar, "related"
# bars, footer), DocBook (PostgreSQL's navheader/navfooter) and Javadoc's navigation bars.
DOC_BOILERPLATE = [
    "nav", "header", "footer", "aside", "[role=navigation]", "[role=banner]", "[role=contentinfo]",
    ".sphinxsidebar", ".related", ".footer", ".navheader", ".navfooter", ".topNav", ".bottomNav", ".subNav",
]
# `&nbsp;` and its narrow/figure cousins only stop line breaks in a browser; in plain text (and to a
# tokenizer) they should be the ordinary space they look like.
_NO_BREAK_SPACES = str.maketrans({"\u00a0": " ", "\u2007": " ", "\u202f": " "})


class ExtractionTimeout(Exception):
    pass


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Interrupt a runaway extraction (pathological HTML) after `seconds`; only on a main thread."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def on_alarm(signum, frame):  # noqa: ARG001
        raise ExtractionTimeout

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def trafilatura_text(html: str, favor_precision: bool = True, include_tables: bool = True, fast: bool = False) -> str:
    import trafilatura

    return trafilatura.extract(
        html,
        favor_precision=favor_precision,
        include_comments=False,
        include_tables=include_tables,
        deduplicate=False,
        fast=fast,
    ) or ""


def resiliparse_text(html: str, main_content: bool = True, skip_elements: list[str] | None = None) -> str:
    from resiliparse.extract.html2text import extract_plain_text

    return extract_plain_text(
        html, main_content=main_content, alt_texts=False, links=False, skip_elements=skip_elements or None
    ).strip()


@dataclass
class Extract(DocumentStep):
    """HTML -> main text. Documents that arrive as text (JSONL, WET, .txt) pass through unchanged."""

    name = "extract"
    kind = "extract"

    extractor: str = "trafilatura"
    favor_precision: bool = True
    include_tables: bool = True
    # trafilatura only: skip its fallback extractors (readability, jusText), about twice as fast.
    # FineWeb ran with them (fast = false).
    fast: bool = False
    main_content: bool = True  # resiliparse only
    # resiliparse only: CSS selectors of elements to leave out ("doc" stands for DOC_BOILERPLATE).
    skip_elements: list[str] = field(default_factory=list)
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.extractor not in EXTRACTORS:
            raise ConfigError(
                f"unknown extractor {self.extractor!r}", hint=f"use one of: {', '.join(EXTRACTORS)}"
            )
        self._skip = [sel for s in self.skip_elements for sel in (DOC_BOILERPLATE if s == "doc" else [s])]

    def extract(self, html: str) -> str:
        if self.extractor == "trafilatura":
            return trafilatura_text(html, self.favor_precision, self.include_tables, self.fast)
        return resiliparse_text(html, self.main_content, self._skip)

    def process(self, doc: Document) -> Document | str:
        status = doc.metadata.get("http_status", 200)
        if status != 200:
            return f"http_{status}"
        if doc.html is None:
            if doc.text.strip():
                return doc
            return "not_html" if doc.metadata.get("content_type") else "empty"
        try:
            with _time_limit(self.timeout_s):
                text = self.extract(doc.html)
        except ExtractionTimeout:
            return "timeout"
        if not text.strip():
            return "no_text"
        return doc.replace(text=text.translate(_NO_BREAK_SPACES), html=None)
