"""The index on disk: one SQLite file with the chunks and their vectors (sqlite-vec), BM25 beside it.

    INDEX_DIR/index.sqlite   meta(key, value); chunks(id, chunk_id, url, title, text, position);
                             vectors: a sqlite-vec `vec0` table, rowid = chunks.id, float[dim]

The vec0 table can answer nearest-neighbour queries in SQL (`WHERE embedding MATCH ? AND k = ?`), but
its scan took ~3x longer than a numpy product over the same 100k vectors (docs/retrieval.md), so
search loads the vectors once and ranks them in memory (1.5 KB per chunk).
    INDEX_DIR/bm25/          the bm25s index over all chunks, in chunks.id order (rowids.npy), and the
                             `generation` of the chunk table it was built from

Each batch of embedded chunks is committed in one transaction, so an interrupted build keeps what it
embedded and the next run continues from there. BM25 is rebuilt over all chunks after every build
(its IDF depends on the whole collection; it costs a small fraction of embedding) and written to a
temporary folder that replaces the old one; a reader that finds it stale rebuilds it in memory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np

from llmlab.errors import ConfigError, InputError
from llmlab.files import fsync_tree

FORMAT = "llmlab-index-v1"
DB_FILE = "index.sqlite"
BM25_DIR = "bm25"


def sqlite_module():
    """A DB-API sqlite3 module that can load extensions (some Python builds disable it; pysqlite3 can)."""
    import sqlite3

    if hasattr(sqlite3.Connection, "enable_load_extension"):
        return sqlite3
    try:
        from pysqlite3 import dbapi2
    except ImportError as e:
        raise InputError("this Python's sqlite3 cannot load the sqlite-vec extension",
                         hint="pip install 'llmlab[retrieve]' (it brings pysqlite3-binary)") from e
    return dbapi2


class Store:
    """An open `index.sqlite`: chunk rows, their vectors, and the metadata that says how they were made."""

    def __init__(self, directory: str | os.PathLike, create: bool = False) -> None:
        try:
            import sqlite_vec
        except ImportError as e:
            raise InputError("sqlite-vec is not installed", hint="pip install 'llmlab[retrieve]'") from e
        self.sqlite = sqlite_module()
        self.dir = Path(directory)
        path = self.dir / DB_FILE
        if not create and not path.exists():
            raise InputError(f"{self.dir}: no retrieval index here (missing {DB_FILE})",
                             hint="build one with: llmlab index DOCUMENTS.parquet --out DIR")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()  # the server searches from several threads
        try:
            self.db = self.sqlite.connect(str(path), check_same_thread=False)
            self.db.enable_load_extension(True)
            sqlite_vec.load(self.db)
            self.db.enable_load_extension(False)
            if create:
                self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self.meta = dict(self.db.execute("SELECT key, value FROM meta"))
        except self.sqlite.DatabaseError as e:
            raise InputError(f"{path}: not a readable index ({e})",
                             hint="delete the folder and build the index again") from e
        if self.meta and self.meta.get("format") != FORMAT:
            raise InputError(f"{path}: unknown index format {self.meta.get('format')!r} (expected {FORMAT})")
        if not create and not self.meta:
            raise InputError(f"{path}: the index has no metadata (an interrupted first build?)",
                             hint="run llmlab index again")

    @contextlib.contextmanager
    def checked(self, what: str) -> Iterator[None]:
        """Hold the lock for a read or write; SQLite's errors (a damaged file) become an InputError."""
        with self.lock:
            try:
                yield
            except self.sqlite.DatabaseError as e:
                raise InputError(f"{self.dir / DB_FILE}: {what} failed ({e})",
                                 hint="the file is damaged: delete the folder and build the index again") from e

    def initialise(self, settings: Mapping[str, Any], rebuild: bool = False) -> bool:
        """Create the tables on first use. An index made with other settings (model, chunking) is refused,
        or with `rebuild` emptied and started afresh (True), so chunks made two ways never mix."""
        settings = {k: str(v) for k, v in settings.items()}
        with self.checked("creating the tables"):
            if self.meta:
                changed = {k: (self.meta.get(k), v) for k, v in settings.items() if self.meta.get(k) != v}
                if not changed:
                    return False
                if not rebuild:
                    detail = ", ".join(f"{k}: {old} -> {new}" for k, (old, new) in changed.items())
                    raise ConfigError(f"{self.dir}: the index was built with other settings ({detail})",
                                      hint="use the same settings, --rebuild to embed everything again, "
                                           "or a new --out folder")
            # The generation runs on through a rebuild, so an old BM25 folder never looks current.
            emptied = bool(self.meta)
            rows = {"format": FORMAT, "generation": str(self.generation + 1 if self.meta else 0), **settings}
            with self.db:
                self.db.execute("DROP TABLE IF EXISTS vectors")
                self.db.execute("DROP TABLE IF EXISTS chunks")
                self.db.execute("DELETE FROM meta")
                self.db.execute("""CREATE TABLE chunks (
                    id INTEGER PRIMARY KEY, chunk_id TEXT NOT NULL UNIQUE, url TEXT NOT NULL,
                    title TEXT NOT NULL, text TEXT NOT NULL, position INTEGER NOT NULL)""")
                self.db.execute(f"CREATE VIRTUAL TABLE vectors USING vec0(embedding float[{settings['dim']}])")
                self.db.executemany("INSERT INTO meta VALUES (?, ?)", rows.items())
            self.meta = rows
        return emptied

    @property
    def generation(self) -> int:
        return int(self.meta.get("generation", 0))

    def bump_generation(self) -> None:
        with self.checked("updating the metadata"), self.db:
            self.meta["generation"] = str(self.generation + 1)
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('generation', ?)", (self.meta["generation"],))

    def chunk_ids(self) -> set[str]:
        with self.checked("reading chunk ids"):
            return {row[0] for row in self.db.execute("SELECT chunk_id FROM chunks")}

    def count(self) -> int:
        with self.checked("counting chunks"):
            return self.db.execute("SELECT count(*) FROM chunks").fetchone()[0]

    def add(self, chunks: list, vectors: np.ndarray) -> None:
        """Insert chunks and their vectors in one transaction."""
        with self.checked("adding chunks"), self.db:
            for chunk, vector in zip(chunks, vectors):
                cur = self.db.execute("INSERT INTO chunks (chunk_id, url, title, text, position) VALUES (?, ?, ?, ?, ?)",
                                      (chunk.chunk_id, chunk.url, chunk.title, chunk.text, chunk.position))
                self.db.execute("INSERT INTO vectors (rowid, embedding) VALUES (?, ?)",
                                (cur.lastrowid, np.ascontiguousarray(vector, dtype=np.float32).tobytes()))

    def remove(self, chunk_ids: Iterable[str]) -> int:
        """Delete chunks (and their vectors) by chunk id; return how many went."""
        removed = 0
        with self.checked("removing chunks"), self.db:
            for cid in chunk_ids:
                row = self.db.execute("SELECT id FROM chunks WHERE chunk_id = ?", (cid,)).fetchone()
                if row:
                    self.db.execute("DELETE FROM vectors WHERE rowid = ?", row)
                    self.db.execute("DELETE FROM chunks WHERE id = ?", row)
                    removed += 1
        return removed

    def texts(self) -> Iterator[tuple[int, str]]:
        """(row id, text) of every chunk in row-id order: the order BM25 numbers its documents in."""
        with self.checked("reading chunks"):
            rows = self.db.execute("SELECT id, title, text FROM chunks ORDER BY id").fetchall()
        # The title is searchable too: a query often names the page ("the json module").
        return ((rowid, f"{title}\n{text}") for rowid, title, text in rows)

    def rows(self, rowids: list[int]) -> dict[int, tuple[str, str, str, str]]:
        """rowid -> (chunk_id, url, title, text) for the given rows."""
        if not rowids:
            return {}
        marks = ",".join("?" * len(rowids))
        with self.checked("reading chunks"):
            found = self.db.execute(f"SELECT id, chunk_id, url, title, text FROM chunks WHERE id IN ({marks})", rowids)
            return {row[0]: tuple(row[1:]) for row in found}

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(row ids, float32 matrix with one unit vector per row) of every chunk."""
        with self.checked("reading vectors"):
            rows = self.db.execute("SELECT rowid, embedding FROM vectors ORDER BY rowid").fetchall()
        dim = int(self.meta["dim"])
        matrix = np.frombuffer(b"".join(blob for _, blob in rows), dtype=np.float32).reshape(len(rows), dim)
        return np.array([rowid for rowid, _ in rows], dtype=np.int64), matrix

    def close(self) -> None:
        self.db.close()


def replace_directory(build: Callable[[Path], None], target: Path) -> None:
    """Let `build(tmp_dir)` fill a temporary folder, then swap it in for `target` (old one removed)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build(tmp)
        fsync_tree(tmp)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(tmp, target)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
