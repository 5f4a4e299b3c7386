"""Hugging Face `tokenizer.json` export and import for byte-level BPE.

Export writes a `tokenizers` BPE model with GPT-2's byte-level alphabet, the merges recovered from
the ranks, `ignore_merges: true` (a piece that is itself a token is kept whole, as tiktoken does) and
a pre-tokenizer `Split(pattern) -> ByteLevel`, the pattern spelled for Oniguruma (`onig_pattern`). `tokenizers.Tokenizer.from_file` and
`transformers.PreTrainedTokenizerFast(tokenizer_file=...)` then encode as llmlab does.

Import reads such files back, including the common layouts of released models:
- `ByteLevel(use_regex=true)` alone (GPT-2, RoBERTa): GPT-2's pattern;
- `Split(Regex) + ByteLevel(use_regex=false)` (Llama 3, Qwen2, GPT-4-style): that regex;
- `Digits(individual_digits=true) + ByteLevel(use_regex=true)` (SmolLM, StarCoder): GPT-2's pattern
  rewritten so that every digit is a piece of its own and a piece boundary falls before each digit.
Added tokens become special tokens. Other layouts (SentencePiece-style Metaspace, normalizers) are
refused with a message rather than imported approximately.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from llmlab.errors import InputError
from llmlab.files import write_json
from llmlab.tokenizer.bpe import Tokenizer
from llmlab.tokenizer.bytelevel import bytes_to_text
from llmlab.tokenizer.patterns import GPT2_PATTERN, GPT4_PATTERN, O200K_PATTERN

# GPT-2's pattern after a Digits(individual_digits=True) split: digits are single pieces, and the
# end of a piece (where "$" and "(?!\S)" look) also comes right before a digit.
GPT2_DIGITS_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++|\p{N}| ?[^\s\p{L}\p{N}]++|\s++(?=\p{N}|$)|\s+(?![^\s\p{N}])|\s"""
)


def onig_pattern(pattern: str) -> str:
    """`pattern` as Hugging Face's regex engine (Oniguruma, Ruby syntax) must read it to split alike.

    Oniguruma reads tiktoken's possessive `\\p{N}{1,3}+` as "one or more groups of one to three digits",
    which joins long digit runs; the greedy `\\p{N}{1,3}` splits like the possessive (nothing after it
    could take the digits back). The other possessives (`?+`, `++`, `*+`) mean the same in both, and
    must stay: Oniguruma's `$` also matches before a newline, so a greedy `\\s+$` would split differently.
    """
    return pattern.replace(r"\p{N}{1,3}+", r"\p{N}{1,3}")


def to_hf_dict(tok: Tokenizer) -> dict:
    """The `tokenizer.json` content for a byte-level BPE `Tokenizer`."""
    vocab = {bytes_to_text(t): i for t, i in sorted(tok.mergeable_ranks.items(), key=lambda kv: kv[1])}
    # Special tokens go in the vocabulary too: HF gives an added token absent from it the next free id.
    vocab.update(tok.special_tokens)
    decoder = tok._decoder
    merges = [[bytes_to_text(decoder[a]), bytes_to_text(decoder[b])] for a, b in tok.merges]
    added = [
        {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
        for t, i in sorted(tok.special_tokens.items(), key=lambda kv: kv[1])
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": onig_pattern(tok.pattern)}, "behavior": "Isolated",
                 "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
            ],
        },
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": True,
            "vocab": vocab,
            "merges": merges,
        },
    }


def save_hf(tok: Tokenizer, path: str | os.PathLike) -> None:
    """Write `tok` as a Hugging Face `tokenizer.json`."""
    write_json(path, to_hf_dict(tok), indent=None)


def _pattern_from_pre_tokenizer(pre: dict | None, where: str) -> str:
    if pre is None:
        raise InputError(f"{where} has no pre_tokenizer; llmlab imports byte-level BPE tokenizers only")
    steps = pre["pretokenizers"] if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        if steps[0].get("add_prefix_space"):
            raise InputError(f"{where}: ByteLevel(add_prefix_space=true) is not supported")
        return GPT2_PATTERN
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        split = steps[0]
        regex = split.get("pattern", {}).get("Regex")
        if regex is None or split.get("behavior", "Isolated") != "Isolated" or split.get("invert"):
            raise InputError(f"{where}: only Split(Regex, behavior=Isolated) before ByteLevel is supported")
        return next((p for p in (GPT4_PATTERN, GPT2_PATTERN, O200K_PATTERN) if onig_pattern(p) == regex), regex)
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return GPT2_DIGITS_PATTERN
    raise InputError(
        f"{where}: pre-tokenizer {kinds} is not one llmlab can express as a single split pattern",
        hint="supported: ByteLevel, Split(Regex)+ByteLevel, Digits(individual)+ByteLevel",
    )


def from_hf_dict(d: dict, where: str = "tokenizer.json") -> Tokenizer:
    """A `Tokenizer` from the content of a Hugging Face byte-level BPE `tokenizer.json`."""
    model = d.get("model") or {}
    if model.get("type") != "BPE":
        raise InputError(f"{where}: model type {model.get('type')!r} is not BPE; llmlab imports byte-level BPE only")
    if d.get("normalizer") is not None:
        raise InputError(f"{where}: tokenizers with a normalizer are not supported")
    pattern = _pattern_from_pre_tokenizer(d.get("pre_tokenizer"), where)
    specials = {a["content"]: int(a["id"]) for a in d.get("added_tokens", [])}
    merges = model.get("merges") or []
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in merges]
    # Hugging Face drops bytes its vocabulary lacks; so does the import.
    return Tokenizer.from_byte_level_vocab(model["vocab"], merges, specials, pattern, name=Path(where).stem,
                                           missing_bytes="drop")


def load_hf(path: str | os.PathLike) -> Tokenizer:
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is not valid JSON ({e})", hint="the file may be truncated") from None
    return from_hf_dict(d, str(path))
