"""Conversation history in SQLite: the playground saves each chat so a learner can come back to it.

Two tables: `conversations` (title, mode, model, sampling settings) and `messages` (role, content and
per-message metadata such as the model, timings and token probabilities). A save replaces a
conversation's messages in one transaction, so a crash leaves the previous version.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from llmlab.serve.api_errors import APIError

SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    mode TEXT NOT NULL DEFAULT 'chat',
    model TEXT,
    settings TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    meta TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (conversation_id, position)
);
"""


class HistoryStore:
    """Conversations and their messages; safe to share between threads (one connection, one lock)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock, self._db:
            self._db.execute("PRAGMA foreign_keys = ON")
            self._db.executescript(SCHEMA)

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT c.id, c.title, c.mode, c.model, c.created, c.updated, COUNT(m.position) AS messages "
                "FROM conversations c LEFT JOIN messages m ON m.conversation_id = c.id "
                "GROUP BY c.id ORDER BY c.updated DESC"
            ).fetchall()
        return [dict(r) for r in rows]

    def get(self, conversation_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
            if row is None:
                return None
            messages = self._db.execute(
                "SELECT role, content, meta FROM messages WHERE conversation_id = ? ORDER BY position",
                (conversation_id,),
            ).fetchall()
        conv = dict(row)
        conv["settings"] = json.loads(conv["settings"])
        conv["messages"] = [{"role": m["role"], "content": m["content"], "meta": json.loads(m["meta"])} for m in messages]
        return conv

    def save(self, conversation_id: str | None, title: str | None, mode: str, model: str | None,
             settings: dict[str, Any], messages: list[dict[str, Any]]) -> dict[str, Any]:
        """Create (id None) or replace a conversation with these messages; returns it."""
        now = time.time()
        with self._lock, self._db:
            if conversation_id is None:
                conversation_id = uuid.uuid4().hex
                first_user = next((m["content"] for m in messages if m.get("role") == "user"), "")
                title = title or _title_from(first_user) or "New conversation"
                self._db.execute(
                    "INSERT INTO conversations (id, title, mode, model, settings, created, updated) VALUES (?,?,?,?,?,?,?)",
                    (conversation_id, title, mode, model, json.dumps(settings), now, now),
                )
            else:
                found = self._db.execute(
                    "UPDATE conversations SET mode = ?, model = ?, settings = ?, updated = ?, title = COALESCE(?, title) "
                    "WHERE id = ?", (mode, model, json.dumps(settings), now, title, conversation_id),
                ).rowcount
                if not found:
                    raise KeyError(conversation_id)
                self._db.execute("DELETE FROM messages WHERE conversation_id = ?", (conversation_id,))
            self._db.executemany(
                "INSERT INTO messages (conversation_id, position, role, content, meta) VALUES (?,?,?,?,?)",
                [(conversation_id, i, m["role"], m["content"], json.dumps(m.get("meta") or {}))
                 for i, m in enumerate(messages)],
            )
        return self.get(conversation_id)

    def rename(self, conversation_id: str, title: str) -> bool:
        with self._lock, self._db:
            return self._db.execute("UPDATE conversations SET title = ?, updated = ? WHERE id = ?",
                                    (title, time.time(), conversation_id)).rowcount > 0

    def delete(self, conversation_id: str) -> bool:
        with self._lock, self._db:
            return self._db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,)).rowcount > 0

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _title_from(text: str, limit: int = 48) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


class MessageIn(BaseModel):
    role: str
    content: str
    meta: dict[str, Any] | None = None


class ConversationIn(BaseModel):
    title: str | None = Field(None, max_length=200)
    mode: str = "chat"
    model: str | None = None
    settings: dict[str, Any] = Field(default_factory=dict)
    messages: list[MessageIn] = Field(default_factory=list)


class RenameIn(BaseModel):
    title: str = Field(min_length=1, max_length=200)


router = APIRouter(prefix="/api/conversations")


def _store(request: Request) -> HistoryStore:
    return request.app.state.history


def _missing(conversation_id: str) -> APIError:
    return APIError(404, f"no conversation {conversation_id}", param="id", code="conversation_not_found")


@router.get("")
def list_conversations(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": _store(request).list()}


@router.post("")
def create_conversation(body: ConversationIn, request: Request) -> dict[str, Any]:
    return _store(request).save(None, body.title, body.mode, body.model, body.settings,
                                [m.model_dump() for m in body.messages])


@router.get("/export")
def export_all(request: Request) -> JSONResponse:
    store = _store(request)
    data = {"format": "llmlab-conversations-v1", "conversations": [store.get(c["id"]) for c in store.list()]}
    return JSONResponse(data, headers={"Content-Disposition": 'attachment; filename="llmlab-conversations.json"'})


@router.get("/{conversation_id}")
def get_conversation(conversation_id: str, request: Request) -> dict[str, Any]:
    conv = _store(request).get(conversation_id)
    if conv is None:
        raise _missing(conversation_id)
    return conv


@router.put("/{conversation_id}")
def save_conversation(conversation_id: str, body: ConversationIn, request: Request) -> dict[str, Any]:
    try:
        return _store(request).save(conversation_id, body.title, body.mode, body.model, body.settings,
                                    [m.model_dump() for m in body.messages])
    except KeyError:
        raise _missing(conversation_id) from None


@router.patch("/{conversation_id}")
def rename_conversation(conversation_id: str, body: RenameIn, request: Request) -> dict[str, Any]:
    if not _store(request).rename(conversation_id, body.title):
        raise _missing(conversation_id)
    return _store(request).get(conversation_id)


@router.delete("/{conversation_id}")
def delete_conversation(conversation_id: str, request: Request) -> dict[str, Any]:
    if not _store(request).delete(conversation_id):
        raise _missing(conversation_id)
    return {"id": conversation_id, "deleted": True}


@router.get("/{conversation_id}/export")
def export_conversation(conversation_id: str, request: Request) -> JSONResponse:
    conv = _store(request).get(conversation_id)
    if conv is None:
        raise _missing(conversation_id)
    data = {"format": "llmlab-conversations-v1", "conversations": [conv]}
    return JSONResponse(data, headers={"Content-Disposition": f'attachment; filename="conversation-{conversation_id[:8]}.json"'})
