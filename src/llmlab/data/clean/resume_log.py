"""Resuming a cleaning run: what the per-document steps have already done, kept on disk as it happens.

Extraction dominates a cleaning run (hours on a real crawl), so `clean` records the output of the
first run of per-document steps as it goes: every `every_s` seconds the batches finished since the
last save are appended as a gzipped JSONL part, then `state.json` (atomically replaced) names the
parts and says how many input documents they cover. A killed run loses at most the unsaved batches;
the next run with the same inputs and recipe skips the covered documents without re-extracting them
and continues. Corpus-wide steps (deduplication) and the ones after them always rerun: they are fast.
Any change to the inputs (path, size, modification time), the recipe or the limit starts afresh.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

from llmlab.data.clean.documents import Document, Removed
from llmlab.data.clean.stats import StepStats, doc_chars
from llmlab.files import atomic_write, write_json, write_text

FORMAT = "llmlab-clean-checkpoint-v1"
MAX_PENDING_CHARS = 4 << 20


def fingerprint(inputs: list[Path | str], recipe: dict, limit: int | None) -> str:
    """What the saved work depends on: each input file's path, size and modification time (a URL: its
    text; Common Crawl's files never change), the recipe."""
    files = [
        (str(p), None, None) if "://" in str(p) else (str(Path(p).resolve()), Path(p).stat().st_size, Path(p).stat().st_mtime_ns)
        for p in inputs
    ]
    blob = json.dumps({"files": files, "recipe": recipe, "limit": limit}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _doc_row(doc: Document) -> dict:
    return {"url": doc.url, "text": doc.text, "html": doc.html, "metadata": doc.metadata}


def _doc(row: dict) -> Document:
    return Document(row["url"], text=row["text"], html=row["html"], metadata=row["metadata"])


def _stats_rows(stats: list[StepStats]) -> list[dict]:
    return [{**asdict(s), "reasons": dict(s.reasons)} for s in stats]


def _stats(rows: list[dict]) -> list[StepStats]:
    return [StepStats(**{**s, "reasons": Counter(s["reasons"])}) for s in rows]


def _write_part(path: Path, outputs: list[tuple[list[Document], list[Removed]]]) -> None:
    """Kept documents and removed ones (with step and reason) as gzipped JSONL, written atomically."""
    with atomic_write(path, "wb") as raw, gzip.open(raw, "wt", encoding="utf-8") as f:
        for kept, removed in outputs:
            for doc in kept:
                f.write(json.dumps(_doc_row(doc), ensure_ascii=False, default=str) + "\n")
            for r in removed:
                row = {"step": r.step, "reason": r.reason, "document": _doc_row(r.document)}
                f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")


def _read_part(path: Path) -> Iterator[Document | Removed]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            yield Removed(_doc(row["document"]), row["step"], row["reason"]) if "step" in row else _doc(row)


class ResumeLog:
    """The saved output of the first per-document segment in `folder`, for one fingerprint."""

    def __init__(self, folder: Path, key: str, every_s: float = 30.0) -> None:
        self.folder, self.key, self.every_s = folder, key, every_s
        self.consumed = 0
        self.parts: list[str] = []
        self.stats: list[StepStats] = []
        self._pending: list[tuple[list[Document], list[Removed], list[StepStats]]] = []
        self._pending_in = 0
        self._pending_chars = 0
        self._last_save = time.monotonic()

    def load(self) -> list[StepStats]:
        """Read the saved state: step counters and how many inputs it covers (`replay` gives its documents)."""
        state_path = self.folder / "state.json"
        try:
            state = json.loads(state_path.read_text())
        except (OSError, ValueError):
            state = None
        if not state or state.get("format") != FORMAT or state.get("key") != self.key:
            shutil.rmtree(self.folder, ignore_errors=True)  # another run's work, or none: start afresh
            return []
        self.consumed, self.parts = state["consumed"], list(state["parts"])
        self.stats = _stats(state["stats"])
        return self.stats

    def replay(self, batch_size: int) -> Iterator[tuple[list[Document], list[Removed]]]:
        """The saved kept and removed documents in their original order, a few at a time (read from disk)."""
        kept: list[Document] = []
        removed: list[Removed] = []
        for part in self.parts:
            for item in _read_part(self.folder / part):
                (removed if isinstance(item, Removed) else kept).append(item)
                if len(kept) + len(removed) >= batch_size:
                    yield kept, removed
                    kept, removed = [], []
        if kept or removed:
            yield kept, removed

    def add(self, kept: list[Document], removed: list[Removed], stats: list[StepStats]) -> None:
        """Record one finished batch; save to disk once `every_s` seconds have passed since the last save."""
        self._pending.append((kept, removed, stats))
        self._pending_in += stats[0].docs_in if stats else len(kept) + len(removed)
        self._pending_chars += sum(map(doc_chars, kept)) + sum(doc_chars(r.document) for r in removed)
        # Saved every `every_s` seconds, and sooner when the unsaved pages would take much memory.
        if time.monotonic() - self._last_save >= self.every_s or self._pending_chars >= MAX_PENDING_CHARS:
            self.save()

    def save(self) -> None:
        if not self._pending:
            return
        part = f"part-{len(self.parts):05d}.jsonl.gz"
        _write_part(self.folder / part, [(kept, removed) for kept, removed, _ in self._pending])
        for _, _, stats in self._pending:
            if not self.stats:
                self.stats = [StepStats(s.name, s.kind) for s in stats]
            for total, s in zip(self.stats, stats):
                total.add(s)
        self.parts.append(part)
        self.consumed += self._pending_in
        self._pending, self._pending_in, self._pending_chars = [], 0, 0
        self._last_save = time.monotonic()
        # The part is on disk before the state names it: a kill in between leaves an unused file.
        write_json(self.folder / "state.json", {
            "format": FORMAT, "key": self.key, "consumed": self.consumed, "parts": self.parts,
            "stats": _stats_rows(self.stats),
        })

    def remove(self) -> None:
        """The run finished and its outputs are written: the saved work is no longer needed."""
        shutil.rmtree(self.folder, ignore_errors=True)


class ShardLog:
    """The Ray executor's saved work: each finished shard's first-segment output, one part per shard
    (shards finish in any order), so a rerun with the same fingerprint reads them instead of running them."""

    def __init__(self, folder: Path, key: str) -> None:
        self.folder, self.key = folder, key

    def finished(self, plan: str) -> set[int]:
        """The shards saved by an earlier run with this key and shard `plan` (other work is removed)."""
        key = f"{self.key}\n{plan}"
        try:
            same = (self.folder / "key").read_text() == key
        except OSError:
            same = False
        if not same:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder.mkdir(parents=True)
            write_text(self.folder / "key", key)
            return set()
        return {int(p.name.split("-")[1].split(".")[0]) for p in self.folder.glob("shard-*.json")}

    def save(self, index: int, kept: list[Document], removed: list[Removed], stats: list[StepStats], info: dict) -> None:
        """Save shard `index`; `info` (JSON) rides along. The part is on disk before the file that names it done."""
        _write_part(self.folder / f"shard-{index:05d}.jsonl.gz", [(kept, removed)])
        write_json(self.folder / f"shard-{index:05d}.json", {"format": FORMAT, "stats": _stats_rows(stats), **info})

    def load(self, index: int) -> tuple[list[Document], list[Removed], list[StepStats], dict]:
        info = json.loads((self.folder / f"shard-{index:05d}.json").read_text())
        kept: list[Document] = []
        removed: list[Removed] = []
        for item in _read_part(self.folder / f"shard-{index:05d}.jsonl.gz"):
            (removed if isinstance(item, Removed) else kept).append(item)
        return kept, removed, _stats(info.pop("stats")), info

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
