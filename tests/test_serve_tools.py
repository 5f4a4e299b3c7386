"""OpenAI `tools` through the official `openai` client: tool_calls out, `tool` results in, the final answer back.

The served model is a scripted tiny GPT: its head ignores the states and writes a fixed reply chosen
from the prompt (a call, an answer once a <tool_response> is in the prompt, or broken JSON), so the
server's tool handling is tested deterministically on the real batching, streaming and template paths.
"""

import json

import httpx
import pytest
import torch
from torch import nn

openai = pytest.importorskip("openai")

from llmlab.model import GPT, preset  # noqa: E402
from llmlab.serve import BackgroundServer, ModelRegistry, create_app  # noqa: E402
from llmlab.serve.tiny import make_tiny_checkpoint  # noqa: E402
from llmlab.tokenizer.bpe import Tokenizer  # noqa: E402

pytestmark = pytest.mark.network_local
CHATML = Tokenizer({bytes([i]): i for i in range(256)},
                   special_tokens={"<|endoftext|>": 256, "<|im_start|>": 257, "<|im_end|>": 258})
CALL = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "6*7"}}\n</tool_call>'
BROKEN = '<tool_call>\n{"name": "calculator", "arguments": {"expression": </tool_call>'
SHELL = '<tool_call>\n{"name": "shell", "arguments": {"cmd": "ls"}}\n</tool_call>'
TOOLS = [{"type": "function", "function": {
    "name": "calculator", "description": "Evaluate arithmetic.",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}},
    {"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}}}]
ASK = [{"role": "user", "content": "What is 6 times 7?"}]


class ScriptHead(nn.Module):
    """Logits that make `target` the only choice."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.vocab_size, self.target = vocab_size, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.full((*x.shape[:-1], self.vocab_size), -30.0)
        logits[..., self.target] = 30.0
        return logits


class ScriptedGPT(GPT):
    """Replies from a script chosen by the prompt; the answer continues whatever the prompt already started."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        super().__init__(preset("tiny", vocab_size=CHATML.vocab_size, context_length=2048))
        self.lm_head = ScriptHead(CHATML.vocab_size)
        self.script, self.step, self.prompt = [], 0, ""

    def reply(self, prompt: str) -> str:
        started = prompt.rsplit("<|im_start|>assistant\n", 1)[-1]
        if "<tool_response>" in prompt:
            text = "The answer is 42."
        elif "<tools>" not in prompt:
            text = "No tools here."
        else:
            text = BROKEN if "broken" in prompt else SHELL if "shell" in prompt else \
                CALL + "\n" + CALL if "twice" in prompt else CALL
        return text[len(started):] if text.startswith(started) else text

    def hidden_states(self, idx, kv_cache=None, **kwargs):
        if idx.size(1) > 1:  # a prompt, perhaps in chunks: choose the script from the whole of it
            self.prompt = ("" if kv_cache is None or kv_cache.length == 0 else self.prompt) + CHATML.decode(idx[0].tolist())
            self.script, self.step = CHATML.encode_ordinary(self.reply(self.prompt)) + [258], 0
        else:
            self.step += 1
        self.lm_head.target = self.script[min(self.step, len(self.script) - 1)]
        return super().hidden_states(idx, kv_cache=kv_cache, **kwargs)


@pytest.fixture(scope="module")
def scripted():
    return ScriptedGPT()


@pytest.fixture(scope="module")
def server(tmp_path_factory, scripted):
    root = tmp_path_factory.mktemp("models")
    make_tiny_checkpoint(root / "tiny-gpt")  # llmlab's own chat format: no tool format
    registry = ModelRegistry(root, imported=False)
    registry.add("scripted", scripted, CHATML)
    app = create_app(registry, history_path=tmp_path_factory.mktemp("h") / "h.sqlite")
    with BackgroundServer(app) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="not-needed", max_retries=0, timeout=60)


def test_tool_call_round_trip_with_the_openai_sdk(client):
    first = client.chat.completions.create(model="scripted", messages=ASK, tools=TOOLS, temperature=0,
                                          max_tokens=200)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "calculator" and call.id.startswith("call_")
    assert json.loads(call.function.arguments) == {"expression": "6*7"}
    messages = [*ASK, choice.message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": "42"}]
    final = client.chat.completions.create(model="scripted", messages=messages, tools=TOOLS, temperature=0,
                                          max_tokens=200)
    assert final.choices[0].message.content == "The answer is 42."
    assert final.choices[0].finish_reason == "stop" and not final.choices[0].message.tool_calls


def test_streamed_tool_call_arrives_as_tool_call_deltas(client):
    stream = client.chat.completions.create(model="scripted", messages=ASK, tools=TOOLS, temperature=0,
                                           max_tokens=200, stream=True)
    content, calls, finish = "", {}, None
    for chunk in stream:
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for d in delta.tool_calls or []:
            c = calls.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
            c["id"] = d.id or c["id"]
            c["name"] += (d.function.name or "") if d.function else ""
            c["arguments"] += (d.function.arguments or "") if d.function else ""
        finish = chunk.choices[0].finish_reason or finish
    assert content == "" and finish == "tool_calls"
    assert len(calls) == 1 and calls[0]["name"] == "calculator" and calls[0]["id"].startswith("call_")
    assert json.loads(calls[0]["arguments"]) == {"expression": "6*7"}


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "calculator"}}])
def test_required_and_named_tool_choice_start_the_answer_as_a_call(client, tool_choice):
    r = client.chat.completions.create(model="scripted", messages=ASK, tools=TOOLS, tool_choice=tool_choice,
                                      temperature=0, max_tokens=200)
    assert r.choices[0].finish_reason == "tool_calls"
    assert json.loads(r.choices[0].message.tool_calls[0].function.arguments) == {"expression": "6*7"}


def test_tool_choice_none_leaves_the_tools_out(client):
    r = client.chat.completions.create(model="scripted", messages=ASK, tools=TOOLS, tool_choice="none",
                                      temperature=0, max_tokens=200)
    assert r.choices[0].message.content == "No tools here." and r.choices[0].finish_reason == "stop"


def _answer(client, content: str, stream: bool, tools=TOOLS, **extra) -> tuple[str, list[dict], str]:
    """(content, [{"name", "arguments"}], finish_reason) of one answer, streamed or not."""
    kwargs = dict(model="scripted", messages=[{"role": "user", "content": content}], tools=tools, temperature=0,
                  max_tokens=200, **extra)
    if not stream:
        choice = client.chat.completions.create(**kwargs).choices[0]
        calls = [{"name": c.function.name, "arguments": c.function.arguments} for c in choice.message.tool_calls or []]
        return choice.message.content or "", calls, choice.finish_reason
    text, calls, finish = "", {}, None
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        delta = chunk.choices[0].delta
        text += delta.content or ""
        for d in delta.tool_calls or []:
            call = calls.setdefault(d.index, {"name": "", "arguments": ""})
            call["name"] += d.function.name or ""
            call["arguments"] += d.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    return text, list(calls.values()), finish


# Tools whose arguments are bounded, so a scripted model the grammar overrules still finishes its call.
BOUNDED = [{"type": "function", "function": {"name": n, "parameters": {
    "type": "object", "properties": {"expression": {"type": "string", "maxLength": 8}}, "required": ["expression"],
    "additionalProperties": False}}} for n in ("calculator", "weather")]


@pytest.mark.parametrize("stream", [False, True])
def test_a_call_the_model_breaks_is_completed_validly_by_the_grammar(client, stream):
    jsonschema = pytest.importorskip("jsonschema")
    pytest.importorskip("llguidance")
    content, calls, finish = _answer(client, "broken", stream, tools=BOUNDED)
    (call,) = calls
    assert content == "" and finish == "tool_calls" and call["name"] == "calculator"
    jsonschema.validate(json.loads(call["arguments"]), BOUNDED[0]["function"]["parameters"])


@pytest.mark.parametrize("tool_choice", ["auto", "required"])
def test_a_call_to_a_tool_not_offered_becomes_a_call_to_one_that_is(client, tool_choice):
    pytest.importorskip("llguidance")
    _, calls, finish = _answer(client, "call shell", False, tools=BOUNDED, tool_choice=tool_choice)
    assert finish == "tool_calls" and [c["name"] for c in calls] == ["calculator"]
    assert json.loads(calls[0]["arguments"]).keys() == {"expression"}


def test_a_named_tool_choice_constrains_the_arguments_to_its_schema(client):
    jsonschema = pytest.importorskip("jsonschema")
    pytest.importorskip("llguidance")
    choice = {"type": "function", "function": {"name": "weather"}}
    _, calls, finish = _answer(client, "What is 6 times 7?", False, tools=BOUNDED, tool_choice=choice)
    assert finish == "tool_calls" and [c["name"] for c in calls] == ["weather"]
    jsonschema.validate(json.loads(calls[0]["arguments"]), BOUNDED[1]["function"]["parameters"])


@pytest.mark.parametrize("tool_choice", ["auto", "required"])
def test_parallel_tool_calls_false_allows_one_call(client, tool_choice):
    pytest.importorskip("llguidance")
    _, calls, _ = _answer(client, "call it twice", False, tool_choice=tool_choice)
    assert len(calls) == 2
    _, calls, finish = _answer(client, "call it twice", False, tool_choice=tool_choice, parallel_tool_calls=False)
    assert len(calls) == 1 and finish == "tool_calls"


def test_a_tool_schema_the_grammar_cannot_take_is_a_400(server):
    pytest.importorskip("llguidance")
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "x": {"type": "string", "pattern": "(?=lookahead)"}}}}}]
    r = httpx.post(server.url + "/v1/chat/completions", json={"model": "scripted", "messages": ASK, "tools": tools})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tools"


@pytest.mark.parametrize("stream", [False, True])
def test_without_llguidance_a_malformed_call_comes_back_as_content(client, stream, monkeypatch):
    monkeypatch.setattr("llmlab.serve.openai_tools.grammars_available", lambda: False)
    content, calls, finish = _answer(client, "broken", stream)
    assert (content, calls, finish) == (BROKEN, [], "stop")


def test_tools_on_a_model_without_a_tool_format_is_a_400(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny-gpt", messages=ASK, tools=TOOLS)
    assert "no tool-call format" in e.value.body["message"] and e.value.body["param"] == "tools"


@pytest.mark.parametrize("extra, message", [
    ({"tool_choice": {"type": "function", "function": {"name": "shell"}}}, "not in tools"),
    ({"tool_choice": "required", "tools": None}, "tool_choice needs tools"),
    ({"tools": [{"type": "function"}]}, "each tool must be"),
    ({"functions": [{"name": "f"}], "tools": None}, "deprecated 'functions'"),
])
def test_bad_tool_requests_are_400s(server, extra, message):
    body = {"model": "scripted", "messages": ASK, "tools": TOOLS, **extra}
    r = httpx.post(server.url + "/v1/chat/completions", json={k: v for k, v in body.items() if v is not None})
    assert r.status_code == 400 and message in r.json()["error"]["message"]


def test_llmlab_tools_runs_the_calculator_on_the_server(server):
    r = httpx.post(server.url + "/v1/chat/completions", timeout=60, json={
        "model": "scripted", "messages": ASK, "llmlab_tools": ["calculator"], "temperature": 0, "max_tokens": 200})
    assert r.status_code == 200
    choice = r.json()["choices"][0]
    assert choice["message"]["content"] == "The answer is 42." and choice["finish_reason"] == "stop"
    (step,) = choice["llmlab_tool_trace"]
    assert (step["name"], json.loads(step["arguments"]), step["result"], step["ok"]) == (
        "calculator", {"expression": "6*7"}, "42", True)
    bad = httpx.post(server.url + "/v1/chat/completions", json={
        "model": "scripted", "messages": ASK, "llmlab_tools": ["shell"]})
    assert bad.status_code == 400 and "unknown tool 'shell'" in bad.json()["error"]["message"]


def test_langchain_bind_tools_round_trip(server):
    langchain_openai = pytest.importorskip("langchain_openai")
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool

    @tool
    def calculator(expression: str) -> str:
        """Evaluate arithmetic."""
        return "42"

    llm = langchain_openai.ChatOpenAI(model="scripted", base_url=server.url + "/v1", api_key="not-needed",
                                      temperature=0, max_tokens=200, max_retries=0).bind_tools([calculator])
    messages = [HumanMessage("What is 6 times 7?")]
    reply = llm.invoke(messages)
    assert [(c["name"], c["args"]) for c in reply.tool_calls] == [("calculator", {"expression": "6*7"})]
    messages += [reply, ToolMessage(calculator.invoke(reply.tool_calls[0]["args"]), tool_call_id=reply.tool_calls[0]["id"])]
    assert llm.invoke(messages).content == "The answer is 42."


@pytest.mark.parametrize("method", ["function_calling", "json_schema"])
def test_langchain_with_structured_output(server, method):
    """LangChain's structured output both ways it asks for it: a forced call of a tool built from the
    model class, and a strict json_schema response_format. The scripted model wants to write text; the
    grammar makes every answer an instance (the class bounds its fields, so the answer also ends)."""
    langchain_openai = pytest.importorskip("langchain_openai")
    pytest.importorskip("llguidance")
    from pydantic import BaseModel, Field

    class Person(BaseModel):
        """A person."""
        name: str = Field(max_length=8)
        age: int = Field(ge=0, le=150)

    llm = langchain_openai.ChatOpenAI(model="scripted", base_url=server.url + "/v1", api_key="not-needed",
                                      temperature=0, max_tokens=200, max_retries=0)
    structured = llm.with_structured_output(Person, method=method, include_raw=True)
    result = structured.invoke("Describe a person.")
    assert result["parsing_error"] is None and isinstance(result["parsed"], Person)
    if method == "function_calling":
        assert [c["name"] for c in result["raw"].tool_calls] == ["Person"]
    streamed = [part["parsed"] for part in structured.stream("Describe a person.") if part.get("parsed")]
    assert streamed and isinstance(streamed[-1], Person)


@pytest.mark.parametrize("tool_choice", [None, "required", "none"])
def test_tokenize_renders_tools_and_tool_messages_as_the_chat_route_does(server, scripted, tool_choice):
    """/tokenize with tools, an assistant's tool_calls and a tool result gives the very ids the chat route
    fed the model (the scripted model keeps the prompt it read; the byte tokenizer decodes it exactly)."""
    call = {"id": "call_1", "type": "function", "function": {"name": "calculator", "arguments": '{"expression": "6*7"}'}}
    messages = [*ASK, {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": "42"}, {"role": "user", "content": "And 6*8?"}]
    extra = {} if tool_choice is None else {"tool_choice": tool_choice}
    body = {"model": "scripted", "messages": messages, "tools": TOOLS, **extra}
    answer = httpx.post(server.url + "/v1/chat/completions", timeout=60, json={**body, "temperature": 0, "max_tokens": 4})
    assert answer.status_code == 200, answer.text
    seen = scripted.prompt
    tokens = httpx.post(server.url + "/tokenize", json=body).json()["tokens"]
    assert CHATML.decode(tokens) == seen and len(tokens) == answer.json()["usage"]["prompt_tokens"]
    assert ("<tools>" in seen) == (tool_choice != "none") and "<tool_response>\n42\n</tool_response>" in seen
    assert seen.endswith("<tool_call>\n") == (tool_choice == "required")


def test_tokenize_refuses_tools_without_messages(server):
    r = httpx.post(server.url + "/tokenize", json={"model": "scripted", "prompt": "hi", "tools": TOOLS})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tools"
