"""`llmlab generate` and `llmlab chat` on a tiny checkpoint: same text as the engine, clear errors."""

import argparse

import pytest
import torch

from llmlab.cli import main
from llmlab.cli import chat as chat_cli
from llmlab.infer import Engine, SamplingParams, load_model
from llmlab.model import GPT, preset, save_checkpoint
from llmlab.tokenizer.base import default_special_tokens
from llmlab.tokenizer.bpe import Tokenizer


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    tok = Tokenizer({bytes([i]): i for i in range(256)}, special_tokens=default_special_tokens(256))
    tok.save(root / "tok.json")
    torch.manual_seed(0)
    save_checkpoint(root / "run" / "pretrain" / "checkpoints" / "step_000010", GPT(preset("tiny", vocab_size=261)),
                    tokenizer_file=root / "tok.json")
    return root / "run"


def test_load_model_resolves_a_run_directory_and_rejects_unknown_paths(checkpoint, tmp_path):
    model, tok = load_model(checkpoint)
    assert model.config.vocab_size == 261 and tok.special_tokens["<|end|>"] == 260
    with pytest.raises(Exception, match="no checkpoint at"):
        load_model(tmp_path / "missing")


def test_generate_prints_what_the_engine_generates(checkpoint, capsys):
    model, tok = load_model(checkpoint)
    expected = Engine(model, tok).generate(["Hi"], SamplingParams(max_new_tokens=8, temperature=0, seed=1))[0].text
    assert main(["generate", str(checkpoint), "--prompt", "Hi", "-n", "8", "-t", "0", "--seed", "1"]) == 0
    assert capsys.readouterr().out == expected + "\n"
    assert main(["generate", str(checkpoint), "-p", "Hi", "-n", "8", "-t", "0", "--no-stream", "--no-kv-cache"]) == 0
    assert capsys.readouterr().out == expected + "\n"


def test_generate_dtype_bf16_runs_the_packed_bf16_model(checkpoint, capsys):
    from llmlab.infer.packed import pack_model, packing_available

    model, tok = load_model(checkpoint, dtype=torch.bfloat16)
    if packing_available():
        pack_model(model)
    expected = Engine(model, tok).generate(["Hi"], SamplingParams(max_new_tokens=8, temperature=0))[0].text
    assert main(["generate", str(checkpoint), "-p", "Hi", "-n", "8", "-t", "0", "--dtype", "bf16"]) == 0
    assert capsys.readouterr().out == expected + "\n"


@pytest.mark.parametrize("flags", [["--beams", "3"], ["--draft", "SELF", "-t", "0"], ["--quantize", "int8", "-t", "0"],
                                   ["--chat", "--system", "be kind", "-t", "1", "--top-k", "5", "--logprobs", "2"]])
def test_every_strategy_runs_from_the_command_line(checkpoint, capsys, flags):
    flags = [str(checkpoint) if f == "SELF" else f for f in flags]
    assert main(["generate", str(checkpoint), "-p", "Hello", "-n", "6", *flags]) == 0
    out = capsys.readouterr()
    assert out.out.strip() or "--chat" in flags
    assert "tokens/s" in out.err


def test_invalid_values_and_missing_checkpoints_exit_with_a_message(checkpoint, tmp_path, capsys):
    assert main(["generate", str(checkpoint), "-p", "x", "--top-p", "1.5"]) == 1
    assert "top_p must be in (0, 1]" in capsys.readouterr().err
    assert main(["generate", str(tmp_path / "nope"), "-p", "x"]) == 1
    assert "no checkpoint at" in capsys.readouterr().err
    assert main(["generate", str(checkpoint), "-p", "x" * 200]) == 1
    assert "context window is 128" in capsys.readouterr().err


def test_chat_keeps_history_and_ends_on_eof(checkpoint, capsys):
    parser = argparse.ArgumentParser()
    chat_cli.add_arguments(parser)
    args = parser.parse_args([str(checkpoint), "-n", "4", "-t", "0"])
    lines = iter(["hello", "", "/reset", "again"])

    def fake_input(prompt):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    assert chat_cli.run(args, input_fn=fake_input) == 0
    out = capsys.readouterr()
    assert out.out.count("model> ") == 2 and "history cleared" in out.err


def test_generate_says_when_the_context_window_cuts_max_new_tokens(checkpoint, capsys):
    # The tiny model's context window is 128 tokens; "Hi" is 2 byte tokens, so 126 new ones fit.
    assert main(["generate", str(checkpoint), "-p", "Hi", "-n", "500", "-t", "0", "--no-stream"]) == 0
    notices = [line for line in capsys.readouterr().err.splitlines() if "context window" in line]
    assert len(notices) == 1
    assert "at most 126 new tokens" in notices[0] and "500" in notices[0] and "128" in notices[0]
    assert main(["generate", str(checkpoint), "-p", "Hi", "-n", "126", "-t", "0", "--no-stream"]) == 0
    assert "context window" not in capsys.readouterr().err


def test_json_schema_and_json_flags_answer_with_valid_json(checkpoint, tmp_path, capsys):
    pytest.importorskip("llguidance")
    import json

    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "maximum": 99}},
              "required": ["ok", "n"], "additionalProperties": False}
    (tmp_path / "s.json").write_text(json.dumps(schema))
    for seed in range(3):
        assert main(["generate", str(checkpoint), "-p", "Hi", "-n", "60", "-t", "1", "--seed", str(seed),
                     "--json-schema", str(tmp_path / "s.json")]) == 0
        answer = json.loads(capsys.readouterr().out)
        assert set(answer) == {"ok", "n"} and isinstance(answer["ok"], bool) and answer["n"] <= 99
    assert main(["generate", str(checkpoint), "-p", "Hi", "-n", "3", "--json", "--no-stream"]) == 0
    assert capsys.readouterr().out.startswith("{")
    (tmp_path / "bad.json").write_text("{not json")
    assert main(["generate", str(checkpoint), "-p", "x", "--json-schema", str(tmp_path / "bad.json")]) == 1
    assert "is not JSON" in capsys.readouterr().err
    assert main(["generate", str(checkpoint), "-p", "x", "--json", "--beams", "2"]) == 1
    assert "not with --beams" in capsys.readouterr().err
