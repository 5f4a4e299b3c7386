"""Documents cut into overlapping passages small enough for the embedding model to read whole.

A chunk is a window of `size` words that starts `size - overlap` words after the previous one, so a
sentence cut at one boundary is whole in the neighbouring chunk. Windows are measured in words, not
model tokens: all-MiniLM-L6-v2 reads 256 word pieces, and 160 English words stay below that. The
chunk's text is the exact slice of the document (line breaks kept), and its id hashes the URL and that
text, so re-chunking an unchanged document gives the same ids and an incremental run embeds nothing.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from llmlab.errors import ConfigError

_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class Chunk:
    chunk_id: str
    url: str
    title: str
    text: str
    position: int  # the chunk's number within its document, from 0


def chunk_id(url: str, text: str) -> str:
    """A stable id from the content: the same URL and text always give the same id."""
    return hashlib.sha256(f"{url}\0{text}".encode()).hexdigest()[:24]


def chunk_text(text: str, size: int = 160, overlap: int = 40) -> list[str]:
    """`text` as windows of `size` words, each sharing `overlap` words with the one before."""
    if size < 1 or not 0 <= overlap < size:
        raise ConfigError(f"chunk size {size} and overlap {overlap}: need size >= 1 and 0 <= overlap < size")
    words = [m.span() for m in _WORD.finditer(text)]
    step = size - overlap
    chunks = []
    for start in range(0, len(words), step):
        window = words[start:start + size]
        chunks.append(text[window[0][0]:window[-1][1]])
        if start + size >= len(words):
            break
    return chunks


def document_title(text: str, url: str, title: str | None = None) -> str:
    """The given title, else the document's first non-empty line (shortened), else the URL."""
    if title and title.strip():
        return " ".join(title.split())
    for line in text.splitlines():
        line = " ".join(line.split())
        if line:
            return line if len(line) <= 80 else line[:77].rstrip() + "..."
    return url


def chunk_document(text: str, url: str, title: str | None = None, size: int = 160, overlap: int = 40) -> list[Chunk]:
    """One document's chunks, each carrying the document's URL and title."""
    title = document_title(text, url, title)
    return [Chunk(chunk_id(url, piece), url, title, piece, i)
            for i, piece in enumerate(chunk_text(text, size, overlap))]
