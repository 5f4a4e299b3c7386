"""Chat answers grounded in a retrieval index: the `rag` request field and the `MODEL+rag:INDEX` model ids.

Before the prompt is rendered, the last user message is searched in the index; the best passages go in
front of it, numbered, within a token budget (`llmlab.retrieve.rag_messages`), so the model can cite
them as [n]. The response carries the passages given (`llmlab_sources`: title, URL, score, ranks, text)
and, per choice, the numbers the answer cites (`llmlab_cited`), which the playground turns into links.

    {"model": "smollm2-135m+rag:docs", "messages": [...]}
    {"model": "smollm2-135m", "messages": [...], "rag": {"index": "docs", "k": 3, "max_tokens": 512}}
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from llmlab.errors import LlmlabError
from llmlab.retrieve import Passage, cited_passages, rag_messages
from llmlab.serve.api_errors import APIError
from llmlab.serve.registry import LoadedModel, ModelRegistry

MIN_ANSWER_ROOM = 64  # tokens the passages always leave free for the answer when the request names no max_tokens


class RagOptions(BaseModel):
    """The `rag` request field (an llmlab extension): which index, how many passages, how many tokens they may add."""

    model_config = ConfigDict(extra="forbid")
    index: str
    k: int = Field(3, ge=1, le=20)
    max_tokens: int = Field(512, ge=16)


def options_for(model_id: str, rag: RagOptions | None, registry: ModelRegistry) -> RagOptions | None:
    """The request's retrieval settings, from its `rag` field or its `+rag:INDEX` model id; 400/404 when unusable."""
    _, from_id = registry.resolve(model_id)
    if rag is not None and from_id is not None and rag.index != from_id:
        raise APIError(400, f"the model id names index '{from_id}' but the rag field names '{rag.index}'", param="rag")
    options = rag or (RagOptions(index=from_id) if from_id is not None else None)
    if options is not None and options.index not in registry.indexes:
        known = ", ".join(registry.indexes) or "none (start the server with --index NAME=DIR)"
        raise APIError(404, f"there is no retrieval index '{options.index}'. Indexes: {known}", param="rag",
                       code="index_not_found")
    return options


async def retrieve(registry: ModelRegistry, loaded: LoadedModel, messages: list[dict[str, str]],
                   options: RagOptions, answer_tokens: int | None) -> tuple[list[dict[str, str]], list[Passage]]:
    """`messages` with passages for the last user turn put in, and the passages used, numbered from 1.

    The passages add at most `options.max_tokens`, and never so many that the answer's room
    (`answer_tokens`, else MIN_ANSWER_ROOM) would leave the context window.
    """
    question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    if not question.strip():
        raise APIError(400, "retrieval needs a user message to search for", param="messages")
    tokenizer = loaded.tokenizer

    def count(text: str) -> int:
        return len(tokenizer.encode_ordinary(text))

    def work() -> tuple[list[dict[str, str]], list[Passage]]:
        from llmlab.tokenizer.chat import render_chat

        passages = registry.indexes[options.index].search(question, k=options.k)
        prompt = len(render_chat(messages, tokenizer, add_generation_prompt=True).ids)
        room = loaded.context_length - prompt - (answer_tokens or MIN_ANSWER_ROOM)
        return rag_messages(messages, passages, count, min(options.max_tokens, room))

    try:
        return await asyncio.to_thread(work)
    except LlmlabError as e:
        raise APIError(400, e.message, param="rag") from e


def source_cards(passages: list[Passage]) -> list[dict[str, Any]]:
    """The `llmlab_sources` of a response: each passage given to the model, by its number."""
    return [{"n": n, "title": p.title, "url": p.url, "score": round(p.score, 6), "bm25_rank": p.bm25_rank,
             "dense_rank": p.dense_rank, "text": p.text} for n, p in enumerate(passages, start=1)]


def cited(answer: str, passages: list[Passage]) -> list[int]:
    """The passage numbers an answer cites as [n], in order of first citation."""
    return [n for n, _ in cited_passages(answer, passages)]
