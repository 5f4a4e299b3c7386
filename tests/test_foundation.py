"""The conventions every stage relies on: CLI dispatch, errors, atomic writes, progress log."""

import json
import os
import stat
import subprocess
import sys

import pytest

from llmlab.cli import COMMANDS, main
from llmlab.errors import InputError, LlmlabError
from llmlab.files import atomic_path, atomic_write, write_json
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


@pytest.mark.parametrize("writer", ["atomic_write", "atomic_path"])
def test_atomic_writes_reach_the_disk_before_the_rename(tmp_path, monkeypatch, writer):
    """The file's data is fsynced before it replaces the old one, and the directory entry after."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))) or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append(("replace", str(b))) or real_replace(a, b))
    path = tmp_path / "out.txt"
    if writer == "atomic_write":
        with atomic_write(path) as f:
            f.write("hello")
    else:
        with atomic_path(path) as tmp:
            tmp.write_text("hello")
    kinds = [kind for kind, _ in events]
    assert kinds == ["fsync", "replace", "fsync"], events
    assert events[0][1].startswith(str(tmp_path / ".out.txt.")) and events[2][1] == str(tmp_path)
    assert path.read_text() == "hello"


def test_written_files_get_the_usual_permissions_not_a_temporary_files(tmp_path):
    umask = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {})
        with atomic_path(tmp_path / "b.png") as tmp:
            tmp.write_bytes(b"png")
    finally:
        os.umask(umask)
    for name in ("a.json", "b.png"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


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
