"""`llmlab chat --tools`: each call and result shows in the terminal; a model without a tool format is refused."""

import argparse
from types import SimpleNamespace

import pytest
import torch

from llmlab.cli import chat as chat_cli
from llmlab.cli import main
from llmlab.infer import Engine
from llmlab.model import GPT, preset, save_checkpoint
from llmlab.tokenizer.base import default_special_tokens
from llmlab.tokenizer.bpe import Tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


def _checkpoint(root, specials, context_length=128):
    tok = Tokenizer({bytes([i]): i for i in range(256)}, special_tokens=specials)
    tok.save(root / "tok.json")
    torch.manual_seed(0)
    save_checkpoint(root / "run" / "pretrain" / "checkpoints" / "step_000001",
                    GPT(preset("tiny", vocab_size=256 + len(specials), context_length=context_length)), tokenizer_file=root / "tok.json")
    return root / "run"


def test_chat_tools_prints_each_call_and_result(tmp_path, capsys, monkeypatch):
    run = _checkpoint(tmp_path, {"<|endoftext|>": 256, "<|im_start|>": 257, "<|im_end|>": 258})
    replies = ['<tool_call>\n{"name": "calculator", "arguments": {"expression": "17 * 23"}}\n</tool_call>', "391."]
    monkeypatch.setattr(Engine, "generate", lambda self, prompts, params: [SimpleNamespace(text=replies.pop(0))])
    parser = argparse.ArgumentParser()
    chat_cli.add_arguments(parser)
    lines = iter(["17*23?"])

    def fake_input(prompt):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    assert chat_cli.run(parser.parse_args([str(run), "--tools", "calculator"]), input_fn=fake_input) == 0
    out = capsys.readouterr()
    assert "[tool] calculator({'expression': '17 * 23'}) -> 391" in out.err
    assert "model> 391." in out.out and not replies


def test_chat_tools_refuses_a_model_without_a_tool_format_and_unknown_tools(tmp_path, capsys):
    run = _checkpoint(tmp_path, default_special_tokens(256))
    assert main(["chat", str(run), "--tools", "calculator"]) == 1
    assert "no tool-call format" in capsys.readouterr().err
    assert main(["chat", str(run), "--tools", "shell"]) == 1
    assert "unknown tool 'shell'" in capsys.readouterr().err


def test_chat_tools_with_an_index_puts_passages_in_the_prompt_and_lists_sources(tmp_path, capsys, monkeypatch):
    """--tools and --index in one session: each user turn gets its passages, calls still run, the sources
    follow the answer, and the history keeps the plain question (old passages do not pile up)."""
    from test_retrieve import DOCS

    import llmlab.retrieve.search as search
    from llmlab.retrieve import Embedder, build_index

    embedder = Embedder()
    build_index(DOCS, tmp_path / "index", embedder=embedder, show_progress=False)
    monkeypatch.setattr(search, "Embedder", lambda dtype: embedder)
    specials = {"<|endoftext|>": 256, "<|im_start|>": 257, "<|im_end|>": 258}
    run = _checkpoint(tmp_path, specials, context_length=4096)  # byte tokens: room for tools, passage and history
    tok = Tokenizer({bytes([i]): i for i in range(256)}, special_tokens=specials)
    replies = ['<tool_call>\n{"name": "calculator", "arguments": {"expression": "17 * 23"}}\n</tool_call>',
               "gzip compresses, and 17 * 23 = 391 [1].", "sqlite3 needs no server [1]."]
    prompts = []

    def generate(self, ids, params):
        prompts.append(tok.decode(ids[0]))
        return [SimpleNamespace(text=replies.pop(0))]

    monkeypatch.setattr(Engine, "generate", generate)
    parser = argparse.ArgumentParser()
    chat_cli.add_arguments(parser)
    lines = iter(["Which module compresses files like gzip, and what is 17*23?",
                  "Which database module works without a server?"])

    def fake_input(prompt):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    args = parser.parse_args([str(run), "--tools", "calculator", "--index", str(tmp_path / "index"), "--passages", "1"])
    assert chat_cli.run(args, input_fn=fake_input) == 0
    out = capsys.readouterr()
    gzip_source, sqlite_source = "[1] gzip — https://docs.test/gzip.html", "[1] sqlite3 — https://docs.test/sqlite3.html"
    first, after_call, second = prompts
    for prompt in (first, after_call):
        assert "<tools>" in prompt and gzip_source + "\nThe gzip module" in prompt
    assert "<tool_response>\n391\n</tool_response>" in after_call
    assert sqlite_source in second and "The gzip module" not in second  # the first turn's passage is gone
    assert "Which module compresses files like gzip, and what is 17*23?<|im_end|>" in second  # kept plain
    assert '"expression": "17 * 23"' in second and "391 [1]." in second  # the call, result and answer stay
    assert "[tool] calculator({'expression': '17 * 23'}) -> 391" in out.err
    assert f"model> gzip compresses, and 17 * 23 = 391 [1].\nsources:\n  {gzip_source}\n" in out.out
    assert f"sources:\n  {sqlite_source}\n" in out.out and not replies
