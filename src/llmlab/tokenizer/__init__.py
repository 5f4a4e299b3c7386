"""Tokenizers: char-level, word-level and byte-level BPE (tiktoken-exact), plus token shards.

    from llmlab.tokenizer import load_tokenizer, train_bpe
    tok = train_bpe(texts, vocab_size=8192)          # byte-level BPE, GPT-4 pre-split, 5 special tokens
    tok.save("tokenizer.json"); tok = load_tokenizer("tokenizer.json")
    ids = tok.encode("Hello <|endoftext|>", allowed_special="all"); tok.decode(ids)
    gpt2 = load_tokenizer("gpt2"); cl100k = load_tokenizer("cl100k_base")

One idea per file: `base` (interface, special tokens), `bpe_encode` (pure-Python reference encoder),
`bpe_train` (reference trainer), `bpe_fast` (fast trainer), `bpe` (the BPE `Tokenizer` and
`train_bpe`), `char`, `word`, `patterns`, `bytelevel`, `pretrained` (GPT-2 / .tiktoken files), `hf`
(tokenizer.json), `shards`, `compare`. They import each other one way only, at the top of the file
(base -> bpe_encode -> bpe_train -> bpe_fast -> bpe); `load_tokenizer` loads `hf` and `pretrained`
when a file needs them. The file formats are documented in docs/tokenizer.md.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from llmlab.errors import InputError
from llmlab.tokenizer.base import (
    DEFAULT_SPECIAL_TOKENS,
    EOS_TOKEN,
    FORMAT,
    BaseTokenizer,
    DisallowedSpecialError,
)
from llmlab.tokenizer.bpe import Tokenizer, train_bpe
from llmlab.tokenizer.char import CharTokenizer
from llmlab.tokenizer.word import WordTokenizer

__all__ = [
    "BaseTokenizer",
    "CharTokenizer",
    "DEFAULT_SPECIAL_TOKENS",
    "DisallowedSpecialError",
    "EOS_TOKEN",
    "Tokenizer",
    "WordTokenizer",
    "load_tokenizer",
    "tokenizer_from_dict",
    "train_bpe",
]

PRETRAINED = ("gpt2", "cl100k_base", "o200k_base")
_TYPES = {"bpe": Tokenizer, "char": CharTokenizer, "word": WordTokenizer}


def tokenizer_from_dict(d: dict, where: str = "tokenizer") -> BaseTokenizer:
    """A tokenizer from the content of an llmlab tokenizer JSON file."""
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise InputError(f"{where} is not an llmlab tokenizer (no \"format\": \"{FORMAT}\")")
    if d.get("version") != 1:
        raise InputError(f"{where} has format version {d.get('version')!r}; this llmlab reads version 1",
                         hint="upgrade llmlab or re-train the tokenizer")
    cls = _TYPES.get(d.get("type"))
    if cls is None:
        raise InputError(f"{where} has unknown tokenizer type {d.get('type')!r}; expected one of {sorted(_TYPES)}")
    try:
        return cls.from_dict(d)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"{where} is malformed: {type(e).__name__}: {e}",
                         hint="the file may be truncated or edited by hand; re-create it") from None


def load_tokenizer(path: str | os.PathLike, **kwargs) -> BaseTokenizer:
    """Load any tokenizer llmlab knows, by path or name:

    - an llmlab `tokenizer.json` (the format `save` writes; see docs/tokenizer.md);
    - a Hugging Face `tokenizer.json` (byte-level BPE);
    - a `.tiktoken` / `.tiktoken.gz` mergeable-ranks file (cl100k_base/o200k_base get their pattern and
      special tokens from the file name; pass `pattern=`/`special_tokens=` for others);
    - GPT-2's `encoder.json` (with `vocab.bpe` beside it), or a directory holding either layout;
    - the names `gpt2`, `cl100k_base`, `o200k_base` (files from the packages that ship them).
    """
    from llmlab.tokenizer import hf, pretrained

    if isinstance(path, str) and path in PRETRAINED and not Path(path).exists():
        return pretrained.load_pretrained(path)
    path = Path(path)
    if path.is_dir():
        for candidate in ("tokenizer.json", "encoder.json"):
            if (path / candidate).exists():
                return load_tokenizer(path / candidate, **kwargs)
        raise InputError(f"{path} holds no tokenizer.json or encoder.json")
    if not path.exists():
        raise InputError(f"tokenizer file {path} does not exist",
                         hint="train one with `llmlab tokenizer train`, or name gpt2 / cl100k_base / o200k_base")
    if path.name.endswith((".tiktoken", ".tiktoken.gz")):
        return pretrained.load_tiktoken_file(path, **kwargs)
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path} is not a text file",
                         hint="expected JSON (llmlab or Hugging Face) or a .tiktoken file") from None
    if not raw.strip():
        raise InputError(f"tokenizer file {path} is empty", hint="it was probably cut off while writing; re-create it")
    try:
        d = json.loads(raw)
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})",
                         hint="the file is truncated or corrupt; re-create it") from None
    if isinstance(d, dict) and d.get("format") == FORMAT:
        return tokenizer_from_dict(d, str(path))
    if isinstance(d, dict) and isinstance(d.get("model"), dict):
        return hf.from_hf_dict(d, str(path))
    if isinstance(d, dict) and (path.parent / "vocab.bpe").exists():
        return pretrained.load_gpt2(path, path.parent / "vocab.bpe")
    raise InputError(f"{path} is JSON but not a tokenizer llmlab knows",
                     hint="expected llmlab tokenizer JSON, Hugging Face tokenizer.json, or GPT-2 encoder.json")
