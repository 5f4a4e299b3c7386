"""Documents cut into overlapping passages that the embedding model reads whole.

all-MiniLM-L6-v2 reads at most 256 word pieces, [CLS] and [SEP] included, and silently drops the rest,
so a chunk is measured in that model's own word pieces: at most `size` (128 by default, 254 at most). A
chunk starts and ends at whitespace (a word longer than a whole chunk is cut between its pieces), and
the next chunk starts at the first word within the last `overlap` pieces, so a sentence cut at one
boundary is whole in the neighbouring chunk. BERT's tokenizer splits text at whitespace and
punctuation before it looks up pieces, so a slice cut at those points has exactly the pieces counted
for it in the whole document. The chunk's text is the exact slice (line breaks kept), and its id
hashes the URL and that text, so re-chunking an unchanged document gives the same ids and an
incremental run embeds nothing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from llmlab.errors import ConfigError

MAX_PIECES = 254  # all-MiniLM-L6-v2's 256-piece window less [CLS] and [SEP]
# Half a window: SmolLM2-135M answered pydoc questions better from three short passages than from two
# long ones in the same prompt budget (docs/retrieval.md), and a short chunk embeds in half the time.
DEFAULT_PIECES = 128
DEFAULT_OVERLAP = 32


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


def check_chunking(size: int, overlap: int, limit: int = MAX_PIECES) -> None:
    if not 1 <= size <= limit or not 0 <= overlap < size:
        raise ConfigError(f"chunk size {size} and overlap {overlap} (word pieces): need 1 <= size <= {limit} "
                          f"and 0 <= overlap < size")


def chunk_text(text: str, word_pieces: Any, size: int = DEFAULT_PIECES, overlap: int = DEFAULT_OVERLAP) -> list[str]:
    """`text` as windows of at most `size` word pieces, each sharing up to `overlap` pieces with the one before.

    `word_pieces` is the embedding model's `tokenizers.Tokenizer` (`Embedder.word_pieces`), with no
    truncation, so the whole document is counted.
    """
    check_chunking(size, overlap)
    encoding = word_pieces.encode(text, add_special_tokens=False)
    spans, n = encoding.offsets, len(encoding.offsets)
    # A piece after whitespace starts a word; a piece not marked "##" starts a pre-token (a cut there is exact).
    word_start = [i == 0 or any(c.isspace() for c in text[spans[i - 1][1]:spans[i][0]]) for i in range(n)]
    whole = [w or not token.startswith("##") for w, token in zip(word_start, encoding.tokens)]

    def cut(lo: int, hi: int, latest: bool) -> int:
        """The latest (or earliest) word start in [lo, hi], else pre-token start, else `hi`; `n` counts as a start."""
        order = range(hi, lo - 1, -1) if latest else range(lo, hi + 1)
        for starts in (word_start, whole):
            for i in order:
                if i == n or starts[i]:
                    return i
        return hi

    chunks, start, end = [], 0, 0
    while start < n:
        # Each chunk ends past the one before, even inside a word longer than a chunk.
        end = n if start + size >= n else cut(max(start, end) + 1, start + size, latest=True)
        chunks.append(text[spans[start][0]:spans[end - 1][1]])
        if end == n:
            break
        start = cut(max(start + 1, end - overlap), end, latest=False)
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


def chunk_document(text: str, url: str, word_pieces: Any, title: str | None = None, size: int = DEFAULT_PIECES,
                   overlap: int = DEFAULT_OVERLAP) -> list[Chunk]:
    """One document's chunks, each carrying the document's URL and title."""
    title = document_title(text, url, title)
    return [Chunk(chunk_id(url, piece), url, title, piece, i)
            for i, piece in enumerate(chunk_text(text, word_pieces, size, overlap))]
