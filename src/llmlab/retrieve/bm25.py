"""BM25 over the chunk table with `bm25s`, saved beside the SQLite file.

Words are lower-cased, Snowball-stemmed `\\w\\w+` runs without English stop words; a dotted name such as `os.path.join`
becomes `os`, `path`, `join`, so a question naming a function finds the page that documents it.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Iterable

import numpy as np

from llmlab.errors import InputError

GENERATION_FILE = "generation.json"


def _tokens(texts: list[str]) -> list[list[str]]:
    import bm25s

    # Snowball stems: "compress" finds "compresses", "parsing" finds "parser".
    return bm25s.tokenize(texts, stopwords="en", stemmer=_stemmer(), return_ids=False, show_progress=False)


@functools.cache
def _stemmer():
    import Stemmer

    return Stemmer.Stemmer("english").stemWords


class Bm25:
    """A bm25s retriever plus the chunk row id of each of its documents."""

    def __init__(self, retriever, rowids: np.ndarray) -> None:
        self.retriever = retriever
        self.rowids = rowids

    @classmethod
    def build(cls, rows: Iterable[tuple[int, str]]) -> "Bm25":
        try:
            import bm25s
            import Stemmer  # noqa: F401 - fail here, with a hint, rather than inside _tokens
        except ImportError as e:
            raise InputError(f"{e.name} is not installed", hint="pip install 'llmlab[retrieve]'") from e
        rows = list(rows)
        retriever = bm25s.BM25()
        retriever.index(_tokens([text for _, text in rows]), show_progress=False)
        return cls(retriever, np.array([rowid for rowid, _ in rows], dtype=np.int64))

    def save(self, directory: Path, generation: int) -> None:
        self.retriever.save(str(directory), show_progress=False)
        np.save(directory / "rowids.npy", self.rowids)
        (directory / GENERATION_FILE).write_text(json.dumps({"generation": generation}))

    @classmethod
    def load(cls, directory: Path, generation: int) -> "Bm25 | None":
        """The saved index, or None when it is missing or older than the chunk table."""
        import bm25s

        try:
            saved = json.loads((directory / GENERATION_FILE).read_text())["generation"]
            if saved != generation:
                return None
            return cls(bm25s.BM25.load(str(directory), show_progress=False), np.load(directory / "rowids.npy"))
        except (OSError, ValueError, KeyError):
            return None

    def search(self, query: str, k: int) -> list[tuple[int, float]]:
        """(row id, BM25 score) of the best k chunks that share a word with the query."""
        tokens = _tokens([query])
        if not tokens[0] or not len(self.rowids):
            return []
        found, scores = self.retriever.retrieve(tokens, k=min(k, len(self.rowids)), show_progress=False)
        return [(int(self.rowids[i]), float(s)) for i, s in zip(found[0], scores[0]) if s > 0]
