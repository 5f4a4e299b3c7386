"""Structured output: decode only tokens that keep the text a valid prefix of JSON matching a schema.

    schema -> a grammar (llguidance compiles JSON Schema into a context-free grammar over bytes)
    each step:  the sequence's grammar state -> the allowed next tokens (a bitmask over the vocabulary)
                -> disallowed logits = -inf before sampling -> the sampled token advances the state

Because every sampled token keeps the text a valid prefix, the finished text parses and validates by
construction, whatever the model; only `max_new_tokens` can cut it short (finish_reason "length"). End
tokens are allowed only where the JSON is complete, and the sequence stops by itself once the grammar
can take nothing more (after the closing brace).

Why llguidance (docs/inference.md has the figures): it ships a dependency-free CPU wheel, compiles a
schema in under a millisecond (outlines-core builds a regex index over the whole vocabulary first,
and a regex cannot describe JSON of any depth, which `{"type": "json_object"}` needs), and computes a
mask in tens of microseconds per step, next to a decoding step's milliseconds. xgrammar needs triton.
"""

from __future__ import annotations

import json
import weakref
from typing import Any

import numpy as np
import torch

from llmlab.errors import ConfigError

# Any JSON object: what OpenAI's `response_format: {"type": "json_object"}` asks for.
ANY_OBJECT: dict[str, Any] = {"type": "object"}

# The JSON's layout: no free whitespace (a random or unsure model could otherwise pad forever) and
# Python's json.dumps separators, the spacing models have seen most.
LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}

_grammar_tokenizers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _llguidance() -> Any:
    try:
        import llguidance
    except ImportError as e:
        raise ConfigError("JSON output needs the `llguidance` package",
                          hint="pip install 'llmlab[structured]' (or pip install llguidance)") from e
    return llguidance


class _TokenizerView:
    """What llguidance reads from a tokenizer: each id's bytes, the special ids, end ids and an encoder."""

    def __init__(self, tokenizer: Any, end_ids: frozenset[int]) -> None:
        self.tokens = [tokenizer.token_bytes(i) for i in range(tokenizer.vocab_size)]
        self.special_token_ids = sorted(tokenizer.special_tokens.values())
        self.eos_token_id = min(end_ids)
        self.bos_token_id = None
        self._encode = tokenizer.encode_ordinary

    def __call__(self, text: str | bytes) -> list[int]:
        return self._encode(text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text)


def grammar_tokenizer(tokenizer: Any, end_ids: set[int] | frozenset[int]) -> Any:
    """llguidance's view of `tokenizer` (built once per tokenizer and set of end ids: it walks the vocabulary)."""
    if not end_ids:
        raise ConfigError("JSON output needs a tokenizer with an end-of-text token, to end where the JSON ends")
    end_ids = frozenset(end_ids)
    per_tokenizer = _grammar_tokenizers.setdefault(tokenizer, {})
    if end_ids not in per_tokenizer:
        llguidance = _llguidance()
        view = llguidance.TokenizerWrapper(_TokenizerView(tokenizer, end_ids))
        per_tokenizer[end_ids] = llguidance.LLTokenizer(view, eos_token=sorted(end_ids))
    return per_tokenizer[end_ids]


def json_grammar(schema: dict[str, Any]) -> str:
    """The llguidance grammar of a JSON schema in LAYOUT; ConfigError for something that is not a schema object."""
    if not isinstance(schema, dict):
        raise ConfigError(f"a JSON schema is a JSON object, got {type(schema).__name__}")
    try:
        return _llguidance().LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults=LAYOUT)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"the JSON schema cannot be read: {e}") from e


class JsonConstraint:
    """One sequence's place in the grammar of `schema`: which tokens may come next, and advancing on one.

    ConfigError when the schema uses something llguidance does not support (its message names it).
    """

    def __init__(self, tokenizer: Any, schema: dict[str, Any], end_ids: set[int] | frozenset[int]) -> None:
        if tokenizer is None:
            raise ConfigError("JSON output needs the model's tokenizer: the grammar is over its tokens' bytes")
        self.end_ids = frozenset(end_ids)
        self.vocab_size = tokenizer.vocab_size
        self.matcher = _llguidance().LLMatcher(grammar_tokenizer(tokenizer, self.end_ids), json_grammar(schema),
                                            log_level=0)
        if self.matcher.is_error():
            raise ConfigError(f"the JSON schema is not supported: {self.matcher.get_error()}")

    @property
    def finished(self) -> bool:
        """The JSON is complete and nothing can follow it (or an end token was taken)."""
        return self.matcher.is_stopped()

    def fill_mask(self, words: torch.Tensor) -> None:
        """Write the allowed next tokens into `words`, a contiguous CPU int32 row of mask_words(vocab) words:
        bit i % 32 of word i // 32 is set when token i may come next."""
        self.matcher.unsafe_compute_mask_ptr(words.data_ptr(), words.numel() * 4)
        if self.matcher.is_error():
            raise ConfigError(f"the JSON grammar failed: {self.matcher.get_error()}")

    def allowed(self, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The allowed next tokens as a bool tensor (width,) over the model's logits."""
        return allowed_tokens([self], width, device)[0]

    def advance(self, token: int) -> None:
        """Take the sampled token; a token the mask did not allow is a bug in the caller (RuntimeError)."""
        if not self.matcher.consume_token(token):
            raise RuntimeError(f"token {token} does not continue the JSON: {self.matcher.get_error()}")


def mask_words(vocab_size: int) -> int:
    """32-bit words in one row of a token bitmask."""
    return (vocab_size + 31) // 32


def allowed_tokens(constraints: list[JsonConstraint], width: int, device: torch.device | str) -> torch.Tensor:
    """Each constraint's allowed next tokens, as bool rows (len(constraints), width) on `device`.

    The bitmasks are computed on the host into one int32 tensor and unpacked there with numpy (one
    single-threaded pass; torch's elementwise ops on this small tensor were 100x slower on a busy CPU),
    then moved to the device as one tensor. Ids past the tokenizer's vocabulary (a model whose embedding
    is padded) are never allowed.
    """
    vocab = constraints[0].vocab_size  # one model's batch: one tokenizer
    words = torch.empty((len(constraints), mask_words(vocab)), dtype=torch.int32)
    for row, constraint in zip(words, constraints):
        constraint.fill_mask(row)
    # Little-endian words, little-endian bit order: bit j of word i is token 32 * i + j.
    bits = np.unpackbits(words.numpy().view(np.uint8), axis=1, bitorder="little").view(bool)
    allowed = torch.from_numpy(bits[:, :vocab])
    if vocab < width:
        allowed = torch.nn.functional.pad(allowed, (0, width - vocab), value=False)
    return allowed[:, :width].to(device)
