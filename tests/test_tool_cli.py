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


def _checkpoint(root, specials):
    tok = Tokenizer({bytes([i]): i for i in range(256)}, special_tokens=specials)
    tok.save(root / "tok.json")
    torch.manual_seed(0)
    save_checkpoint(root / "run" / "pretrain" / "checkpoints" / "step_000001",
                    GPT(preset("tiny", vocab_size=256 + len(specials))), tokenizer_file=root / "tok.json")
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
