"""Structured output: decode only tokens that keep the text a valid prefix of a grammar's language.

    JSON schema or tool list -> a grammar (llguidance's Lark dialect; JSON Schema compiles into a
                                context-free grammar over bytes)
    each step:  the sequence's grammar state -> the allowed next tokens (a bitmask over the vocabulary)
                -> disallowed logits = -inf before sampling -> the sampled token advances the state

Because every sampled token keeps the text a valid prefix, the finished text parses and validates by
construction, whatever the model; only `max_new_tokens` can cut it short (finish_reason "length"). End
tokens are allowed only where the text is complete, and the sequence stops by itself once the grammar
can take nothing more (after the closing brace).

Two kinds of grammar are built here: JSON matching a schema (`json_grammar`, for `response_format`) and
tool calls in the chat template's format (`tool_call_grammar`, for `tools`): the call's JSON must name
one of the tools and carry arguments matching that tool's parameter schema.

Why llguidance (docs/inference.md has the figures): it ships a dependency-free CPU wheel, compiles a
schema in under a millisecond (outlines-core builds a regex index over the whole vocabulary first,
and a regex cannot describe JSON of any depth, which `{"type": "json_object"}` needs), and computes a
mask in tens of microseconds per step, next to a decoding step's milliseconds. xgrammar needs triton.
"""

from __future__ import annotations

import importlib.util
import json
import weakref
from typing import Any

import numpy as np
import torch

from llmlab.errors import ConfigError
from llmlab.tokenizer.chat_tools import CALL_CLOSE, CALL_OPEN

# Any JSON object: what OpenAI's `response_format: {"type": "json_object"}` asks for.
ANY_OBJECT: dict[str, Any] = {"type": "object"}

# The JSON's layout: no free whitespace (a random or unsure model could otherwise pad forever) and
# Python's json.dumps separators, the spacing models have seen most.
LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}

# The same layout inside a larger grammar, where a `%json` block carries its own options.
_LAYOUT_KEY = "x-guidance"

_grammar_tokenizers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def grammars_available() -> bool:
    """True when llguidance is installed (the `structured` extra); tool calls are constrained only then."""
    return importlib.util.find_spec("llguidance") is not None


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


def closed(schema: Any) -> Any:
    """`schema` with `additionalProperties: false` on each object that lists properties and does not say.

    JSON Schema allows unlisted keys by default, and a small model invents them (and loops on them); a
    tool call should carry the parameters the tool declares, as OpenAI's strict mode demands."""
    if isinstance(schema, list):
        return [closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: closed(v) if k != "const" and k != "enum" and k != "default" else v for k, v in schema.items()}
    if "properties" in schema and "additionalProperties" not in schema:
        out["additionalProperties"] = False
    return out


def _parameters(tool: dict[str, Any]) -> dict[str, Any]:
    fn = tool["function"]
    parameters = fn.get("parameters") or {"type": "object", "properties": {}}
    if not isinstance(parameters, dict):
        raise ConfigError(f"the parameters of tool '{fn['name']}' are not a JSON schema object")
    return closed(parameters)


def _call_schema(tools: list[dict[str, Any]]) -> dict[str, Any]:
    """One call's JSON, {"name": <a tool's name>, "arguments": <that tool's parameters>}, as a JSON schema."""
    choices = []
    for tool in tools:
        fn, parameters = tool["function"], _parameters(tool)
        choices.append({"type": "object", "properties": {"name": {"const": fn["name"]}, "arguments": parameters},
                        "required": ["name", "arguments"], "additionalProperties": False})
    return {"anyOf": choices, _LAYOUT_KEY: LAYOUT}


def tool_call_grammar(tools: list[dict[str, Any]], mode: str, parallel: bool = True) -> str:
    """The grammar of an answer that calls `tools` (OpenAI's {"type": "function", "function": {...}} objects)
    in the chat template's `<tool_call>` format, given what the answer already holds:

    - "auto": nothing; free text, in which each `<tool_call>` the model opens must become a whole, valid
      call (a lazy trigger: the text around the calls is unconstrained);
    - "required": `<tool_call>\\n`; one or more calls follow, nothing else;
    - "named": `<tool_call>\\n{"name": "NAME", "arguments": ` for the one tool in `tools`; its arguments
      and the call's end follow.

    `parallel=False` (OpenAI's `parallel_tool_calls: false`) allows one call, and the answer ends with it.
    """
    close = json.dumps("\n" + CALL_CLOSE)  # Lark string literals are written as JSON strings
    call = f"%json {json.dumps(_call_schema(tools))} {close}"
    if mode == "auto":
        opening = json.dumps(CALL_OPEN + "\n")
        start = "call* TEXT" if parallel else "TEXT | call"
        return (f"%llguidance {{}}\nstart: {start}\nTEXT: /(.|\\n)*/\n"
                f"opening[lazy]: TEXT {opening}\ncall: opening {call}\n")
    if mode == "required":
        between = json.dumps("\n" + CALL_OPEN + "\n")
        start = f"call ({between} call)*" if parallel else "call"
        return f"%llguidance {{}}\nstart: {start}\ncall: {call}\n"
    if mode == "named" and len(tools) == 1:
        end = json.dumps("}\n" + CALL_CLOSE)
        return f"%llguidance {{}}\nstart: %json {json.dumps({**_parameters(tools[0]), _LAYOUT_KEY: LAYOUT})} {end}\n"
    raise ValueError(f"tool_call_grammar: mode {mode!r} with {len(tools)} tools")


class GrammarConstraint:
    """One sequence's place in `grammar`: which tokens may come next, and advancing on one.

    ConfigError when the grammar (or a JSON schema in it) uses something llguidance does not support
    (its message names it).
    """

    def __init__(self, tokenizer: Any, grammar: str, end_ids: set[int] | frozenset[int]) -> None:
        if tokenizer is None:
            raise ConfigError("constrained output needs the model's tokenizer: the grammar is over its tokens' bytes")
        self.end_ids = frozenset(end_ids)
        self.vocab_size = tokenizer.vocab_size
        self.matcher = _llguidance().LLMatcher(grammar_tokenizer(tokenizer, self.end_ids), grammar, log_level=0)
        if self.matcher.is_error():
            raise ConfigError(f"the output grammar is not supported: {self.matcher.get_error()}")

    @property
    def finished(self) -> bool:
        """The text is complete and nothing can follow it (or an end token was taken)."""
        return self.matcher.is_stopped()

    def fill_mask(self, words: torch.Tensor) -> None:
        """Write the allowed next tokens into `words`, a contiguous CPU int32 row of mask_words(vocab) words:
        bit i % 32 of word i // 32 is set when token i may come next."""
        self.matcher.unsafe_compute_mask_ptr(words.data_ptr(), words.numel() * 4)
        if self.matcher.is_error():
            raise ConfigError(f"the output grammar failed: {self.matcher.get_error()}")

    def allowed(self, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The allowed next tokens as a bool tensor (width,) over the model's logits."""
        return allowed_tokens([self], width, device)[0]

    def advance(self, token: int) -> None:
        """Take the sampled token; a token the mask did not allow is a bug in the caller (RuntimeError)."""
        if not self.matcher.consume_token(token):
            raise RuntimeError(f"token {token} does not continue the grammar: {self.matcher.get_error()}")


def json_constraint(tokenizer: Any, schema: dict[str, Any], end_ids: set[int] | frozenset[int]) -> GrammarConstraint:
    """A constraint to JSON matching `schema`."""
    return GrammarConstraint(tokenizer, json_grammar(schema), end_ids)


def mask_words(vocab_size: int) -> int:
    """32-bit words in one row of a token bitmask."""
    return (vocab_size + 31) // 32


def allowed_tokens(constraints: list[GrammarConstraint], width: int, device: torch.device | str) -> torch.Tensor:
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
