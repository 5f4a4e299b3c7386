"""Looking inside a model for the playground: prompt scoring, the next-token distribution and attention.

These are single forward passes, not generation: they show what the model computes. The reshaped
distribution comes from `llmlab.infer.sampling.processed_logits`, the same function the sampler uses,
so the chart shows exactly what generation would draw from.
"""

from __future__ import annotations

from typing import Any

import torch

from llmlab.infer.sampling import SamplingParams, processed_logits
from llmlab.serve.registry import LoadedModel


def _pieces(tokenizer: Any, ids: list[int]) -> list[str]:
    return [tokenizer.decode([i]) for i in ids]


@torch.inference_mode()
def prompt_logprobs(loaded: LoadedModel, ids: list[int], top: int) -> list[tuple[float | None, list | None]]:
    """For each prompt token, log P(token | the tokens before it) and the `top` likeliest alternatives.

    The first token has no context, so it gets (None, None), as in OpenAI's echo + logprobs.
    """
    logits, _ = loaded.model(torch.tensor([ids]))
    logp = logits[0].float().log_softmax(dim=-1)
    out: list[tuple[float | None, list | None]] = [(None, None)]
    for t in range(1, len(ids)):
        row = logp[t - 1]
        alts = []
        if top:
            values, alt_ids = torch.topk(row, min(top, row.numel()))
            alts = [(int(i), loaded.tokenizer.decode([int(i)]), float(v)) for v, i in zip(values, alt_ids)]
        out.append((float(row[ids[t]]), alts))
    return out


def _entropy_bits(probs: torch.Tensor) -> float:
    p = probs[probs > 0]
    return float(-(p * p.log2()).sum())


@torch.inference_mode()
def next_token_distribution(loaded: LoadedModel, ids: list[int], params: SamplingParams, k: int = 20) -> dict[str, Any]:
    """The model's next-token probabilities for `ids`, before and after the sampling settings reshape them.

    Returns the `k` likeliest tokens (by raw probability, plus any that the settings push into the top
    `k`), each with its logit, raw probability and the probability the sampler would draw it with.
    """
    logits, _ = loaded.model(torch.tensor([ids]))
    last = logits[0, -1].float()
    raw = last.softmax(dim=-1)
    context = torch.tensor(ids, dtype=torch.long)
    shaped = processed_logits(last, params, context, torch.zeros(0, dtype=torch.long))
    if params.greedy:  # temperature 0: all the probability on the argmax
        sampled = torch.zeros_like(raw)
        sampled[int(shaped.argmax())] = 1.0
    else:
        sampled = shaped.softmax(dim=-1)
    k = min(k, raw.numel())
    chosen = torch.topk(raw, k).indices.tolist()
    chosen += [i for i in torch.topk(sampled, k).indices.tolist() if i not in chosen and sampled[i] > 0]
    chosen.sort(key=lambda i: -float(raw[i]))
    tokens = [{"id": i, "text": loaded.tokenizer.decode([i]), "logit": round(float(last[i]), 4),
               "prob": float(raw[i]), "sampled_prob": float(sampled[i])} for i in chosen]
    entropy, sampled_entropy = _entropy_bits(raw), _entropy_bits(sampled)
    return {
        "tokens": tokens,
        "prompt_tokens": len(ids),
        "vocab_size": raw.numel(),
        "entropy_bits": round(entropy, 4),
        "sampled_entropy_bits": round(sampled_entropy, 4),
        # 2^entropy: how many equally likely tokens would be this uncertain ("effective choices").
        "effective_choices": round(2**entropy, 2),
        "sampled_effective_choices": round(2**sampled_entropy, 2),
        "candidates": int((sampled > 0).sum()),  # tokens the sampler can still draw
    }


@torch.inference_mode()
def attention_maps(loaded: LoadedModel, ids: list[int], layer: int) -> dict[str, Any]:
    """Every head's attention weights (T x T, rows = queries) in one layer, for a heat-map."""
    cfg = loaded.config
    if not 0 <= layer < cfg.n_layers:
        raise ValueError(f"layer must be in 0..{cfg.n_layers - 1}, got {layer}")
    _, _, weights = loaded.model(torch.tensor([ids]), return_attention=True)
    w = weights[layer][0].float()  # (heads, T, T)
    return {
        "tokens": [{"id": i, "text": t} for i, t in zip(ids, _pieces(loaded.tokenizer, ids))],
        "layer": layer, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads,
        "weights": [[[round(float(x), 4) for x in row] for row in head] for head in w],
    }
