"""Beam search: keep the `beam_width` most likely partial sequences instead of one.

At each step every live beam is extended by every token; the best `beam_width` extensions by total
log-probability stay alive, and an extension ending in an end token becomes a finished hypothesis.
Hypotheses of different lengths are compared by the length-normalised score

    score = log P(tokens) / t ** length_penalty        (t = generated tokens, end token included)

(Wu et al., 2016 use a smoothed variant; this is the form `transformers` uses). length_penalty = 0
ranks by raw probability, which favours short answers; 1 ranks by mean log-probability per token.
The KV cache holds one row per beam; `reorder` copies the survivors' rows after each step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from llmlab.errors import ConfigError, InputError
from llmlab.infer.engine import eval_mode
from llmlab.model.frozen import compute_dtype
from llmlab.model.transformer import KVCache


@dataclass
class Hypothesis:
    token_ids: list[int]  # generated tokens (end token included when finished)
    logprob: float  # log P of those tokens given the prompt
    score: float  # logprob / len ** length_penalty
    finished: bool  # ended with an end token (else it hit max_new_tokens)


def _score(logprob: float, length: int, length_penalty: float) -> float:
    return logprob / (max(length, 1) ** length_penalty)


def beam_search(
    model: torch.nn.Module,
    prompt_ids: Sequence[int],
    beam_width: int = 4,
    max_new_tokens: int = 32,
    length_penalty: float = 1.0,
    end_ids: Iterable[int] = (),
    early_stopping: bool = False,
) -> list[Hypothesis]:
    """Up to `beam_width` hypotheses, best score first.

    With `early_stopping` the search ends once `beam_width` hypotheses have finished; otherwise it runs
    until no beam is alive or `max_new_tokens` is reached, so a wide enough beam is an exhaustive search.
    """
    with torch.inference_mode(), eval_mode(model):
        return _beam_search(model, prompt_ids, beam_width, max_new_tokens, length_penalty, end_ids, early_stopping)


def _beam_search(model, prompt_ids, beam_width, max_new_tokens, length_penalty, end_ids, early_stopping):
    if beam_width < 1 or max_new_tokens < 1:
        raise ConfigError(f"beam_width and max_new_tokens must be >= 1, got {beam_width} and {max_new_tokens}")
    prompt = [int(t) for t in prompt_ids]
    limit = model.config.context_length
    if not prompt or len(prompt) >= limit:
        raise InputError(f"the prompt is {len(prompt)} tokens long; it must be 1 to {limit - 1} tokens "
                         f"(the context window is {limit})")
    max_new_tokens = min(max_new_tokens, limit - len(prompt))
    end = set(end_ids)
    device = next(model.parameters()).device
    cache = KVCache(model.config, 1, len(prompt) + max_new_tokens, device, compute_dtype(model))
    logits = model(torch.tensor([prompt], device=device), kv_cache=cache)[0][:, -1]
    live: list[tuple[list[int], float]] = [([], 0.0)]
    finished: list[Hypothesis] = []
    for step in range(1, max_new_tokens + 1):
        totals = torch.tensor([lp for _, lp in live], device=device)[:, None] + logits.float().log_softmax(-1)
        vocab = totals.size(1)
        # Enough candidates that beam_width of them survive even if every beam's end token ranks high.
        k = min(totals.numel(), beam_width + len(live) * len(end))
        values, flat = torch.topk(totals.flatten(), k)
        survivors, parents = [], []
        for rank, (value, index) in enumerate(zip(values.tolist(), flat.tolist())):
            parent, token = divmod(index, vocab)
            tokens = live[parent][0] + [token]
            if token in end:
                if rank < beam_width:
                    finished.append(Hypothesis(tokens, value, _score(value, step, length_penalty), True))
            elif len(survivors) < beam_width:
                survivors.append((tokens, value))
                parents.append(parent)
        finished = sorted(finished, key=lambda h: h.score, reverse=True)[:beam_width]
        live = survivors
        if not live or step == max_new_tokens or (early_stopping and len(finished) >= beam_width):
            break
        cache.reorder(torch.tensor(parents, device=device))
        step_ids = torch.tensor([[tokens[-1]] for tokens, _ in live], device=device)
        logits = model(step_ids, kv_cache=cache)[0][:, -1]
    unfinished = [Hypothesis(t, lp, _score(lp, len(t), length_penalty), False) for t, lp in live]
    return sorted(finished + unfinished, key=lambda h: h.score, reverse=True)[:beam_width]
