"""Conversation history: saved in SQLite, renamed, exported as JSON, deleted; survives a restart."""

import httpx
import pytest
import torch

from llmlab.model import GPT, preset
from llmlab.serve import BackgroundServer, ModelRegistry, create_app
from llmlab.serve.history import HistoryStore
from llmlab.serve.tiny import tiny_tokenizer

pytestmark = pytest.mark.network_local


@pytest.fixture(scope="module")
def registry():
    tok = tiny_tokenizer()
    torch.manual_seed(0)
    registry = ModelRegistry(imported=False)
    registry.add("tiny", GPT(preset("tiny", vocab_size=tok.vocab_size)), tok)
    return registry


CHAT = {"mode": "chat", "model": "tiny", "settings": {"temperature": 0.7, "system": "Be brief."},
        "messages": [{"role": "user", "content": "What is attention in a transformer, in short?"},
                     {"role": "assistant", "content": "Weights over earlier tokens.", "meta": {"timings": {"ttft_ms": 3.2}}}]}


def test_save_rename_export_delete(registry, tmp_path):
    db = tmp_path / "history.sqlite"
    with BackgroundServer(create_app(registry, history_path=db)) as srv, httpx.Client(base_url=srv.url) as http:
        conv = http.post("/api/conversations", json=CHAT).json()
        assert conv["title"] == "What is attention in a transformer, in short?"
        assert conv["messages"][1]["meta"] == {"timings": {"ttft_ms": 3.2}}
        listed = http.get("/api/conversations").json()["data"]
        assert [(c["id"], c["messages"]) for c in listed] == [(conv["id"], 2)]

        renamed = http.patch(f"/api/conversations/{conv['id']}", json={"title": "Attention"}).json()
        assert renamed["title"] == "Attention"
        more = {**CHAT, "messages": CHAT["messages"] + [{"role": "user", "content": "And MLPs?"}]}
        saved = http.put(f"/api/conversations/{conv['id']}", json=more).json()
        assert saved["title"] == "Attention" and len(saved["messages"]) == 3

        export = http.get(f"/api/conversations/{conv['id']}/export")
        assert "attachment" in export.headers["content-disposition"]
        data = export.json()
        assert data["format"] == "llmlab-conversations-v1"
        assert data["conversations"][0]["messages"][2]["content"] == "And MLPs?"
        assert data["conversations"][0]["settings"]["system"] == "Be brief."

    # A new server on the same file sees the same history.
    with BackgroundServer(create_app(registry, history_path=db)) as srv, httpx.Client(base_url=srv.url) as http:
        assert http.get(f"/api/conversations/{conv['id']}").json()["title"] == "Attention"
        assert http.delete(f"/api/conversations/{conv['id']}").status_code == 200
        missing = http.get(f"/api/conversations/{conv['id']}")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "conversation_not_found"
        assert http.patch(f"/api/conversations/{conv['id']}", json={"title": "x"}).status_code == 404
        assert http.get("/api/conversations/export").json()["conversations"] == []


def test_deleting_a_conversation_deletes_its_messages(tmp_path):
    store = HistoryStore(tmp_path / "h.sqlite")
    conv = store.save(None, None, "chat", "tiny", {}, CHAT["messages"])
    assert store.delete(conv["id"]) and not store.delete(conv["id"])
    left = store._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
    assert left == 0
    with pytest.raises(KeyError):
        store.save("missing", None, "chat", None, {}, [])
