"""Tool calls in ChatML: the function list in the system turn, `<tool_call>` JSON in the answer.

SmolLM2-135M-Instruct's own chat template (in its GGUF) is plain ChatML and ignores `tools`. The
format used here is the Hermes/Qwen2.5 one, which SmolLM2-1.7B-Instruct's model card shows for function
calling: the system turn lists each tool's JSON inside `<tools></tools>`, the assistant answers with
one `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>` block per call, and the results come
back in a user turn as `<tool_response>` blocks. `tool_messages` rewrites such a conversation into plain
system/user/assistant messages, so `render_chat` renders it token for token as `transformers`'
`apply_chat_template(..., tools=...)` renders it with Qwen2.5's template (SmolLM2's default system
prompt in place of Qwen's). The llmlab chat format has no tool format: `supports_tools` says which.

`parse_tool_calls` reads calls back out of generated text; anything that is not a well-formed call
stays text, so a small model's broken JSON never raises.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from llmlab.errors import InputError
from llmlab.tokenizer.chat import SMOLLM2_DEFAULT_SYSTEM, chat_format

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
TOOLS_HEADER = ("\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
                "You are provided with function signatures within <tools></tools> XML tags:\n<tools>")
TOOLS_FOOTER = ("\n</tools>\n\nFor each function call, return a json object with function name and arguments "
                "within <tool_call></tool_call> XML tags:\n<tool_call>\n"
                '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')
_CALL_BLOCK = re.compile(re.escape(CALL_OPEN) + r"\s*(.*?)\s*" + re.escape(CALL_CLOSE), re.DOTALL)


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any]

    def json_arguments(self) -> str:
        """The arguments as OpenAI sends them: one JSON string."""
        return json.dumps(self.arguments, ensure_ascii=False)


def supports_tools(tokenizer: Any) -> bool:
    """True for ChatML tokenizers (SmolLM2 and other imported models); llmlab's own format has no tool format."""
    return chat_format(tokenizer) == "chatml"


def _to_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)  # what Jinja's `tojson` writes under transformers


def _call_fields(call: Mapping[str, Any]) -> tuple[str, Any]:
    """(name, arguments) of an OpenAI tool call ({"function": {...}}) or a bare {"name", "arguments"}."""
    fn = call.get("function", call)
    if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
        raise InputError(f"a tool call needs a function name: {call!r:.120}")
    arguments = fn.get("arguments", {})
    if isinstance(arguments, str):  # OpenAI sends arguments as a JSON string; the template writes the object
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            pass  # kept as the string it is
    return fn["name"], arguments


def format_tool_call(name: str, arguments: Any) -> str:
    """One call as the model writes it."""
    return f'{CALL_OPEN}\n{{"name": "{name}", "arguments": {_to_json(arguments)}}}\n{CALL_CLOSE}'


def tools_system_prompt(tools: Sequence[Mapping[str, Any]], system: str | None = None) -> str:
    """The system turn's text listing `tools` (OpenAI's {"type": "function", "function": {...}} objects)."""
    listed = "".join("\n" + _to_json(dict(t)) for t in tools)
    return (SMOLLM2_DEFAULT_SYSTEM if system is None else system) + TOOLS_HEADER + listed + TOOLS_FOOTER


def tool_messages(messages: Sequence[Mapping[str, Any]],
                  tools: Sequence[Mapping[str, Any]] | None = None) -> list[dict[str, str]]:
    """Plain system/user/assistant messages for a conversation with tools, assistant `tool_calls` and
    `tool` results, ready for `render_chat`; a conversation without any of them comes back unchanged."""
    out: list[dict[str, str]] = []
    rest = list(messages)
    if tools:
        system = None
        if rest and rest[0].get("role") == "system":
            system = rest.pop(0).get("content") or ""
        out.append({"role": "system", "content": tools_system_prompt(tools, system)})
    for m in rest:
        role, content = m.get("role"), m.get("content") or ""
        if role == "tool":
            block = f"<tool_response>\n{content}\n</tool_response>"
            if out and out[-1].get("tool_results"):
                out[-1]["content"] += "\n" + block  # consecutive results share one user turn
            else:
                out.append({"role": "user", "content": block, "tool_results": True})
        elif role == "assistant" and m.get("tool_calls"):
            calls = [format_tool_call(*_call_fields(c)) for c in m["tool_calls"]]
            out.append({"role": "assistant", "content": "\n".join(([content] if content else []) + calls)})
        else:
            out.append({"role": role, "content": content})
    for m in out:
        m.pop("tool_results", None)
    return out


def parse_tool_calls(text: str) -> tuple[str, list[ToolCall]]:
    """(the text outside the calls, the calls) of a generated answer.

    A block whose body is not a JSON object with a string "name" (or a list of such objects) is left in
    the text as written; so is an unclosed `<tool_call>`.
    """
    calls: list[ToolCall] = []

    def take(match: re.Match) -> str:
        try:
            body = json.loads(match.group(1))
        except json.JSONDecodeError:
            return match.group(0)
        items = body if isinstance(body, list) else [body]
        parsed = []
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                return match.group(0)
            arguments = item.get("arguments", item.get("parameters", {}))
            if isinstance(arguments, str):
                try:
                    arguments = json.loads(arguments)
                except json.JSONDecodeError:
                    return match.group(0)
            if not isinstance(arguments, dict):
                return match.group(0)
            parsed.append(ToolCall(item["name"], arguments))
        calls.extend(parsed)
        return ""

    rest = _CALL_BLOCK.sub(take, text)
    return rest.strip(), calls
