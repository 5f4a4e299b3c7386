"""The conventions every stage relies on: CLI dispatch, errors, atomic writes, progress log."""

import json
import subprocess
import sys

import pytest

from llmlab.cli import COMMANDS, main
from llmlab.errors import InputError, LlmlabError
from llmlab.files import atomic_write, write_json
from llmlab.progress import Progress, read_metrics


def test_every_stage_has_a_subcommand():
    for name in ("crawl", "clean", "tokenizer", "train", "sft", "generate", "chat", "eval", "serve",
                 "estimate", "quickstart"):
        assert name in COMMANDS


def test_each_subcommand_has_help(capsys):
    for name in COMMANDS:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        assert name in capsys.readouterr().out


def test_cli_entry_point_runs_as_module():
    out = subprocess.run([sys.executable, "-m", "llmlab", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "quickstart" in out.stdout


def test_error_carries_hint():
    e = InputError("tokenizer.json is truncated", hint="re-run `llmlab tokenizer train`")
    assert isinstance(e, LlmlabError)
    assert "hint: re-run" in str(e)


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "a.json"
    write_json(path, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f:
            f.write('{"v": 2')
            raise RuntimeError("killed mid-write")
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_progress_writes_metrics_jsonl(tmp_path):
    log = tmp_path / "m.jsonl"
    with Progress(total=3, desc="t", metrics_path=log, disable=True) as p:
        for i in range(3):
            p.update(1, step=i, loss=1.0 / (i + 1))
    with open(log, "a") as f:
        f.write('{"step": 3, "lo')  # torn line from a killed process
    records = read_metrics(log)
    assert [r["step"] for r in records] == [0, 1, 2]
    assert records[2]["loss"] == pytest.approx(1 / 3)
