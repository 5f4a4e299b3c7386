"""Retrieved passages put into a chat prompt, and the [n] citations of an answer mapped back to them.

The passages go in front of the last user turn, not into a system message: SmolLM2-135M-Instruct
follows its user turn far more than a system message (and a custom system message replaces the
default one it was tuned with), so the sources sit next to the question it answers. Each passage is
numbered by rank, `[n] title — url`, so the model can cite it as [n], and they are listed lowest-ranked
first, so the best passage, [1], sits right before the question: a small model draws most on the
text nearest the question. `docs/retrieval.md` has the measurements.
"""

from __future__ import annotations

import re
from typing import Callable, Mapping, Sequence

from llmlab.errors import InputError
from llmlab.retrieve.search import Passage

# "one short sentence" measured +3.5 chrF over the same wording without it (docs/retrieval.md).
INSTRUCTION = "Answer the question in one short sentence, using the sources below. Cite the sources you use as [1], [2]."
MIN_TRIMMED_TOKENS = 24  # a passage cut shorter than this tells the model nothing: drop it instead
_CITATION = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")


def format_passage(n: int, passage: Passage, text: str | None = None) -> str:
    return f"[{n}] {passage.title} — {passage.url}\n{passage.text if text is None else text}"


def _trim(text: str, fits: Callable[[str], bool], count_tokens: Callable[[str], int]) -> str | None:
    """The longest word prefix of `text` (marked with "...") that `fits`, or None if too little fits."""
    words = text.split()
    lo, hi = 0, len(words)
    while lo < hi:  # binary search on the number of words kept
        mid = (lo + hi + 1) // 2
        if fits(" ".join(words[:mid]) + " ..."):
            lo = mid
        else:
            hi = mid - 1
    kept = " ".join(words[:lo]) + " ..."
    return kept if lo and count_tokens(kept) >= MIN_TRIMMED_TOKENS else None


def rag_messages(messages: Sequence[Mapping[str, str]], passages: Sequence[Passage],
                 count_tokens: Callable[[str], int], budget_tokens: int,
                 instruction: str = INSTRUCTION) -> tuple[list[dict], list[Passage]]:
    """`messages` with the best passages put before the last user turn, adding at most `budget_tokens`.

    Passages are taken best first; the first that does not fit is trimmed to the room left (if enough
    remains) and the rest are dropped, so the lowest-ranked go first. Returns the new messages and the
    passages used, numbered [1], [2], ... in that order; the prompt lists them in reverse, so [1] is
    nearest the question. Without passages the messages are unchanged.
    """
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=None)
    if last_user is None:
        raise InputError("the conversation has no user turn to answer")
    question = messages[last_user]["content"]
    out = [dict(m) for m in messages]

    def prompt(blocks: list[str]) -> str:  # `blocks` best first; the best goes last, next to the question
        return f"{instruction}\n\n" + "\n\n".join(reversed(blocks)) + f"\n\nQuestion: {question}"

    def fits(blocks: list[str]) -> bool:  # the tokens added to the user turn stay within the budget
        return count_tokens(prompt(blocks)) - count_tokens(question) <= budget_tokens

    used: list[Passage] = []
    blocks: list[str] = []
    for passage in passages:
        n = len(used) + 1
        block = format_passage(n, passage)
        if fits(blocks + [block]):
            blocks.append(block)
            used.append(passage)
            continue
        trimmed = _trim(passage.text, lambda text: fits(blocks + [format_passage(n, passage, text)]), count_tokens)
        if trimmed is not None:
            blocks.append(format_passage(n, passage, trimmed))
            used.append(passage)
        break
    if used:
        out[last_user]["content"] = prompt(blocks)
    return out, used


def cited_passages(answer: str, passages: Sequence[Passage]) -> list[tuple[int, Passage]]:
    """(n, passage) for each distinct [n] (or [n, m]) the answer cites, in order of first citation.

    Numbers that name no passage are ignored: a small model sometimes invents them.
    """
    seen: list[int] = []
    for match in _CITATION.finditer(answer):
        for number in match.group(1).split(","):
            n = int(number)
            if 1 <= n <= len(passages) and n not in seen:
                seen.append(n)
    return [(n, passages[n - 1]) for n in seen]
