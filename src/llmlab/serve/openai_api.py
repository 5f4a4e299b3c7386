"""OpenAI-compatible routes: /v1/models, /v1/chat/completions, /v1/completions, /tokenize, /detokenize.

Request and response fields follow OpenAI's API reference, so the `openai` SDK, LangChain and curl work
unchanged. llmlab adds the sampling fields `top_k`, `min_p` and `repetition_penalty` (as vLLM does) and
`ignore_eos`, and a `timings` object in each choice: queue wait, time to first token, total time and decode tokens/s.
`logit_bias` is applied. `response_format` {"type": "json_object"} or {"type": "json_schema", "json_schema":
{"name", "schema", "strict"}} is honoured by grammar-constrained decoding (`llmlab.infer.constrained`), streamed
or not: the text is JSON matching the schema by construction (strict or not, the schema is always enforced), unless
max_tokens cuts it first (finish_reason "length", as OpenAI). A schema the grammar compiler cannot take gets a 400.
`tools` and `tool_choice` work for models whose chat template has a tool format, with the calls decoded under
a grammar so they parse (`serve/openai_tools.py`; also llmlab's `llmlab_tools`, which the server runs itself).
Chat answers can come from a retrieval index: the `rag` field or a `MODEL+rag:INDEX` model id (`serve/rag.py`).
"""

from __future__ import annotations

import asyncio
import codecs
import json
import time
import uuid
from typing import Any, AsyncIterator, Literal, get_args, get_origin

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, create_model, field_validator
from pydantic_core import PydanticCustomError

from llmlab.errors import ConfigError
from llmlab.infer.constrained import ANY_OBJECT, GrammarConstraint, json_grammar
from llmlab.infer.sampling import Setting, logit_bias_problem, sampling_settings
from llmlab.infer.sequence import end_token_ids
from llmlab.serve.api_errors import APIError, error_body, unknown_model
from llmlab.serve.dispatch import ChoiceResult, Generator, until_disconnected
from llmlab.serve.lookinside import prompt_logprobs
from llmlab.serve.rag import RagOptions, cited, options_for, retrieve, source_cards
from llmlab.serve.openai_tools import (ToolPlan, answer_message, plan_tools, prompt_messages, run_builtin_tools,
                                       tool_chunks, trace_json)
from llmlab.serve.registry import LoadedModel
from llmlab.serve.worker import Job, events_of

router = APIRouter()

FINGERPRINT = "llmlab"


# ---------------------------------------------------------------- request schemas


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    def flat(self) -> dict[str, Any]:
        """The message with its content as one string; "developer" is the newer name for "system".
        An assistant's `tool_calls` and a tool result's `tool_call_id` are kept."""
        content = self.content
        if isinstance(content, list):
            for part in content:
                if part.type != "text" or part.text is None:
                    raise APIError(400, f"content parts of type '{part.type}' are not supported; llmlab models read text",
                                   param="messages.content")
            content = "".join(part.text for part in content)
        tool_fields = {k: v for k, v in (self.model_extra or {}).items() if k in ("tool_calls", "tool_call_id") and v}
        return {"role": "system" if self.role == "developer" else self.role, "content": content or "", **tool_fields}


class StreamOptions(BaseModel):
    include_usage: bool = False


SETTINGS = {s.api: s for s in sampling_settings() if s.exposed}  # the exposed settings, by request field name


def _request_field(s: Setting) -> tuple[Any, Any]:
    """A sampling setting as an optional request field; a list also takes one item alone, as OpenAI's `stop` does."""
    kind = s.kind | get_args(s.kind)[0] if get_origin(s.kind) is list else s.kind
    return kind | None, Field(None, description=s.help)


class SamplingFields(create_model("SamplingSettings", **{name: _request_field(s) for name, s in SETTINGS.items()})):
    """One request field per exposed SamplingParams field, under its API name, checked against its range.

    A field left out (None) takes the engine's default; `Generator.params` adds OpenAI's defaults.
    """

    @field_validator("top_k", mode="before")
    @classmethod
    def _top_k_off(cls, v: Any) -> Any:
        return None if v == -1 else v  # vLLM's spelling of "no top-k"; 0 and None mean the same

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        return v

    @field_validator(*SETTINGS)
    @classmethod
    def _in_range(cls, value: Any, info: ValidationInfo) -> Any:
        problem = SETTINGS[info.field_name].problem(value, api=True)
        if problem:
            raise PydanticCustomError("invalid_value", "{problem}", {"problem": problem})
        return value

    def settings(self) -> dict[str, Any]:
        """The sampling values this request sets, by SamplingParams field name (for `Generator.params`)."""
        return {s.name: getattr(self, name) for name, s in SETTINGS.items() if getattr(self, name) is not None}


class SamplingRequest(SamplingFields):
    """Fields shared by chat and text completions. Unknown fields are ignored, as many clients send extras."""

    model_config = ConfigDict(extra="ignore")
    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    logit_bias: dict[int, float] | None = Field(None, description="token id -> a bias in [-100, 100] added to its logit")

    @field_validator("logit_bias")
    @classmethod
    def _bias_range(cls, v: dict[int, float] | None) -> dict[int, float] | None:
        problem = logit_bias_problem(v or {})
        if problem:
            raise PydanticCustomError("invalid_value", "{problem}", {"problem": problem})
        return v

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def settings(self) -> dict[str, Any]:
        return super().settings() | ({"logit_bias": dict(self.logit_bias)} if self.logit_bias else {})

    def check_for(self, loaded: LoadedModel) -> None:
        """400 for a logit_bias token outside the model's vocabulary (it would fail mid-generation)."""
        vocab = loaded.tokenizer.vocab_size
        bad = [t for t in self.logit_bias or {} if not 0 <= t < vocab]
        if bad:
            raise APIError(400, f"logit_bias names token id {bad[0]}, outside the vocabulary (0..{vocab - 1})",
                           param="logit_bias")


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: dict[str, Any] | None = None  # see `output_schema`
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool = True  # false: at most one call per answer
    # Deprecated by OpenAI: refused (400) rather than silently ignored; see `refuse_unsupported`.
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    rag: RagOptions | None = None  # llmlab: answer from a retrieval index's passages
    llmlab_tools: list[str] | None = Field(None, description="built-in tools the server runs itself: calculator, python")

    def output_schema(self) -> dict[str, Any] | None:
        """The JSON schema `response_format` asks for: None for text, any object for json_object; 400 otherwise."""
        kind = (self.response_format or {}).get("type", "text")
        if kind == "text":
            return None
        if kind == "json_object":
            return ANY_OBJECT
        if kind != "json_schema":
            raise APIError(400, f"response_format type '{kind}' is not supported; use 'text', 'json_object' or "
                           "'json_schema'", param="response_format.type", code="unsupported_parameter")
        spec = self.response_format.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise APIError(400, "response_format of type 'json_schema' needs json_schema.schema, a JSON schema object",
                           param="response_format.json_schema", code="invalid_value")
        return spec["schema"]

    def refuse_unsupported(self) -> None:
        """A clear 400 for a request whose meaning llmlab cannot honour."""
        if self.functions or self.function_call not in (None, "none", "auto"):
            name = "functions" if self.functions else "function_call"
            raise APIError(400, f"the deprecated '{name}' is not supported; send 'tools' and 'tool_choice'",
                           param=name, code="unsupported_parameter")
        if self.llmlab_tools and (self.tools or self.stream or (self.n or 1) > 1):
            raise APIError(400, "llmlab_tools runs built-in tools for one non-streamed answer, without 'tools'",
                           param="llmlab_tools")
        if (self.tools or self.llmlab_tools) and (self.response_format or {}).get("type", "text") != "text":
            raise APIError(400, "response_format cannot be combined with tools: a tool call is not the requested JSON",
                           param="response_format", code="unsupported_parameter")

    @field_validator("max_tokens")
    @classmethod
    def _positive(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError("must be at least 1")
        return v


class CompletionRequest(SamplingRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=20)  # the legacy API's number of alternatives per token
    max_tokens: int | None = 16  # the legacy API's default

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and all(isinstance(x, int) for x in p):
            return [p]
        if not p:
            raise APIError(400, "the prompt is empty", param="prompt")
        return list(p)


class TokenizeRequest(BaseModel):
    model: str
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    # As in a chat request, so /tokenize counts the prompt the chat route would render.
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    rag: RagOptions | None = None
    max_tokens: int | None = Field(None, ge=1)  # the answer's room, which bounds the passages as in a chat request


class DetokenizeRequest(BaseModel):
    model: str
    tokens: list[int]


# ---------------------------------------------------------------- helpers


def _generator(request: Request) -> Generator:
    return request.app.state.generator


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def _top_items(top: Any) -> list[tuple[int, str, float]]:
    """An engine's top alternatives as (id, text, logprob) tuples."""
    return [tuple(t) if not hasattr(t, "token_id") else (t.token_id, t.text, t.logprob) for t in (top or [])]


def chat_logprob(tokenizer: Any, event: Any) -> dict[str, Any]:
    """OpenAI's chat logprobs entry for one generated token."""
    token = tokenizer.decode([event.token_id])
    return {
        "token": token, "logprob": event.logprob, "bytes": list(tokenizer.decode_bytes([event.token_id])),
        "top_logprobs": [{"token": text, "logprob": lp, "bytes": list(tokenizer.decode_bytes([tid]))}
                         for tid, text, lp in _top_items(event.top_logprobs)],
    }


def check_grammar(loaded: LoadedModel, grammar: Any, param: str) -> None:
    """400 for an output grammar (a JSON schema, or the one built from `tools`) the grammar compiler
    refuses, before any generation starts (compiling takes under a millisecond; only a model's first
    grammar also reads its vocabulary)."""
    try:
        GrammarConstraint(loaded.tokenizer, json_grammar(grammar) if isinstance(grammar, dict) else grammar,
                          end_token_ids(loaded.tokenizer))
    except ConfigError as e:
        raise APIError(400, e.message, param=param, code="invalid_schema") from e


def chat_prompt_ids(gen: Generator, loaded: LoadedModel, messages: list[dict[str, Any]], plan: ToolPlan | None) -> list[int]:
    """The prompt ids a chat request feeds the model: tools and tool messages rendered in the template's
    format, and for tool_choice "required" or a named function the start of the call. /tokenize uses it too."""
    prompt = gen.chat_prompt(loaded, prompt_messages(messages, plan))
    if plan and plan.prefix:
        prompt += loaded.tokenizer.encode_ordinary(plan.prefix)
    return prompt


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _guarded(stream: AsyncIterator[str], job: Job) -> AsyncIterator[str]:
    """Stream SSE lines; stop the generations when the client disconnects; end with [DONE] even after an error."""
    try:
        async for line in stream:
            yield line
    except APIError as e:
        yield sse(e.body())
    except Exception as e:  # a generation failed mid-stream: the status line is already sent
        yield sse(error_body(500, f"generation failed: {e}"))
    finally:
        job.cancel.set()  # a no-op for a finished job; stops generating when the client went away
    yield "data: [DONE]\n\n"


async def _wait(request: Request, generator: Generator, job: Job, n: int) -> list[ChoiceResult]:
    """Every choice of a non-streamed job; a client that hangs up first stops it without an ERROR traceback."""
    try:
        return await until_disconnected(request, generator.collect(job, n))
    except asyncio.CancelledError:
        job.cancel.set()
        if await request.is_disconnected():  # nobody reads this answer; it only ends the request quietly
            raise APIError(499, "the client closed the connection", code="client_closed_request") from None
        raise
    except BaseException:
        job.cancel.set()
        raise


# ---------------------------------------------------------------- routes


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": _generator(request).registry.cards()}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> dict[str, Any]:
    registry = _generator(request).registry
    if model_id not in registry:
        raise unknown_model(model_id, registry.ids())
    return registry.card(model_id)


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(req: ChatCompletionRequest, request: Request):
    req.refuse_unsupported()
    schema = req.output_schema()
    gen = _generator(request)
    loaded = await gen.load(req.model)
    req.check_for(loaded)
    if schema is not None:
        await asyncio.to_thread(check_grammar, loaded, schema, "response_format.json_schema.schema")
    messages, sources = [m.flat() for m in req.messages], []
    rag = options_for(req.model, req.rag, gen.registry)
    if rag is not None:
        messages, sources = await retrieve(gen.registry, loaded, messages, rag, req.max_completion_tokens or req.max_tokens)
    plan = plan_tools(req.tools, req.tool_choice, messages, loaded.tokenizer, req.model, req.parallel_tool_calls)
    if plan and plan.grammar:
        await asyncio.to_thread(check_grammar, loaded, plan.grammar, "tools")
    if req.llmlab_tools:
        return await _builtin_tools_answer(req, request, gen, loaded, messages)
    prompt = chat_prompt_ids(gen, loaded, messages, plan)
    top = req.top_logprobs or 0
    if top and not req.logprobs:
        raise APIError(400, "top_logprobs needs logprobs=true", param="top_logprobs")
    settings = req.settings() | {"logprobs": req.logprobs, "top_logprobs": top}
    if req.max_completion_tokens is not None:
        settings["max_new_tokens"] = req.max_completion_tokens
    if schema is not None:
        settings["json_schema"] = schema
    if plan and plan.grammar:
        settings["grammar"] = plan.grammar
    params = gen.params(loaded, len(prompt), settings)
    job = gen.start(loaded, prompt, params)
    cid, created = _new_id("chatcmpl"), int(time.time())
    head = {"id": cid, "created": created, "model": req.model, "system_fingerprint": FINGERPRINT}
    if req.stream:
        lines = _chat_chunks(head, loaded, job, params.n, len(prompt), req.logprobs, req.include_usage, plan,
                             sources if rag is not None else None)
        return StreamingResponse(_guarded(lines, job), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    results = await _wait(request, gen, job, params.n)
    choices = []
    for r in results:
        logprobs = {"content": [chat_logprob(loaded.tokenizer, e) for e in r.events], "refusal": None} if req.logprobs else None
        message, finish_reason = answer_message(r.text, r.finish_reason, plan)
        choices.append({"index": r.index, "message": message,
                        "logprobs": logprobs, "finish_reason": finish_reason, "timings": r.timings,
                        **({"llmlab_cited": cited(r.text, sources)} if rag is not None else {})})
    return {**head, "object": "chat.completion", "choices": choices,
            "usage": _usage(len(prompt), sum(len(r.token_ids) for r in results)),
            **({"llmlab_sources": source_cards(sources)} if rag is not None else {})}


async def _builtin_tools_answer(req: ChatCompletionRequest, request: Request, gen: Generator, loaded: LoadedModel,
                                messages: list[dict[str, Any]]) -> dict[str, Any]:
    """llmlab_tools: the server runs the built-in tools until the model answers; the trace rides along."""
    settings = req.settings()
    if req.max_completion_tokens is not None:
        settings["max_new_tokens"] = req.max_completion_tokens
    prompt_tokens = 0

    async def complete(plain: list[dict[str, str]], grammar: str | None) -> ChoiceResult:
        nonlocal prompt_tokens
        prompt = gen.chat_prompt(loaded, plain)
        prompt_tokens += len(prompt)
        params = gen.params(loaded, len(prompt), {**settings, "grammar": grammar})
        return (await _wait(request, gen, gen.start(loaded, prompt, params), 1))[0]

    session, last, completion_tokens = await run_builtin_tools(messages, req.llmlab_tools, complete)
    return {"id": _new_id("chatcmpl"), "created": int(time.time()), "model": req.model,
            "system_fingerprint": FINGERPRINT, "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": session.answer, "refusal": None},
                         "logprobs": None, "finish_reason": last.finish_reason, "timings": last.timings,
                         "llmlab_tool_trace": trace_json(session)}],
            "usage": _usage(prompt_tokens, completion_tokens)}


async def _chat_chunks(head: dict, loaded: LoadedModel, job: Job, n: int, prompt_tokens: int,
                       logprobs: bool, include_usage: bool, plan: Any = None,
                       sources: list | None = None) -> AsyncIterator[str]:
    """The SSE chunks of a chat answer. With `sources` (retrieval), the first chunk of each choice lists
    them as `llmlab_sources` and, outside tool calls, its last chunk the numbers its answer cites as `llmlab_cited`."""
    chunk = {**head, "object": "chat.completion.chunk"}
    texts = [""] * n

    def one(index: int, delta: dict, lp: Any = None, finish: str | None = None, top: dict | None = None,
            **extra: Any) -> str:
        choice = {"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish, **extra}
        return sse({**chunk, "choices": [choice], **(top or {})})

    def last(index: int, finish: str) -> str:
        extra = {"llmlab_cited": cited(texts[index], sources)} if sources is not None else {}
        return one(index, {}, None, finish, timings=job.timings(), **extra)

    for i in range(n):
        yield one(i, {"role": "assistant", "content": ""},
                  top={"llmlab_sources": source_cards(sources)} if sources is not None else None)
    if plan is not None and plan.parse:  # tool calls are read from the text: their own chunking
        completion_tokens = 0

        async def counted() -> AsyncIterator[Any]:
            nonlocal completion_tokens
            async for event in events_of(job):
                completion_tokens += 1
                yield event

        async for line in tool_chunks(counted(), n, plan, one, job.timings):
            yield line
        if include_usage:
            yield sse({**chunk, "choices": [], "usage": _usage(prompt_tokens, completion_tokens)})
        return
    completion_tokens = 0
    finished = set()
    async for event in events_of(job):
        completion_tokens += 1
        texts[event.index] += event.text
        lp = {"content": [chat_logprob(loaded.tokenizer, event)], "refusal": None} if logprobs else None
        yield one(event.index, {"content": event.text}, lp)
        if event.finish_reason is not None:
            finished.add(event.index)
            yield last(event.index, event.finish_reason)
    for i in range(n):
        if i not in finished:  # max_tokens=0 or a cancelled job: no event said why it ended
            yield last(i, "length")
    if include_usage:
        yield sse({**chunk, "choices": [], "usage": _usage(prompt_tokens, completion_tokens)})


@router.post("/v1/completions", response_model=None)
async def completions(req: CompletionRequest, request: Request):
    gen = _generator(request)
    if gen.registry.resolve(req.model)[1] is not None:
        raise APIError(400, "answers from a retrieval index (+rag:) are chat answers: use /v1/chat/completions",
                       param="model")
    loaded = await gen.load(req.model)
    req.check_for(loaded)
    prompts = [gen.text_prompt(loaded, p) for p in req.prompts()]
    if req.stream and (len(prompts) > 1 or req.echo):
        raise APIError(400, "streaming supports one prompt without echo", param="stream")
    top = req.logprobs or 0
    wants_logprobs = req.logprobs is not None
    cid, created = _new_id("cmpl"), int(time.time())
    head = {"id": cid, "created": created, "model": req.model, "system_fingerprint": FINGERPRINT}
    settings = req.settings() | {"logprobs": wants_logprobs, "top_logprobs": top}
    params = [gen.params(loaded, len(p), settings) for p in prompts]
    n = params[0].n
    if req.stream:
        job = gen.start(loaded, prompts[0], params[0])
        lines = _completion_chunks(head, loaded, job, n, len(prompts[0]), wants_logprobs, req.include_usage)
        return StreamingResponse(_guarded(lines, job), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    choices, completion_tokens = [], 0
    for p_index, (prompt, p) in enumerate(zip(prompts, params)):
        scored = None
        if req.echo and wants_logprobs:
            scored = await gen.compute(lambda prompt=prompt: prompt_logprobs(loaded, prompt, top))
        if p.max_new_tokens == 0:  # scoring the prompt only
            results = [ChoiceResult(i, finish_reason="length") for i in range(n)]
        else:
            results = await _wait(request, gen, gen.start(loaded, prompt, p), n)
        for r in results:
            completion_tokens += len(r.token_ids)
            text = (loaded.tokenizer.decode(prompt) if req.echo else "") + r.text
            choice = {"index": p_index * n + r.index, "text": text, "finish_reason": r.finish_reason,
                      "logprobs": _legacy_logprobs(loaded, prompt, r, scored, req.echo) if wants_logprobs else None}
            if r.timings:
                choice["timings"] = r.timings
            choices.append(choice)
    return {**head, "object": "text_completion", "choices": choices,
            "usage": _usage(sum(len(p) for p in prompts), completion_tokens)}


def token_text(tokenizer: Any, token_id: int) -> str:
    """A token's text; one holding part of a UTF-8 character is shown as its bytes ('bytes:\\xe2\\x80'), as OpenAI does."""
    raw = tokenizer.decode_bytes([token_id])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


class LegacyLogprobs:
    """The legacy completions logprobs object (tokens, token_logprobs, top_logprobs, text_offset), token by token.

    text_offset counts characters of the returned text, so it decodes the bytes so far the way the text was
    decoded: a token that ends mid-character adds no character, and the next one points at that character.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.chars = 0
        self.lists: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}

    def add(self, token_id: int, logprob: float | None, top: list[tuple[int, str, float]] | None) -> None:
        self.lists["tokens"].append(token_text(self.tokenizer, token_id))
        self.lists["token_logprobs"].append(logprob)
        self.lists["top_logprobs"].append(
            None if top is None else {token_text(self.tokenizer, tid): lp for tid, _, lp in top})
        self.lists["text_offset"].append(self.chars)
        self.chars += len(self.decoder.decode(self.tokenizer.decode_bytes([token_id])))

    def take(self) -> dict[str, list]:
        """The entries added since the last take (a streamed chunk's, or the whole answer's)."""
        out, self.lists = self.lists, {name: [] for name in self.lists}
        return out


def _legacy_logprobs(loaded: LoadedModel, prompt: list[int], r: ChoiceResult, scored: list | None, echo: bool) -> dict:
    entries = LegacyLogprobs(loaded.tokenizer)
    if echo:
        for tid, (lp, top) in zip(prompt, scored or [(None, None)] * len(prompt)):
            entries.add(tid, lp, None if top is None else _top_items(top))
    for e in r.events:
        entries.add(e.token_id, e.logprob, _top_items(e.top_logprobs))
    return entries.take()


async def _completion_chunks(head: dict, loaded: LoadedModel, job: Job, n: int, prompt_tokens: int,
                             logprobs: bool, include_usage: bool) -> AsyncIterator[str]:
    chunk = {**head, "object": "text_completion"}
    completion_tokens = 0
    finished = set()
    entries = [LegacyLogprobs(loaded.tokenizer) for _ in range(n)]  # text_offset runs on across chunks
    async for event in events_of(job):
        completion_tokens += 1
        choice: dict[str, Any] = {"index": event.index, "text": event.text, "logprobs": None,
                                  "finish_reason": event.finish_reason}
        if logprobs:
            entries[event.index].add(event.token_id, event.logprob, _top_items(event.top_logprobs))
            choice["logprobs"] = entries[event.index].take()
        if event.finish_reason is not None:
            finished.add(event.index)
            choice["timings"] = job.timings()
        yield sse({**chunk, "choices": [choice]})
    for i in range(n):
        if i not in finished:
            yield sse({**chunk, "choices": [{"index": i, "text": "", "logprobs": None, "finish_reason": "length",
                                              "timings": job.timings()}]})
    if include_usage:
        yield sse({**chunk, "choices": [], "usage": _usage(prompt_tokens, completion_tokens)})


@router.post("/tokenize")
async def tokenize(req: TokenizeRequest, request: Request) -> dict[str, Any]:
    """Token ids of a prompt (or of a rendered chat) for a model; `model` may also name a reference
    tokenizer (gpt2, cl100k_base, o200k_base) to compare tokenizations."""
    gen = _generator(request)
    if (req.prompt is None) == (req.messages is None):
        raise APIError(400, "give either prompt or messages", param="prompt")
    if req.prompt is not None and (req.tools or req.tool_choice is not None):
        raise APIError(400, "tools and tool_choice shape a chat prompt; give messages", param="tools")
    registry = gen.registry
    if req.model not in registry and req.model in registry.reference_tokenizers():
        if req.prompt is None:
            raise APIError(400, "a reference tokenizer has no chat template; give prompt", param="messages")
        tok = await asyncio.to_thread(registry.reference_tokenizer, req.model)
        ids, context = list(tok.encode(req.prompt, allowed_special="all")), None
    else:
        loaded = await gen.load(req.model)
        tok, context = loaded.tokenizer, loaded.context_length
        if req.messages is not None:
            messages = [m.flat() for m in req.messages]
            rag = options_for(req.model, req.rag, registry)
            if rag is not None:  # the passages the chat route would put in, so the count is the real prompt's
                messages, _ = await retrieve(registry, loaded, messages, rag, req.max_tokens)
            plan = plan_tools(req.tools, req.tool_choice, messages, tok, req.model)
            ids = chat_prompt_ids(gen, loaded, messages, plan)
        else:
            ids = gen.text_prompt(loaded, req.prompt)
    return {"tokens": ids, "count": len(ids), "max_model_len": context, "token_strs": [tok.decode([t]) for t in ids],
            "token_bytes": [list(tok.decode_bytes([t])) for t in ids]}


@router.post("/detokenize")
async def detokenize(req: DetokenizeRequest, request: Request) -> dict[str, Any]:
    gen = _generator(request)
    loaded = await gen.load(req.model)
    if req.tokens:
        gen.text_prompt(loaded, req.tokens)  # checks the ids are in the vocabulary
    return {"prompt": loaded.tokenizer.decode(req.tokens)}
