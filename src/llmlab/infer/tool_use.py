"""Tool use: generate, run the built-in tools the answer calls, feed the results back, generate again.

`ToolSession` holds the logic and no generator, so the CLI (through `chat_with_tools` and an `Engine`)
and the server (through its batched worker) drive the same loop:

    session = ToolSession(messages, ["calculator"])
    while True:
        reply = generate(session.prompt_messages(), session.grammar)   # plain messages for render_chat
        if not session.take(reply):                   # False: a final answer, no calls (or rounds spent)
            break
    session.answer, session.trace
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Sequence

from llmlab.errors import ConfigError, InputError
from llmlab.infer import sandbox
from llmlab.infer.constrained import grammars_available, tool_call_grammar
from llmlab.infer.sampling import SamplingParams
from llmlab.tokenizer.chat_tools import ToolCall, parse_tool_calls, tool_messages


def _schema(name: str, description: str, argument: str, argument_help: str) -> dict[str, Any]:
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "properties": {argument: {"type": "string", "description": argument_help}},
                       "required": [argument]}}}


BUILTIN_TOOLS: dict[str, tuple[dict[str, Any], Callable[[dict[str, Any]], str]]] = {
    "calculator": (_schema("calculator", "Evaluate an arithmetic expression exactly.", "expression",
                           "e.g. (1234 + 5678) * 9"),
                   lambda args: sandbox.calculator(args.get("expression", ""))),
    "python": (_schema("python", "Run Python code in a sandbox (no files, no network) and return what it prints.",
                       "code", "a Python program that prints its result"),
               lambda args: sandbox.python(args.get("code", "")).text()),
}


def check_tool_names(names: Sequence[str]) -> list[str]:
    """The names, checked against the built-in tools; InputError naming the unknown one."""
    unknown = [n for n in names if n not in BUILTIN_TOOLS]
    if unknown:
        raise InputError(f"unknown tool '{unknown[0]}'; the built-in tools are {', '.join(BUILTIN_TOOLS)}")
    return list(dict.fromkeys(names))


@dataclass
class ToolStep:
    """One call the model made and what the tool answered."""
    id: str
    name: str
    arguments: dict[str, Any]
    result: str
    ok: bool
    seconds: float


def run_tool(call: ToolCall) -> ToolStep:
    """Run one built-in tool; its failure (bad arguments, an unknown tool) becomes the result text."""
    start = time.perf_counter()
    entry = BUILTIN_TOOLS.get(call.name)
    try:
        if entry is None:
            raise InputError(f"there is no tool named '{call.name}'")
        result, ok = entry[1](call.arguments), True
    except InputError as e:
        result, ok = f"error: {e}", False
    return ToolStep(f"call_{uuid.uuid4().hex[:12]}", call.name, call.arguments, result, ok,
                    time.perf_counter() - start)


class ToolSession:
    """A conversation in which the model may call built-in tools, at most `max_rounds` times."""

    def __init__(self, messages: Sequence[Mapping[str, Any]], tools: Sequence[str], max_rounds: int = 3,
                 on_step: Callable[[ToolStep], None] | None = None) -> None:
        self.names = check_tool_names(tools)
        self.schemas = [BUILTIN_TOOLS[n][0] for n in self.names]
        # The grammar a reply follows (with llguidance): free text, and any call it opens is a valid one.
        self.grammar = tool_call_grammar(self.schemas, "auto") if grammars_available() else None
        self.messages: list[dict[str, Any]] = [dict(m) for m in messages]
        self.max_rounds = max_rounds
        self.rounds = 0
        self.trace: list[ToolStep] = []
        self.answer: str | None = None
        self.on_step = on_step

    def prompt_messages(self) -> list[dict[str, str]]:
        """The conversation so far as plain messages for `render_chat` (tools listed in the system turn)."""
        return tool_messages(self.messages, self.schemas)

    def take(self, reply: str) -> bool:
        """Read one generated reply; True when it called tools (now run, results appended): generate again."""
        content, calls = parse_tool_calls(reply)
        if not calls or self.rounds >= self.max_rounds:
            self.answer = reply if not calls else content
            self.messages.append({"role": "assistant", "content": self.answer})
            return False
        self.rounds += 1
        steps = [run_tool(c) for c in calls]
        self.messages.append({"role": "assistant", "content": content, "tool_calls": [
            {"id": s.id, "type": "function", "function": {"name": s.name, "arguments": s.arguments}} for s in steps]})
        for s in steps:
            self.messages.append({"role": "tool", "tool_call_id": s.id, "content": s.result})
            self.trace.append(s)
            if self.on_step:
                self.on_step(s)
        return True

    def trace_dicts(self) -> list[dict[str, Any]]:
        return [asdict(s) for s in self.trace]


def chat_with_tools(engine: Any, messages: Sequence[Mapping[str, Any]], tools: Sequence[str],
                    params: SamplingParams | None,
                    max_rounds: int = 3, on_step: Callable[[ToolStep], None] | None = None) -> ToolSession:
    """Run the tool loop with an `Engine`: its model answers, calls tools, reads the results, answers again."""
    from llmlab.tokenizer.chat import render_chat

    session = ToolSession(messages, tools, max_rounds, on_step)
    params = params or SamplingParams()
    if params.json_schema is not None:
        raise ConfigError("tools and JSON output cannot be combined: a tool call is not the requested JSON")
    params = params.replace(grammar=session.grammar)
    context = engine.model.config.context_length - 1
    while True:
        ids = render_chat(session.prompt_messages(), engine.tokenizer, add_generation_prompt=True,
                          max_tokens=context).ids
        if not session.take(engine.generate([ids], params)[0].text):
            return session
