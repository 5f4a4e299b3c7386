"""Pre-split patterns: the regexes that cut text into pieces before BPE runs inside each piece.

BPE never merges across a piece boundary, so a pattern decides which tokens can exist at all: GPT-2's
keeps a leading space with the word (" the"), splits contractions, and keeps digits apart from
letters; GPT-4's (cl100k_base) also caps number pieces at three digits and lets a run of newlines be
one piece. The strings are tiktoken's, so the `regex` module and tiktoken's Rust engine split alike.
"""

from __future__ import annotations

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""

GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)

O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)

# The same two patterns without possessive quantifiers ("++", "?+"). Each possessive above guards a
# part that can never give characters back usefully (its character class is disjoint from what
# follows, or nothing follows), so greedy and possessive split every text identically; but the Rust
# regex engine behind tiktoken and rustbpe (fancy-regex) runs the greedy form markedly faster, since
# it can hand more of it to its automaton. Tests check the equivalence on real text and on random
# unicode. Saved files and exports keep the canonical pattern; only execution uses these.
GPT2_PATTERN_FAST = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+$|\s+(?!\S)|\s"""
GPT4_PATTERN_FAST = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s+$|\s*[\r\n]|\s+(?!\S)|\s"""
)
_FAST_EQUIVALENT = {GPT2_PATTERN: GPT2_PATTERN_FAST, GPT4_PATTERN: GPT4_PATTERN_FAST}


def fast_equivalent(pattern: str) -> str:
    """The fastest-running pattern known to split exactly like `pattern` (itself if none is known)."""
    return _FAST_EQUIVALENT.get(pattern, pattern)


# What `llmlab tokenizer train` uses unless told otherwise.
DEFAULT_PATTERN = GPT4_PATTERN

PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN, "cl100k": GPT4_PATTERN, "o200k": O200K_PATTERN}


def resolve_pattern(name_or_regex: str) -> str:
    """A pattern by name (`gpt2`, `gpt4`, `o200k`) or a regex given literally."""
    return PATTERNS.get(name_or_regex, name_or_regex)
