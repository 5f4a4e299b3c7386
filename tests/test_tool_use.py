"""The tool loop with a scripted model: calls run, results go back, the final answer ends it."""

from types import SimpleNamespace

import pytest

from llmlab.errors import InputError
from llmlab.infer.tool_use import ToolSession, chat_with_tools
from llmlab.tokenizer.bpe import Tokenizer

CHATML = Tokenizer({bytes([i]): i for i in range(256)},
                   special_tokens={"<|endoftext|>": 256, "<|im_start|>": 257, "<|im_end|>": 258})


def call(name: str, **arguments) -> str:
    import json
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


class ScriptedEngine:
    """An Engine stand-in whose replies are a script; it records each prompt it was given."""

    def __init__(self, replies):
        self.replies, self.prompts = list(replies), []
        self.tokenizer = CHATML
        self.model = SimpleNamespace(config=SimpleNamespace(context_length=100_000))

    def generate(self, prompts, params):
        self.prompts.append(CHATML.decode(prompts[0]))
        return [SimpleNamespace(text=self.replies.pop(0))]


def test_loop_runs_the_call_feeds_the_result_back_and_returns_the_answer():
    engine = ScriptedEngine([call("calculator", expression="1234 * 5678"), "It is 7006652."])
    seen = []
    session = chat_with_tools(engine, [{"role": "user", "content": "1234*5678?"}], ["calculator"], None,
                              on_step=seen.append)
    assert session.answer == "It is 7006652."
    assert [(s.name, s.arguments, s.result, s.ok) for s in session.trace] == [
        ("calculator", {"expression": "1234 * 5678"}, "7006652", True)]
    assert seen == session.trace and session.trace[0].seconds >= 0
    assert '"name": "calculator"' in engine.prompts[0] and "<tools>" in engine.prompts[0]
    # The second prompt holds the model's call and the tool's answer, in the template's format.
    assert engine.prompts[1].endswith("<|im_start|>user\n<tool_response>\n7006652\n</tool_response><|im_end|>\n"
                                      "<|im_start|>assistant\n")
    assert '<|im_start|>assistant\n<tool_call>\n{"name": "calculator", "arguments": {"expression": "1234 * 5678"}}' \
        in engine.prompts[1]


def test_several_calls_in_one_reply_and_a_tool_error_is_fed_back_as_text():
    replies = [call("calculator", expression="2+2") + "\n" + call("calculator", expression="2+"), "done"]
    session = chat_with_tools(ScriptedEngine(replies), [{"role": "user", "content": "x"}], ["calculator"], None)
    assert [s.result for s in session.trace][0] == "4"
    assert not session.trace[1].ok and session.trace[1].result.startswith("error:")
    assert session.answer == "done"


def test_unknown_tool_name_in_a_reply_is_an_error_result_not_a_crash():
    session = chat_with_tools(ScriptedEngine([call("shell", cmd="rm -rf /"), "ok"]),
                              [{"role": "user", "content": "x"}], ["calculator"], None)
    assert session.trace[0].result == "error: there is no tool named 'shell'" and session.answer == "ok"


def test_rounds_are_capped():
    engine = ScriptedEngine([call("calculator", expression="1+1")] * 5)
    session = chat_with_tools(engine, [{"role": "user", "content": "loop"}], ["calculator"], None, max_rounds=2)
    assert len(engine.prompts) == 3 and len(session.trace) == 2 and session.answer == ""


def test_malformed_call_is_the_final_answer():
    reply = '<tool_call>{"name": "calculator", "arguments": {</tool_call>'
    session = chat_with_tools(ScriptedEngine([reply]), [{"role": "user", "content": "x"}], ["calculator"], None)
    assert session.answer == reply and session.trace == []


def test_python_tool_runs_in_the_sandbox():
    session = ToolSession([{"role": "user", "content": "x"}], ["python"])
    assert session.take(call("python", code="print(6 * 7)"))
    assert session.trace[0].result == "42" and session.messages[-1] == {
        "role": "tool", "tool_call_id": session.trace[0].id, "content": "42"}


def test_unknown_built_in_tool_is_refused_up_front():
    with pytest.raises(InputError, match="unknown tool 'shell'"):
        ToolSession([{"role": "user", "content": "x"}], ["shell"])
