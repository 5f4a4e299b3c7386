"""OpenAI `tools` and `tool_choice` for the chat route, and llmlab's server-run built-in tools.

The model writes calls as text in its chat template's tool format (`tokenizer/chat_tools.py`); this
module turns a request's `tools`, `tool_choice` and `tool`/`tool_calls` messages into a prompt, and the
generated text back into OpenAI `tool_calls` (whole, or as streamed deltas). `tool_choice: "required"` or
a named function starts the answer with `<tool_call>` (and the name). With llguidance installed the calls
are decoded under a grammar (`infer/constrained.tool_call_grammar`): every call the model opens names one
of the tools and carries arguments that match its parameter schema, so it parses by construction (only
max_tokens can cut it); "required" and a named function allow nothing but calls. Without llguidance a
call the model breaks comes back as plain content. `tool_choice: "none"` leaves the tools out of the prompt.

llmlab extension: `llmlab_tools: ["calculator", "python"]` makes the server itself run those built-in
tools (`infer/tool_use.py`) until the model answers, and returns the answer with `llmlab_tool_trace`.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable

from llmlab.errors import ConfigError, InputError
from llmlab.infer.constrained import grammars_available, tool_call_grammar
from llmlab.infer.tool_use import ToolSession, check_tool_names
from llmlab.serve.api_errors import APIError
from llmlab.tokenizer.chat_tools import CALL_OPEN, parse_tool_calls, supports_tools, tool_messages


@dataclass
class ToolPlan:
    """How one request uses tools: what the prompt lists, how the answer starts, the grammar the rest of
    it follows (None: free text), whether calls are read."""
    tools: list[dict[str, Any]]
    prefix: str = ""
    grammar: str | None = None
    parse: bool = True


def _grammar(tools: list[dict[str, Any]], mode: str, parallel: bool) -> str | None:
    if not grammars_available():
        return None
    try:
        return tool_call_grammar(tools, mode, parallel)
    except ConfigError as e:
        raise APIError(400, e.message, param="tools", code="invalid_schema") from e


def _tool_name(tool: Any) -> str:
    fn = tool.get("function") if isinstance(tool, dict) else None
    if not (isinstance(tool, dict) and tool.get("type") == "function" and isinstance(fn, dict)
            and isinstance(fn.get("name"), str) and fn["name"]):
        raise APIError(400, 'each tool must be {"type": "function", "function": {"name": ..., "parameters": ...}}',
                       param="tools")
    return fn["name"]


def uses_tool_messages(messages: list[dict[str, Any]]) -> bool:
    return any(m["role"] == "tool" or m.get("tool_calls") for m in messages)


def plan_tools(tools: list[dict[str, Any]] | None, tool_choice: Any, messages: list[dict[str, Any]],
               tokenizer: Any, model: str, parallel: bool = True) -> ToolPlan | None:
    """The request's ToolPlan, None without tools; a 400 in OpenAI's shape for what cannot be honoured."""
    names = [_tool_name(t) for t in tools or []]
    if (names or uses_tool_messages(messages)) and not supports_tools(tokenizer):
        raise APIError(400, f"model '{model}' has no tool-call format in its chat template, so it cannot take "
                       "'tools' or tool messages; use a ChatML model such as smollm2-135m",
                       param="tools", code="unsupported_parameter")
    if not names:
        if tool_choice not in (None, "none", "auto"):
            raise APIError(400, "tool_choice needs tools", param="tool_choice", code="unsupported_parameter")
        return None
    if tool_choice in (None, "auto"):
        return ToolPlan(tools, grammar=_grammar(tools, "auto", parallel))
    if tool_choice == "none":
        return ToolPlan([], parse=False)
    if tool_choice == "required":
        return ToolPlan(tools, prefix=CALL_OPEN + "\n", grammar=_grammar(tools, "required", parallel))
    name = (tool_choice.get("function") or {}).get("name") if isinstance(tool_choice, dict) else None
    if name is None:
        raise APIError(400, 'tool_choice must be "none", "auto", "required" or '
                       '{"type": "function", "function": {"name": ...}}', param="tool_choice")
    if name not in names:
        raise APIError(400, f"tool_choice names '{name}', which is not in tools ({', '.join(names)})",
                       param="tool_choice")
    named = [t for t in tools if t["function"]["name"] == name][:1]
    return ToolPlan(tools, prefix=f'{CALL_OPEN}\n{{"name": "{name}", "arguments": ', grammar=_grammar(named, "named", False))


def prompt_messages(messages: list[dict[str, Any]], plan: ToolPlan | None) -> list[dict[str, str]]:
    """Plain messages for `render_chat`: tools listed in the system turn, calls and results in the template's format."""
    if plan is None and not uses_tool_messages(messages):
        return [{"role": m["role"], "content": m["content"]} for m in messages]
    try:
        return tool_messages(messages, plan.tools if plan else None)
    except InputError as e:
        raise APIError(400, e.message, param="messages") from e


def openai_calls(text: str) -> tuple[str, list[dict[str, Any]]]:
    """(content, OpenAI tool_calls) of a generated answer."""
    content, calls = parse_tool_calls(text)
    return content, [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                      "function": {"name": c.name, "arguments": c.json_arguments()}} for c in calls]


def answer_message(text: str, finish_reason: str | None, plan: ToolPlan | None) -> tuple[dict[str, Any], str | None]:
    """The response message for one generated answer and its finish_reason ("tool_calls" when it called)."""
    if plan is None or not plan.parse:
        return {"role": "assistant", "content": text, "refusal": None}, finish_reason
    content, calls = openai_calls(plan.prefix + text)
    if not calls:
        return {"role": "assistant", "content": plan.prefix + text, "refusal": None}, finish_reason
    return {"role": "assistant", "content": content or None, "refusal": None, "tool_calls": calls}, "tool_calls"


def _held_back(text: str) -> int:
    """How many trailing characters of `text` could be the start of `<tool_call>` (not to be sent yet)."""
    for k in range(min(len(CALL_OPEN) - 1, len(text)), 0, -1):
        if CALL_OPEN.startswith(text[-k:]):
            return k
    return 0


async def tool_chunks(events: AsyncIterator[Any], n: int, plan: ToolPlan,
                      one: Callable[..., str], timings: Callable[[], dict]) -> AsyncIterator[str]:
    """Streamed chat chunks when tools may be called: content streams until a `<tool_call>` begins; the
    calls are sent as OpenAI's `tool_calls` deltas once the answer ends (a call is parsed whole)."""
    texts, sent = [plan.prefix] * n, [0] * n
    finished: set[int] = set()

    def end(i: int, reason: str | None) -> list[str]:
        content, calls = openai_calls(texts[i])
        if not calls:
            out = [one(i, {"content": texts[i][sent[i]:]})] if len(texts[i]) > sent[i] else []
            return out + [one(i, {}, None, reason, timings=timings())]
        out = []
        for k, c in enumerate(calls):
            out.append(one(i, {"tool_calls": [{"index": k, "id": c["id"], "type": "function",
                                               "function": {"name": c["function"]["name"], "arguments": ""}}]}))
            out.append(one(i, {"tool_calls": [{"index": k, "function": {"arguments": c["function"]["arguments"]}}]}))
        return out + [one(i, {}, None, "tool_calls", timings=timings())]

    async for event in events:
        i = event.index
        texts[i] += event.text
        call_at = texts[i].find(CALL_OPEN)
        safe = call_at if call_at >= 0 else len(texts[i]) - _held_back(texts[i])
        if safe > sent[i]:
            yield one(i, {"content": texts[i][sent[i]:safe]})
            sent[i] = safe
        if event.finish_reason is not None:
            finished.add(i)
            for line in end(i, event.finish_reason):
                yield line
    for i in range(n):
        if i not in finished:
            for line in end(i, "length"):
                yield line


async def run_builtin_tools(messages: list[dict[str, Any]], names: list[str],
                            complete: Callable[[list[dict[str, str]], str | None], Awaitable[Any]]
                            ) -> tuple[ToolSession, Any, int]:
    """Run the tool loop with the server's generator: (session, last ChoiceResult, completion tokens).

    `complete(messages, grammar)` generates one answer to plain messages under the grammar (None: free);
    the tools run in a thread (the python tool waits on a subprocess).
    """
    try:
        session = ToolSession(messages, check_tool_names(names))
    except InputError as e:
        raise APIError(400, e.message, param="llmlab_tools") from e
    tokens = 0
    while True:
        result = await complete(session.prompt_messages(), session.grammar)
        tokens += len(result.token_ids)
        if not await asyncio.to_thread(session.take, result.text):
            return session, result, tokens


def trace_json(session: ToolSession) -> list[dict[str, Any]]:
    """The trace as the response's `llmlab_tool_trace` (arguments as JSON text, as in tool_calls)."""
    return [{**s, "arguments": json.dumps(s["arguments"], ensure_ascii=False)} for s in session.trace_dicts()]
