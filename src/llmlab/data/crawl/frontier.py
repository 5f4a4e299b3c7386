"""The crawl's memory in SQLite: every URL met, what became of it, and the queue still to visit.

One table holds the visited set and the frontier together: a URL is a row the first time it is found
(state `queued`), and its state says what happened (`stored`, `failed`, `blocked`, `refused`,
`skipped`, `duplicate`). Every change is committed at once (WAL journal), so a crawl killed at any
moment finds on restart everything it had discovered. Rows that were `inflight` go back to the queue,
and so do failures that may pass and robots.txt blocks (robots.txt is read again each run);
rows marked `stored` point at their records in the WARC file (byte offsets), which is how the WARC
and this table are made to agree again after a kill (see `crawler.reconcile_warc`).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from llmlab.errors import InputError

SCHEMA = """
CREATE TABLE IF NOT EXISTS urls (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- discovery order: breadth-first within a depth
    key TEXT NOT NULL UNIQUE,               -- urls.url_key(url): the visited-set identity
    url TEXT NOT NULL,                      -- normalised URL, as fetched
    host TEXT NOT NULL,
    depth INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued',
    status INTEGER,                         -- final HTTP status, when there was one
    final_url TEXT,                         -- after redirects
    content_type TEXT,
    bytes INTEGER,                          -- body bytes kept
    truncated INTEGER,
    reason TEXT,                            -- why a URL was not stored
    fetched_at TEXT,                        -- ISO 8601 UTC, also the WARC-Date
    warc_offset INTEGER,                    -- where its records start in the WARC file
    warc_end INTEGER                        -- and end
);
CREATE INDEX IF NOT EXISTS urls_queue ON urls (state, depth, seq);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

STATES = ("queued", "inflight", "stored", "failed", "blocked", "refused", "skipped", "duplicate")


@dataclass(frozen=True)
class Entry:
    """A URL in the frontier: found on a page (to queue) or taken from the queue (to fetch)."""

    key: str
    url: str
    host: str
    depth: int


class Frontier:
    """Visited set + to-visit queue in one SQLite file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            # NORMAL: a commit survives the process being killed (not a power cut), without an fsync each.
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise InputError(
                f"{self.path} is not a usable crawl frontier: {e}",
                hint="start over with --fresh (this deletes the frontier and the WARC file)",
            ) from None
        with self.db:
            self.db.execute("BEGIN")
            # Pages in progress when the last run stopped were not stored: fetch them again.
            self.db.execute("UPDATE urls SET state = 'queued' WHERE state = 'inflight'")
            # Failures that may pass (network errors, 5xx, 429) are tried again, and robots.txt is read
            # afresh each run, so blocked URLs are asked again; 4xx, redirect loops and refusals stay.
            self.db.execute(
                "UPDATE urls SET state = 'queued', reason = NULL, status = NULL WHERE state = 'blocked'"
                " OR (state = 'failed' AND (status IS NULL OR status >= 500 OR status = 429))"
            )

    def close(self) -> None:
        self.db.close()

    # -- meta ---------------------------------------------------------------------------------------
    def get_meta(self, name: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_meta(self, name: str, value: Any) -> None:
        self.db.execute(
            "INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (name, json.dumps(value)),
        )

    # -- queue --------------------------------------------------------------------------------------
    def add(self, found: Iterable[Entry]) -> int:
        """Queue URLs not seen before; returns how many were new."""
        with self.db:
            self.db.execute("BEGIN")
            return self._add(found)

    def _add(self, found: Iterable[Entry]) -> int:
        before = self.db.total_changes
        self.db.executemany(
            "INSERT OR IGNORE INTO urls (key, url, host, depth) VALUES (?, ?, ?, ?)",
            [(f.key, f.url, f.host, f.depth) for f in found],
        )
        return self.db.total_changes - before

    def claim(self, busy_hosts: set[str], max_depth: int | None) -> Entry | None:
        """Take the shallowest, earliest queued URL whose host is not busy, marking it in flight."""
        busy = sorted(busy_hosts)
        sql = "SELECT key, url, host, depth FROM urls WHERE state = 'queued'"
        params: list[Any] = []
        if busy:
            sql += f" AND host NOT IN ({','.join('?' * len(busy))})"
            params += busy
        if max_depth is not None:
            sql += " AND depth <= ?"
            params.append(max_depth)
        row = self.db.execute(sql + " ORDER BY depth, seq LIMIT 1", params).fetchone()
        if row is None:
            return None
        self.db.execute("UPDATE urls SET state = 'inflight' WHERE key = ?", (row[0],))
        return Entry(*row)

    def state_of(self, key: str) -> str | None:
        row = self.db.execute("SELECT state FROM urls WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def finish(self, key: str, state: str, reason: str, status: int | None = None, **fields: Any) -> None:
        """Record a URL that ended without a stored page (reason says why)."""
        self._update(key, state=state, reason=reason, status=status, **fields)

    def store(self, entry: Entry, found: Iterable[Entry], final_key: str, **fields: Any) -> None:
        """Mark a page stored (with its WARC offsets) and queue its links, in one transaction."""
        with self.db:
            self.db.execute("BEGIN")
            self._update(entry.key, state="stored", **fields)
            if final_key != entry.key:
                # Reached by redirect: the final URL is the same page and must not be fetched again.
                self.db.execute(
                    "INSERT INTO urls (key, url, host, depth, state, reason) VALUES (?, ?, ?, ?, 'duplicate', ?)"
                    " ON CONFLICT (key) DO UPDATE SET state = 'duplicate', reason = excluded.reason"
                    " WHERE state = 'queued'",
                    (final_key, fields["final_url"], entry.host, entry.depth, f"stored as {entry.url}"),
                )
            self._add(found)

    def _update(self, key: str, **fields: Any) -> None:
        columns = ", ".join(f"{name} = ?" for name in fields)
        self.db.execute(f"UPDATE urls SET {columns} WHERE key = ?", [*fields.values(), key])

    # -- counts and the WARC link -------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT state, COUNT(*) FROM urls GROUP BY state").fetchall())

    def stored_count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM urls WHERE state = 'stored'").fetchone()[0]

    def warc_committed_end(self) -> int:
        """Where the last WARC record this table knows about ends (0: none, not even the warcinfo)."""
        row = self.db.execute("SELECT MAX(warc_end) FROM urls WHERE state = 'stored'").fetchone()
        return max(row[0] or 0, self.get_meta("warcinfo_end", 0))

    def unstore_beyond(self, size: int) -> int:
        """Queue again pages whose records lie past `size` bytes (a WARC cut short); returns how many."""
        with self.db:
            self.db.execute("BEGIN")
            cur = self.db.execute(
                "UPDATE urls SET state = 'queued', warc_offset = NULL, warc_end = NULL"
                " WHERE state = 'stored' AND warc_end > ?",
                (size,),
            )
            if self.get_meta("warcinfo_end", 0) > size:
                self.db.execute("DELETE FROM meta WHERE name IN ('warcinfo_end', 'warcinfo_id')")
            return cur.rowcount

    def rows(self, sql: str, params: Iterable[Any] = ()) -> list[tuple]:
        """Read-only queries for the crawl report."""
        return self.db.execute(sql, list(params)).fetchall()
