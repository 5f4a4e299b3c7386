"""The playground's own routes (beyond OpenAI's): server status, fitting a chat to the context window and the
"look inside" views."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from llmlab.serve.api_errors import APIError
from llmlab.serve.dispatch import Generator
from llmlab.serve.lookinside import attention_maps, next_token_distribution
from llmlab.serve.openai_api import ChatMessage, SamplingFields

router = APIRouter(prefix="/api")


class InspectRequest(BaseModel):
    model: str
    prompt: str | None = None
    messages: list[ChatMessage] | None = None


class NextTokenRequest(InspectRequest, SamplingFields):
    """The completion requests' sampling fields, of which the filters and penalties shape one step."""

    k: int = Field(20, ge=1, le=100)


class FitRequest(BaseModel):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)


class AttentionRequest(InspectRequest):
    layer: int = Field(0, ge=0)


def _generator(request: Request) -> Generator:
    return request.app.state.generator


async def _prompt(gen: Generator, req: InspectRequest, limit: int | None = None):
    loaded = await gen.load(req.model)
    if (req.prompt is None) == (req.messages is None):
        raise APIError(400, "give either prompt or messages", param="prompt")
    if req.messages is not None:
        ids = gen.chat_prompt(loaded, [m.flat() for m in req.messages])
    else:
        ids = gen.text_prompt(loaded, req.prompt)
    if not ids:
        raise APIError(400, "the prompt is empty", param="prompt")
    cap = min(limit or gen.limits.max_prompt_tokens, loaded.context_length)
    if len(ids) > cap:
        raise APIError(400, f"the prompt has {len(ids)} tokens; this view shows at most {cap}", param="prompt",
                       code="context_length_exceeded")
    return loaded, ids


@router.get("/status")
async def status(request: Request) -> dict[str, Any]:
    gen = _generator(request)
    return {"worker": gen.worker.stats(), "limits": vars(gen.limits), "models": gen.registry.cards(),
            "auth": request.app.state.api_key is not None}


@router.get("/tokenizers")
async def tokenizers(request: Request) -> dict[str, Any]:
    """Every tokenizer the tokenizer view can show: each model's, then reference ones."""
    registry = _generator(request).registry
    data = [{"id": m, "kind": "model"} for m in registry.entries]  # a +rag: id has its model's tokenizer
    data += [{"id": t, "kind": "reference"} for t in registry.reference_tokenizers() if t not in registry]
    return {"object": "list", "data": data}


@router.post("/fit_chat")
async def fit_chat(req: FitRequest, request: Request) -> dict[str, Any]:
    """How many of the oldest messages a chat must leave out so that its prompt, counted by the model's own
    tokenizer and chat template, leaves room for the answer in the context window.

    System messages at the start always stay; the rest is cut at a user turn (a question never loses its
    answer's context halfway), keeping at least the last user turn. `dropped` counts messages after the
    system ones; `fits` is false when even the last turn alone is too long.
    """
    gen = _generator(request)
    loaded = await gen.load(req.model)
    messages = [m.flat() for m in req.messages]
    head = 0
    while head < len(messages) and messages[head]["role"] == "system":
        head += 1
    system, turns = messages[:head], messages[head:]
    if not turns:
        raise APIError(400, "the chat has no message after its system prompt", param="messages")
    ctx = loaded.context_length
    room = min(req.max_tokens or gen.limits.default_output_tokens, ctx // 2)  # for the answer
    budget = min(gen.limits.max_prompt_tokens, ctx - room)
    starts = list(dict.fromkeys([0, *(i for i, m in enumerate(turns) if m["role"] == "user"), len(turns) - 1]))

    def tokens_from(k: int) -> int:  # the prompt's length when the chat starts at turns[starts[k]]
        return len(gen.chat_prompt(loaded, system + turns[starts[k]:]))

    def fit() -> dict[str, Any]:
        # Dropping more turns never lengthens the prompt, so bisect for the first start that fits.
        low, high = 0, len(starts) - 1
        if tokens_from(high) > budget:
            low = high
        while low < high:
            mid = (low + high) // 2
            low, high = (low, mid) if tokens_from(mid) <= budget else (mid + 1, high)
        count = tokens_from(low)
        return {"dropped": starts[low], "prompt_tokens": count, "budget": budget, "context_length": ctx,
                "fits": count <= budget}

    return await asyncio.to_thread(fit)  # tokenizing a long chat must not stall the event loop


@router.post("/next_token")
async def next_token(req: NextTokenRequest, request: Request) -> dict[str, Any]:
    """The next-token distribution for a prompt, raw and as the sampling settings reshape it."""
    gen = _generator(request)
    loaded, ids = await _prompt(gen, req)
    params = gen.params(loaded, len(ids), req.settings() | {"max_new_tokens": 1})
    return await gen.compute(lambda: next_token_distribution(loaded, ids, params, req.k))


@router.post("/attention")
async def attention(req: AttentionRequest, request: Request) -> dict[str, Any]:
    """One layer's attention weights, every head, for a short prompt."""
    gen = _generator(request)
    loaded, ids = await _prompt(gen, req, limit=gen.limits.max_inspect_tokens)
    if req.layer >= loaded.config.n_layers:
        raise APIError(400, f"layer must be below {loaded.config.n_layers}", param="layer")
    return await gen.compute(lambda: attention_maps(loaded, ids, req.layer))
