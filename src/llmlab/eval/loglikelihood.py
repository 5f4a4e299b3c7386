"""Log-likelihood of continuations given contexts: how multiple-choice benchmarks are scored.

A request is a (context, continuation) pair of strings. Following lm-evaluation-harness:

- Whitespace at the end of the context moves to the front of the continuation (a BPE vocabulary
  glues a space to the word after it, so " Paris" is one token while "Paris" after "is " is not).
- The context and the whole string context + continuation are each encoded; the continuation's tokens
  are the whole string's tokens after the first len(encode(context)). Encoding the whole string keeps
  the merges a real text would have across the boundary.
- An empty context becomes the model's prefix token (BOS, else end-of-text).
- The model reads (context + continuation)[-(window + 1):][:-1]: long contexts lose their oldest tokens.
- The score is the sum of log-probabilities of the continuation's tokens, and `is_greedy` says whether
  every one of them was the model's argmax (LAMBADA's accuracy).

Scoring is batched: requests are sorted by length, longest first, so each batch pads little, and a
batch holds at most `batch_tokens` (padded) tokens. The choices of one question share their context,
so the context runs once and its keys and values (KV cache) serve every choice: on HellaSwag this
halves the tokens the model reads, on ARC it cuts them by about three.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from llmlab.eval.models import LanguageModel
from llmlab.model.frozen import compute_dtype
from llmlab.model.transformer import KVCache
from llmlab.progress import Progress


@dataclass(frozen=True)
class Score:
    """Sum of log-probabilities (nats) of a continuation's tokens, and whether greedy decoding yields it."""

    logprob: float
    is_greedy: bool
    tokens: int


def encode_pair(
    encode: Callable[[str], list[int]], context: str, continuation: str, prefix_token_id: int
) -> tuple[list[int], list[int]]:
    """Context and continuation token ids, split the way the harness splits them (see module docstring)."""
    if context == "":
        cont = encode(continuation)
        # The prefix token conditions the first continuation token, unless the text already starts with it.
        if cont and cont[0] == prefix_token_id:
            return cont[:1], cont[1:]
        return [prefix_token_id], cont
    stripped = context.rstrip()
    if len(stripped) < len(context):
        context, continuation = stripped, context[len(stripped) :] + continuation
    whole = encode(context + continuation)
    context_ids = encode(context)
    return context_ids, whole[len(context_ids) :]


@dataclass
class _Group:
    """Requests that share one context: the context runs once, its keys/values serve every continuation."""

    context: list[int]
    members: list[tuple[int, list[int]]]  # (request index, continuation ids)

    @property
    def longest_continuation(self) -> int:
        return max(len(c) for _, c in self.members)


def _group(pairs: Sequence[tuple[list[int], list[int]]], max_length: int) -> list[_Group]:
    groups: dict[tuple[int, ...], _Group] = {}
    for i, (context, continuation) in enumerate(pairs):
        if not continuation:
            raise ValueError("a continuation must have at least one token")
        if len(continuation) > max_length:
            raise ValueError(f"a continuation of {len(continuation)} tokens does not fit a {max_length}-token window")
        # The model reads (context + continuation)[-(window + 1):][:-1]: cut the oldest context tokens.
        context = context[max(0, len(context) + len(continuation) - (max_length + 1)) :]
        groups.setdefault(tuple(context), _Group(list(context), [])).members.append((i, continuation))
    return sorted(groups.values(), key=lambda g: -(len(g.context) + g.longest_continuation))


def _batches(groups: list[_Group], max_length: int, batch_tokens: int) -> list[list[_Group]]:
    """Consecutive groups whose padded rows (one per continuation) fit the token budget and the window."""
    batches: list[list[_Group]] = []
    for group in groups:
        if batches:
            batch = batches[-1] + [group]
            width = max(len(g.context) for g in batch) + max(g.longest_continuation for g in batch) - 1
            rows = sum(len(g.members) for g in batch)
            if width <= max_length and rows * width <= batch_tokens:
                batches[-1] = batch
                continue
        batches.append([group])
    return batches


def score_token_pairs(
    model: torch.nn.Module,
    pairs: Sequence[tuple[list[int], list[int]]],
    max_length: int,
    batch_tokens: int = 4096,
    progress: Progress | None = None,
) -> list[Score]:
    """Score (context ids, continuation ids) pairs in batches; results in the input order.

    Pairs with the same context (the choices of one question) share one forward pass over it: the
    contexts run left-padded with a KV cache, the cache is copied once per continuation, and the
    continuations run on top. The numbers equal scoring each (context + continuation) on its own.
    """
    results: list[Score | None] = [None] * len(pairs)
    device = next(model.parameters()).device
    for batch in _batches(_group(pairs, max_length), max_length, batch_tokens):
        for index, score in _score_batch(model, batch, device):
            results[index] = score
        if progress is not None:
            progress.update(sum(len(g.members) for g in batch))
    return results  # type: ignore[return-value]


def _score_batch(model: torch.nn.Module, batch: list[_Group], device: torch.device) -> list[tuple[int, Score]]:
    width = max(len(g.context) for g in batch)
    tail = max(g.longest_continuation for g in batch) - 1  # continuation tokens that are also inputs
    # Pass 1: every context once, left-padded so that all of them end at the same column.
    ids = torch.zeros(len(batch), width, dtype=torch.long)
    mask = torch.zeros(len(batch), width + tail, dtype=torch.long)
    positions = torch.zeros(len(batch), width, dtype=torch.long)
    for row, g in enumerate(batch):
        pad = width - len(g.context)
        ids[row, pad:] = torch.tensor(g.context)
        mask[row, pad:] = 1
        positions[row, pad:] = torch.arange(len(g.context))
    cache = KVCache(model.config, len(batch), width + tail, device=device, dtype=compute_dtype(model))
    with torch.inference_mode():
        logits = model(ids.to(device), kv_cache=cache, position_ids=positions.to(device),
                       attention_mask=mask.to(device))[0]
        first = F.log_softmax(logits[:, -1].float(), dim=-1)  # predicts every continuation's first token
        rows = [(row, g, index, cont) for row, g in enumerate(batch) for index, cont in g.members]
        rest = None
        if tail > 0:
            # Pass 2: one row per continuation on top of a copy of its context's cache.
            cache.reorder(torch.tensor([row for row, *_ in rows], device=device))
            cont_ids = torch.zeros(len(rows), tail, dtype=torch.long)
            for r, (_, g, _, cont) in enumerate(rows):
                cont_ids[r, : len(cont) - 1] = torch.tensor(cont[:-1])
            row_of = torch.tensor([row for row, *_ in rows])
            cont_mask = torch.cat([mask[row_of, :width], torch.ones(len(rows), tail, dtype=torch.long)], dim=1)
            lengths = torch.tensor([len(g.context) for _, g, _, _ in rows])
            cont_positions = lengths[:, None] + torch.arange(tail)[None, :]
            rest = model(cont_ids.to(device), kv_cache=cache, position_ids=cont_positions.to(device),
                         attention_mask=cont_mask.to(device))[0]
    scored = []
    for r, (row, g, index, cont) in enumerate(rows):
        target = torch.tensor(cont, device=device)
        logprobs = first[row][None]
        if len(cont) > 1:
            logprobs = torch.cat([logprobs, F.log_softmax(rest[r, : len(cont) - 1].float(), dim=-1)])
        total = logprobs.gather(-1, target[:, None]).sum().item()
        greedy = bool((logprobs.argmax(dim=-1) == target).all())
        scored.append((index, Score(total, greedy, len(cont))))
    return scored


def loglikelihood(
    lm: LanguageModel,
    requests: Sequence[tuple[str, str]],
    batch_tokens: int = 4096,
    progress: Progress | None = None,
) -> list[Score]:
    """Score each (context, continuation) string pair under `lm`."""
    pairs = [encode_pair(lm.encode, context, continuation, lm.prefix_token_id) for context, continuation in requests]
    return score_token_pairs(lm.model, pairs, lm.max_length, batch_tokens, progress)
