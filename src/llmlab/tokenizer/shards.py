"""Token shards: documents encoded once into flat binary files that training memory-maps.

Layout of a shard directory (docs/design.md, "Token shards")::

    meta.json          {"format": "llmlab-shards-v1", "dtype": "uint16", "vocab_size": 8192, "eos_id": ...,
                        "tokenizer_sha256": "...", "documents": N, "tokens": T,
                        "shards": [{"file": "shard_00000.bin", "tokens": ..., "documents": ...}, ...]}
    shard_00000.bin    raw little-endian token ids of `dtype`
    ...

A copy of the tokenizer is saved beside them as `tokenizer.json` (its sha256 is in meta.json).

Every document is *preceded* by `eos_id` (`<|endoftext|>`), so each shard starts with it and a model
learns where documents begin. A document never straddles two shards. Ids are `uint16` when the
vocabulary fits (vocab_size <= 65,536), else `uint32`. Documents are encoded with `encode_ordinary`:
a literal "<|endoftext|>" inside a web page is text, not a delimiter.

Writing runs the encoder in worker processes (one per core by default) over batches of documents, in
order, so the output does not depend on the number of workers. Files appear under temporary names and
`meta.json` is written last, atomically: a directory with a `meta.json` is complete.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing as mp
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from llmlab.errors import CheckpointError, ConfigError, InputError
from llmlab.files import write_json
from llmlab.tokenizer import tokenizer_from_dict

FORMAT = "llmlab-shards-v1"
DEFAULT_SHARD_TOKENS = 100_000_000  # 200 MB of uint16 per file
_BATCH_DOCS = 256


@dataclass
class ShardSet:
    """A shard directory opened for reading: `meta` (the JSON) and one read-only memmap per shard."""

    meta: dict
    arrays: list[np.memmap]
    directory: Path

    @property
    def tokens(self) -> int:
        return int(self.meta["tokens"])

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def eos_id(self) -> int:
        return int(self.meta["eos_id"])

    def __len__(self) -> int:
        return len(self.arrays)


def dtype_for(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 2**16 else "uint32"


# ---- documents in ---------------------------------------------------------------------------------


def iter_documents(paths: Iterable[str | os.PathLike], text_field: str = "text") -> Iterator[str]:
    """Documents from files: `.txt`/`.md` (one document per file), `.jsonl` (one per line, field
    `text_field`), `.parquet` (column `text_field`). Directories are walked in sorted order."""
    for path in paths:
        path = Path(path)
        if path.is_dir():
            yield from iter_documents(sorted(p for p in path.rglob("*") if p.is_file()), text_field)
            continue
        if not path.exists():
            raise InputError(f"input file {path} does not exist")
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            yield from _parquet_documents(path, text_field)
        elif suffix in (".jsonl", ".json"):
            with open(path, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        text = json.loads(line)[text_field]
                    except (json.JSONDecodeError, KeyError, TypeError):
                        raise InputError(
                            f"{path}:{lineno}: not a JSON object with a {text_field!r} field",
                            hint="JSONL input needs one object per line, e.g. {\"text\": \"...\"}",
                        ) from None
                    if isinstance(text, str):
                        yield text
        else:
            yield path.read_text(encoding="utf-8", errors="replace")


def _parquet_documents(path: Path, text_field: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise InputError(f"{path} is not a readable Parquet file: {e}") from None
    if text_field not in pf.schema_arrow.names:
        raise InputError(
            f"{path} has no column {text_field!r} (columns: {pf.schema_arrow.names})",
            hint="pass --text-field with the name of the text column",
        )
    for batch in pf.iter_batches(columns=[text_field], batch_size=1024):
        for text in batch.column(0).to_pylist():
            if text is not None:
                yield text


# ---- encoding in worker processes -----------------------------------------------------------------

_worker_tokenizer = None


def _init_worker(tokenizer_dict: dict) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer_from_dict(tokenizer_dict)


def _encode_batch(tokenizer, docs: list[str], eos_id: int, dtype: str) -> tuple[np.ndarray, int]:
    pieces = []
    eos = np.array([eos_id], dtype=dtype)
    encode = getattr(tokenizer, "encode_ordinary_batch", None)
    encoded = encode(docs, num_threads=1) if encode else [tokenizer.encode_ordinary(d) for d in docs]
    for ids in encoded:
        pieces.append(eos)
        pieces.append(np.asarray(ids, dtype=dtype))
    return (np.concatenate(pieces) if pieces else np.zeros(0, dtype=dtype)), len(docs)


def _worker_encode(args: tuple[list[str], int, str]) -> tuple[bytes, int, int]:
    docs, eos_id, dtype = args
    arr, n = _encode_batch(_worker_tokenizer, docs, eos_id, dtype)
    return arr.tobytes(), len(arr), n


def _batches(documents: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(documents)
    while batch := list(itertools.islice(it, size)):
        yield batch


# ---- writing --------------------------------------------------------------------------------------


def write_shards(
    documents: Iterable[str],
    tokenizer,
    out_dir: str | os.PathLike,
    *,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    workers: int | None = None,
    dtype: str | None = None,
    progress: bool = True,
    total_documents: int | None = None,
) -> dict:
    """Encode `documents` into shards in `out_dir`; returns the meta dict (also written to meta.json).

    `workers`: encoder processes (default: all cores; small inputs are encoded in-process).
    `dtype`: "uint16" or "uint32" (default: the smallest that holds every id).
    """
    from llmlab.progress import Progress

    eos_id = tokenizer.eos_id
    if eos_id is None:
        raise ConfigError(
            "the tokenizer has no <|endoftext|> token to put between documents",
            hint="train it with the default special tokens or add <|endoftext|>",
        )
    vocab_size = tokenizer.vocab_size
    dtype = dtype or dtype_for(vocab_size)
    if dtype not in ("uint16", "uint32"):
        raise ConfigError(f"dtype must be uint16 or uint32, not {dtype!r}")
    if dtype == "uint16" and vocab_size > 2**16:
        raise ConfigError(f"vocab_size {vocab_size} does not fit uint16", hint="use dtype uint32")
    if shard_tokens <= 0:
        raise ConfigError("shard_tokens must be positive")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "meta.json").unlink(missing_ok=True)  # the directory is incomplete until meta.json is back

    workers = workers or os.cpu_count() or 1
    batches = _batches(documents, _BATCH_DOCS)
    first = next(batches, [])
    second = next(batches, None)
    pool = None
    if workers > 1 and second is not None:
        # spawn, not fork: the parent may hold tiktoken/torch threads, which fork does not copy safely.
        pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(tokenizer.to_dict(),))
        jobs = ((b, eos_id, dtype) for b in itertools.chain([first, second], batches))
        results = pool.imap(_worker_encode, jobs, chunksize=1)
    else:
        chain = itertools.chain([first], [second] if second is not None else [], batches)
        results = (
            (arr.tobytes(), len(arr), n)
            for arr, n in (_encode_batch(tokenizer, b, eos_id, dtype) for b in chain if b)
        )

    shards: list[dict] = []
    current = None
    total_tokens = total_docs = 0
    itemsize = np.dtype(dtype).itemsize

    def open_shard():
        index = len(shards)
        name = f"shard_{index:05d}.bin"
        shards.append({"file": name, "tokens": 0, "documents": 0})
        return open(out_dir / f".{name}.tmp", "wb")

    try:
        with Progress(total=total_documents, desc="encode shards", unit="doc", disable=None if progress else True) as bar:
            for data, n_tokens, n_docs in results:
                if n_docs == 0:
                    continue
                if current is None or (shards[-1]["tokens"] > 0 and shards[-1]["tokens"] + n_tokens > shard_tokens):
                    if current is not None:
                        current.close()
                    current = open_shard()
                current.write(data)
                shards[-1]["tokens"] += n_tokens
                shards[-1]["documents"] += n_docs
                total_tokens += n_tokens
                total_docs += n_docs
                bar.update(n_docs, tokens=total_tokens)
    finally:
        if current is not None:
            current.close()
        if pool is not None:
            pool.terminate()
    for s in shards:
        tmp = out_dir / f".{s['file']}.tmp"
        assert tmp.stat().st_size == s["tokens"] * itemsize
        os.replace(tmp, out_dir / s["file"])
    for stale in out_dir.glob("shard_*.bin"):  # left by an earlier, larger run into the same directory
        if stale.name not in {s["file"] for s in shards}:
            stale.unlink()
    meta = {
        "format": FORMAT,
        "dtype": dtype,
        "vocab_size": vocab_size,
        "eos_id": eos_id,
        "tokenizer_sha256": tokenizer.sha256,
        "documents": total_docs,
        "tokens": total_tokens,
        "shards": shards,
    }
    tokenizer.save(out_dir / "tokenizer.json")  # the exact tokenizer travels with its shards
    write_json(out_dir / "meta.json", meta)
    return meta


# ---- reading --------------------------------------------------------------------------------------


def read_shards(directory: str | os.PathLike) -> ShardSet:
    """Open a shard directory: validates meta.json and file sizes, memory-maps each shard read-only."""
    directory = Path(directory)
    meta_path = directory / "meta.json"
    hint = f"(re)create it with `llmlab tokenizer shards ... --out {directory}`"
    if not meta_path.exists():
        raise CheckpointError(f"no token shards in {directory}: meta.json is missing", hint=hint)
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{meta_path} is not valid JSON ({e})", hint=hint) from None
    required = ("format", "dtype", "vocab_size", "eos_id", "tokens", "shards")
    missing = [k for k in required if k not in meta] if isinstance(meta, dict) else list(required)
    if missing:
        raise CheckpointError(f"{meta_path} lacks {missing}", hint=hint)
    if meta["format"] != FORMAT:
        raise CheckpointError(f"{meta_path} has format {meta['format']!r}, expected {FORMAT!r}", hint=hint)
    if meta["dtype"] not in ("uint16", "uint32"):
        raise CheckpointError(f"{meta_path} has dtype {meta['dtype']!r}; expected uint16 or uint32", hint=hint)
    dtype = np.dtype(meta["dtype"]).newbyteorder("<")
    arrays = []
    for s in meta["shards"]:
        path = directory / s["file"]
        if not path.exists():
            raise CheckpointError(f"shard {path} listed in meta.json is missing", hint=hint)
        expected = int(s["tokens"]) * dtype.itemsize
        size = path.stat().st_size
        if size != expected:
            raise CheckpointError(
                f"shard {path} has {size} bytes, but meta.json says {s['tokens']} tokens ({expected} bytes): "
                "it is truncated or from another run",
                hint=hint,
            )
        if expected == 0:
            arrays.append(np.zeros(0, dtype=dtype))
        else:
            arrays.append(np.memmap(path, dtype=dtype, mode="r"))
    return ShardSet(meta=meta, arrays=arrays, directory=directory)
